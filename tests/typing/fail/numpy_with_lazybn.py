# numpy arrays and lazybn arrays do not mix (at run time an ArgumentError or TypeError): mypy
# rejects the arithmetic and ufuncs instead of typing the result as an ndarray.
import numpy as np

import lazybn as lb

v = lb.vector([1.0, 2.0])
m = lb.matrix([[1.0, 2.0]])
x = np.ones(2, np.float32)
x + v  # type: ignore[operator]
np.ones((1, 2)) * m  # type: ignore[operator]
x - lb.delay(v)  # type: ignore[operator]
np.exp(m)  # type: ignore[call-overload]
