# compute takes a Delayed; a Manifest is already in memory.
import lazybn as lb

m = lb.matrix([[1.0, 2.0]])
lb.compute(m)  # type: ignore[arg-type]
