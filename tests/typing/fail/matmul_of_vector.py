# matmul multiplies matrices; a vector is rank 1.
import lazybn as lb

v = lb.vector([1.0, 2.0])
m = lb.matrix([[1.0], [2.0]])
lb.matmul(v, m)  # type: ignore[arg-type]
