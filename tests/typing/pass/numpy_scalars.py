"""numpy numbers are scalars like Python's: on either side of an operator, and in scale/add_c."""

from typing import assert_type

import numpy as np

import lazybn as lb

x = lb.matrix(np.arange(6.0).reshape(2, 3))
right = x * np.float32(2.0)
assert_type(right, lb.Delayed[lb.Ix2])
left = np.float64(2.0) * x
assert_type(left, lb.Delayed[lb.Ix2])
scaled = lb.scale(np.float32(2.0), x)
shifted = lb.add_c(x, np.int64(1))
halved = x / np.int32(2)
r, sc, sh, h = lb.compute_all(right, scaled, shifted, halved)
assert np.array_equal(r.array, 2.0 * x.array) and np.array_equal(sc.array, 2.0 * x.array)
assert np.array_equal(sh.array, x.array + 1.0) and np.array_equal(h.array, x.array / 2.0)
assert np.array_equal(lb.compute(left).array, 2.0 * x.array)
