"""compute_all of a list (``compute_all(*ds)``) or of more than five arrays: one rank-typed tuple."""

from typing import Any, assert_type

import numpy as np
from numpy.typing import NDArray

import lazybn as lb

x = lb.matrix(np.arange(6.0).reshape(2, 3))
v = lb.vector([1.0, 2.0, 3.0], np.float64)
ds = [x * float(k) for k in range(3)]
a, b, c = lb.compute_all(*ds)  # as many results as arrays, whatever their number
assert_type(a, lb.Matrix)
assert np.array_equal(c.array, 2.0 * x.array)
six = lb.compute_all(x + 1.0, x + 2.0, x + 3.0, x + 4.0, x + 5.0, x + 6.0)
assert_type(six, tuple[lb.Matrix, ...])
assert [float(m.array[0, 0]) for m in six] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
mixed: list[lb.Delayed[lb.Ix1] | lb.Delayed[lb.Ix2]] = [v * 2.0, x * 2.0]
vs_and_ms = lb.compute_all(*mixed)
assert_type(vs_and_ms, tuple[lb.Vector | lb.Matrix, ...])
assert [m.shape for m in vs_and_ms] == [(3,), (2, 3)]
either = vs_and_ms[0]  # a Vector | Matrix: to_numpy takes either rank
assert_type(lb.to_numpy(either), NDArray[np.floating[Any]])
assert np.array_equal(lb.to_numpy(either), 2.0 * v.array) and np.array_equal(lb.to_numpy(either * 2.0), 4.0 * v.array)
