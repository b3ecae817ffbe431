# Arrays are immutable: their shape and data cannot be assigned.
import lazybn as lb

m = lb.matrix([[1.0, 2.0]])
m.shape = (2, 1)  # type: ignore[misc]
m.array = m.array  # type: ignore[misc]
