# The operations of custom layers keep the rank in the type; mypy accepts them and they run.
import math
from typing import assert_type

import numpy as np

import lazybn as lb
from lazybn import Delayed, Fn, Ix1, Ix2

x = lb.matrix(np.arange(6.0).reshape(2, 3))
v = lb.vector([1.0, -2.0, 3.0])
assert_type(abs(x), Delayed[Ix2])
assert_type(abs(lb.delay(v)), Delayed[Ix1])
assert_type(x ** 2, Delayed[Ix2])
assert_type(v ** 0.5, Delayed[Ix1])
assert_type((x - 1.0) ** -1, Delayed[Ix2])
assert_type(x ** np.float32(1.5), Delayed[Ix2])
assert_type(2.0 ** v, Delayed[Ix1])
assert_type(x ** x, Delayed[Ix2])
assert_type(x @ lb.transpose(x), lb.Matrix)
assert_type(lb.maximum(x, 0.0), Delayed[Ix2])
assert_type(lb.maximum(0.5, lb.delay(v)), Delayed[Ix1])
assert_type(lb.minimum(x, x * 2.0), Delayed[Ix2])
assert_type(lb.max_rows(x), Delayed[Ix1])
assert_type(lb.min_rows(lb.delay(x)), Delayed[Ix1])
assert_type(lb.min_cols(x), Delayed[Ix1])
gelu = x * lb.add_c(lb.amap(Fn.erf, x * (1 / math.sqrt(2.0))), 1.0) * 0.5
assert_type(gelu, Delayed[Ix2])
clipped, span = lb.compute_all(lb.minimum(lb.maximum(gelu, -1.0), 1.0), lb.max_rows(x) - lb.min_rows(x))
assert_type(clipped, lb.Matrix)
assert_type(span, lb.Vector)
assert span.array.tolist() == [3.0, 3.0, 3.0]
