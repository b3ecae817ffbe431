# Accepted usage of the array core; mypy must accept it and it must run.
from typing import assert_type

import numpy as np

import lazybn as lb
from lazybn import Delayed, Fn, Ix1, Ix2, Manifest

x = lb.matrix(np.arange(6.0).reshape(2, 3))
v = lb.vector([1.0, 2.0, 3.0])
assert_type(x, Manifest[Ix2])
assert_type(v, lb.Vector)
assert_type(x + 1.0, Delayed[Ix2])
assert_type(2.0 * v, Delayed[Ix1])
assert_type(lb.rows_like(v, x), Delayed[Ix2])
assert_type(lb.br(4, lb.delay(v)), Delayed[Ix2])
assert_type(lb.cols_like(lb.sum_cols(x), x), Delayed[Ix2])
assert_type(lb.sum_rows(x * x), Delayed[Ix1])
assert_type(lb.amap(Fn.exp, v), Delayed[Ix1])
mu, centred = lb.compute_all(lb.sum_rows(x), x - lb.rows_like(lb.sum_rows(x), x))
assert_type(mu, lb.Vector)
assert_type(centred, lb.Matrix)
assert_type(lb.matmul(lb.transpose(x), x), lb.Matrix)
assert_type(lb.zeros(3), lb.Vector)
assert_type(lb.ones((2, 2), np.float64), lb.Matrix)
assert centred.shape == (2, 3)
