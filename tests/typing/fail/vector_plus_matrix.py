# Adding a vector to a matrix is a type error: broadcast explicitly with rows_like / cols_like.
import lazybn as lb

v = lb.vector([1.0, 2.0])
m = lb.matrix([[1.0, 2.0]])
v + m  # type: ignore[operator]
dv, dm = lb.delay(v), lb.delay(m)
dv - dm  # type: ignore[operator]
