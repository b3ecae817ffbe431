# compute_all of many arrays keeps their ranks: a matrix result is not a vector.
import lazybn as lb

m = lb.matrix([[1.0, 2.0]])
r1, r2, r3, r4, r5, r6 = lb.compute_all(m + 1.0, m + 2.0, m + 3.0, m + 4.0, m + 5.0, m + 6.0)
w: lb.Vector = r6  # type: ignore[assignment]
ds = [lb.delay(m), m * 2.0]
u: lb.Vector = lb.compute_all(*ds)[1]  # type: ignore[assignment]
