"""Fused inference against the same network computed a layer at a time: ``lb.logits`` and
``lb.forward`` (one replay, a kernel from one matrix product to the next, the softmax in the
last kernel) give the very bits of a ``compute`` after every layer and a separate softmax, on
the first call (the trace) and on the calls after it (the replay), alternating the two."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lazybn as lb
from lazybn.batchnorm import frozen_forward
from lazybn.fuse.graph import Fn
from lazybn.layers import Act, Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias
from lazybn.network import softmax

_FN = {Act.relu: Fn.relu, Act.sigmoid: Fn.sigmoid, Act.tanh: Fn.tanh, Act.identity: None}


def _unfused_logits(layers: list[Layer], x: lb.Matrix) -> lb.Matrix:
    y = x
    for layer in layers:
        if isinstance(layer, Linear):
            z = lb.matmul(y, layer.w)
            y = lb.compute(z + lb.rows_like(layer.b, z))
        elif isinstance(layer, LinearNoBias):
            y = lb.matmul(y, layer.w)
        elif isinstance(layer, Batchnorm1d):
            y = frozen_forward(y, layer)
        elif isinstance(layer, Activation) and (fn := _FN[layer.f]) is not None:
            y = lb.compute(lb.amap(fn, y))
    return y


def _network(rng: np.random.Generator, dtype: Any, comp: lb.Comp, act: Act, end: str) -> list[Layer]:
    def bn(n: int) -> Batchnorm1d:
        def v(lo: float, hi: float) -> lb.Vector:
            return lb.vector(rng.uniform(lo, hi, n), dtype, comp)
        return Batchnorm1d(mu=v(-1, 1), var=v(0.5, 2), gamma=v(0.5, 2), beta=v(-1, 1))

    layers: list[Layer] = [Dropout(0.2), LinearNoBias(lb.matrix(rng.normal(0, 1, (5, 6)), dtype, comp)), bn(6),
                           Activation(act), Dropout(0.5),
                           Linear(lb.matrix(rng.normal(0, 1, (6, 4)), dtype, comp),
                                  lb.vector(rng.normal(0, 1, 4), dtype, comp))]
    extra: dict[str, list[Layer]] = {"linear": [], "activation": [Activation(act)], "batchnorm": [bn(4)],
                                     "dropout": [Dropout(0.1)]}
    return layers + extra[end]


def _bits(a: lb.Matrix) -> tuple[tuple[int, ...], str, bytes]:
    return a.shape, a.dtype.str, a.array.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("comp", [lb.Comp.Seq, lb.Comp.Par])
@pytest.mark.parametrize("end", ["linear", "activation", "batchnorm", "dropout"])
def test_fused_inference_is_the_unfused_network_bit_for_bit(dtype: Any, comp: lb.Comp, end: str) -> None:
    rng = np.random.default_rng(31)
    for act in Act:
        layers = _network(rng, dtype, comp, act, end)
        for n in (1, 7, 1, 0, 7):
            x = lb.matrix(rng.normal(0, 3, (n, 5)), dtype, comp)
            want = _unfused_logits(layers, x)
            for _ in range(2):  # forward, logits, forward again: the flag is part of the signature
                assert _bits(lb.forward(layers, x)) == _bits(lb.compute(softmax(want)))
                assert _bits(lb.logits(layers, x)) == _bits(want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_layers_and_extreme_logits(dtype: Any) -> None:
    """``forward([], x)`` is the softmax of x, an overflow-free one: 1e30 and the dtype's largest
    number give probabilities, NaN stays NaN in its row only."""
    big = float(np.finfo(dtype).max)
    z = np.array([[1e30, 0.0, -1e30, 1e30], [big, 1.0, 2.0, 3.0], [np.nan, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    x = lb.matrix(z, dtype)
    got = lb.forward([], x)
    assert _bits(got) == _bits(lb.compute(softmax(x)))
    np.testing.assert_array_equal(got.array[:2], np.array([[0.5, 0, 0, 0.5], [1, 0, 0, 0]], dtype))
    assert np.isnan(got.array[2]).all() and np.isfinite(got.array[3]).all()
    assert lb.logits([Dropout(0.3)], x) is x
