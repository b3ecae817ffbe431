# reshape's rank comes from the shape it is given: n is a vector, (rows, cols) a matrix.
import numpy as np

import lazybn as lb

m = lb.matrix(np.ones((2, 3)))
v: lb.Vector = lb.reshape(m, 6)
back: lb.Matrix = lb.reshape(v, (3, 2))

wrong_vector: lb.Matrix = lb.reshape(m, 6)  # type: ignore[assignment]
wrong_matrix: lb.Vector = lb.reshape(v, (3, 2))  # type: ignore[assignment]
lb.reshape(m + m, 6)  # type: ignore[call-overload]
