# An array's dtype is typed as a floating dtype (float32 or float64 at run time), not dtype[Any].
from typing import Any, assert_type

import numpy as np

import lazybn as lb

v = lb.vector([1.0, 2.0])
m = lb.matrix([[1.0, 2.0]], np.float64)
assert_type(v.dtype, np.dtype[np.floating[Any]])
assert_type((m * 2.0).dtype, np.dtype[np.floating[Any]])
assert_type(v.dtype.type, type[np.floating[Any]])
assert v.dtype == np.float32 and issubclass(v.dtype.type, np.floating)
assert (m * 2.0).dtype == np.float64 == lb.compute(m * 2.0).dtype
