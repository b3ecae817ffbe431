# A Delayed[Ix1] is a promise, not a Vector: compute() it to get one.
import lazybn as lb

v = lb.vector([1.0, 2.0])
w: lb.Vector = v * 2.0  # type: ignore[assignment]
dm = lb.delay(lb.matrix([[1.0]]))
x: lb.Vector = lb.compute(dm)  # type: ignore[arg-type]
