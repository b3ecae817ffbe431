"""A user's own step functions under @fused: the signature and the result type are kept."""

import numpy as np

import lazybn as lb


@lb.fused
def affine(x: lb.Matrix, w: lb.Vector, b: lb.Vector) -> lb.Matrix:
    return lb.compute(x * lb.rows_like(w, x) + lb.rows_like(b, x))


@lb.fused(dynamic=("rate",))
def decayed(p: lb.Vector, g: lb.Vector, rate: float) -> lb.Vector:
    return lb.compute(p - lb.scale(rate, g))


x = lb.matrix(np.arange(6.0).reshape(2, 3))
w, b = lb.vector([1.0, 2.0, 3.0], np.float64), lb.vector([0.5, 0.5, 0.5], np.float64)
for _ in range(3):  # traced once, then replayed
    y: lb.Matrix = affine(x, w, b)
    assert np.array_equal(y.array, x.array * w.array + b.array)
p = lb.vector([1.0, 1.0])
for rate in (0.1, 0.01):  # one trace: the rate is a runtime argument
    q: lb.Vector = decayed(p, p, rate)
    assert np.allclose(q.array, 1.0 - rate)
