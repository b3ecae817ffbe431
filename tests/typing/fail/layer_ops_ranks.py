# The operations of custom layers check ranks too: a vector where a matrix is needed, arrays of
# two ranks, a Delayed where @ needs a Manifest.
import lazybn as lb

v = lb.vector([1.0, 2.0])
m = lb.matrix([[1.0, 2.0]])
lb.max_rows(v)  # type: ignore[arg-type]
lb.min_rows(lb.delay(v))  # type: ignore[arg-type]
lb.min_cols(v)  # type: ignore[arg-type]
lb.maximum(v, m)  # type: ignore[misc]
lb.minimum(m, lb.delay(v))  # type: ignore[misc]
lb.maximum(1.0, 2.0)  # type: ignore[call-overload]
v ** m  # type: ignore[operator]
v @ m  # type: ignore[misc]
lb.delay(m) @ lb.transpose(m)  # type: ignore[operator]
m @ lb.delay(lb.transpose(m))  # type: ignore[operator]
m @ lb.transpose(m) + v  # type: ignore[operator]
