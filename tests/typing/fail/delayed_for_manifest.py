# matmul needs arrays in memory: a Delayed must be computed first.
import lazybn as lb

m = lb.matrix([[1.0, 2.0]])
lb.matmul(lb.delay(m), lb.transpose(m))  # type: ignore[arg-type]
lb.transpose(m * 2.0)  # type: ignore[arg-type]
