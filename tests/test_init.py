"""Initialisers and the MLP builder: shapes, dtypes, statistics, determinism, structure."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazybn as lb
from lazybn.errors import ArgumentError, DTypeError, ValueRangeError
from lazybn.init import Init, biases, mlp, weights
from lazybn.layers import Act, Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias

from .helpers import DTYPES
from .net_helpers import networks

STD = {Init.haskell: lambda i, o: 0.01, Init.small: lambda i, o: 0.01, Init.normal: lambda i, o: 1.0,
       Init.xavier: lambda i, o: math.sqrt(2 / (i + o)), Init.he: lambda i, o: math.sqrt(2 / i)}


def _ws(layers: list[Layer]) -> list[lb.Matrix]:
    return [x.w for x in layers if isinstance(x, (Linear, LinearNoBias))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("init", list(Init))
def test_weights_have_the_documented_std(init: Init, dtype: np.dtype[Any]) -> None:
    nin, nout, gain = 1000, 400, 1.5
    w = weights(init, nin, nout, np.random.default_rng(0), dtype, gain=gain)
    assert w.shape == (nin, nout) and w.dtype == dtype
    x = w.array.astype(np.float64)
    want = gain * STD[init](nin, nout)
    n = x.size
    # sample std of n normals: relative standard error 1/sqrt(2n) ~ 0.0011; allow 5 of them
    assert abs(x.std() / want - 1) < 5 / math.sqrt(2 * n)
    assert abs(x.mean()) < 5 * want / math.sqrt(n)


@pytest.mark.parametrize("init", list(Init))
def test_biases(init: Init) -> None:
    rng = np.random.default_rng(1)
    b = biases(init, 50_000, rng, np.float64)
    assert b.shape == (50_000,) and b.dtype == np.float64
    if init is Init.haskell:  # the seed's genBiases: unscaled N(0, 1)
        assert abs(b.array.std() - 1) < 5 / math.sqrt(2 * 50_000)
    else:
        assert not b.array.any()
        # zero biases do not consume random numbers
        assert rng.standard_normal() == np.random.default_rng(1).standard_normal()


@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(1, 6), min_size=2, max_size=5),
       init=st.sampled_from(list(Init)))
def test_mlp_is_deterministic_and_both_variants_share_weights(seed: int, sizes: list[int], init: Init) -> None:
    bn = mlp(sizes, batchnorm=True, init=init, seed=seed)
    bn_again = mlp(sizes, batchnorm=True, init=init, seed=seed)
    plain = mlp(sizes, batchnorm=False, init=init, seed=seed, dropout=0.5)
    w64 = _ws(mlp(sizes, batchnorm=False, init=init, seed=seed, dtype=np.float64))
    # the weights are the first draws of default_rng(seed), layer by layer, scaled, then cast
    rng = np.random.default_rng(seed)
    for a, b, c, d, (nin, nout) in zip(_ws(bn), _ws(bn_again), _ws(plain), w64, zip(sizes, sizes[1:])):
        want64 = rng.standard_normal((nin, nout)) * STD[init](nin, nout)
        assert a.array.tobytes() == b.array.tobytes() == c.array.tobytes()
        assert d.array.tobytes() == want64.tobytes()
        assert a.array.tobytes() == want64.astype(np.float32).tobytes()
    if init is Init.haskell:  # then the biases, N(0, 1)
        for layer, n in zip([x for x in plain if isinstance(x, Linear)], sizes[1:]):
            np.testing.assert_array_equal(layer.b.array, rng.standard_normal(n).astype(np.float32))


def test_different_seeds_give_different_weights() -> None:
    a, b = mlp([20, 10, 3], batchnorm=True, seed=1), mlp([20, 10, 3], batchnorm=True, seed=2)
    assert not np.array_equal(_ws(a)[0].array, _ws(b)[0].array)


def _kinds(layers: list[Layer]) -> list[str]:
    return [type(x).__name__ for x in layers]


def test_mlp_structure_with_batchnorm() -> None:
    layers = mlp([784, 300, 50, 10], batchnorm=True, eps=1e-3, momentum=0.01, dtype=np.float64)
    assert _kinds(layers) == ["LinearNoBias", "Batchnorm1d", "Activation", "LinearNoBias", "Batchnorm1d",
                              "Activation", "LinearNoBias"]
    assert [w.shape for w in _ws(layers)] == [(784, 300), (300, 50), (50, 10)]
    for layer, n in ((layers[1], 300), (layers[4], 50)):
        assert isinstance(layer, Batchnorm1d)
        assert layer.features == n and layer.gamma.dtype == np.float64
        assert (layer.mu.array == 0).all() and (layer.var.array == 1).all()
        assert (layer.gamma.array == 1).all() and (layer.beta.array == 0).all()
        assert (layer.eps, layer.momentum, layer.unbiased) == (1e-3, 0.01, True)
    assert all(x.f is Act.relu for x in layers if isinstance(x, Activation))


def test_mlp_structure_without_batchnorm_and_with_dropout() -> None:
    layers = mlp([5, 4, 3, 2], batchnorm=False, act=Act.tanh, dropout=0.25, init=Init.haskell)
    assert _kinds(layers) == ["Linear", "Activation", "Dropout", "Linear", "Activation", "Dropout", "Linear"]
    assert all(x.p == 0.25 for x in layers if isinstance(x, Dropout))
    assert all(x.f is Act.tanh for x in layers if isinstance(x, Activation))
    assert [x.b.shape for x in layers if isinstance(x, Linear)] == [(4,), (3,), (2,)]
    bn = mlp([5, 4, 3, 2], batchnorm=True, dropout=0.25)
    assert _kinds(bn) == ["LinearNoBias", "Batchnorm1d", "Activation", "Dropout", "LinearNoBias", "Batchnorm1d",
                          "Activation", "Dropout", "LinearNoBias"]
    assert _kinds(mlp([3, 2], batchnorm=True)) == ["LinearNoBias"]
    assert _kinds(mlp([3, 2], batchnorm=False)) == ["Linear"]


def test_mlp_passes_comp_and_zero_biases_by_default() -> None:
    layers = mlp([3, 4, 2], batchnorm=False, comp=lb.Comp.Par)
    for x in layers:
        if isinstance(x, Linear):
            assert x.w.comp is lb.Comp.Par and x.b.comp is lb.Comp.Par
            assert not x.b.array.any()


@pytest.mark.parametrize("sizes", [[], [784], [3, 0, 2], [3, -1], [3, 2.5], [3, True]])
def test_mlp_rejects_bad_sizes(sizes: list[Any]) -> None:
    with pytest.raises(ValueRangeError, match="mlp.sizes"):
        mlp(sizes, batchnorm=True)


@pytest.mark.parametrize("seed", [-1, 1.5, None, True, "0"])
def test_mlp_rejects_a_seed_that_is_not_a_count(seed: Any) -> None:
    with pytest.raises(ValueRangeError, match=re.escape(f"mlp.seed: must be an integer >= 0 (the network is a "
                                                        f"function of it), got {seed!r}")):
        mlp([3, 2], batchnorm=True, seed=seed)
    numpy_seed: Any = np.int64(7)
    assert np.array_equal(_ws(mlp([3, 2], batchnorm=True, seed=numpy_seed))[0].array,
                          _ws(mlp([3, 2], batchnorm=True, seed=7))[0].array)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueRangeError, match="Dropout.p"):
        mlp([3, 2, 2], batchnorm=False, dropout=1.0)
    for huge in (10**400, -10**400):  # float() of these raises OverflowError
        with pytest.raises(ValueRangeError, match="Dropout.p.*beyond the float range"):
            mlp([3, 2, 2], batchnorm=False, dropout=huge)
        with pytest.raises(ValueRangeError, match="momentum.*beyond the float range"):
            mlp([3, 2, 2], batchnorm=True, momentum=huge)
        with pytest.raises(ValueRangeError, match="Renorm.dmax.*beyond the float range"):
            lb.Renorm(3.0, huge)
    with pytest.raises(ValueRangeError, match="Dropout.p"):
        mlp([3, 2, 2], batchnorm=False, dropout=-0.1)
    for gain in (0.0, -1.0, math.inf, math.nan):  # an infinite gain would make every weight infinite
        with pytest.raises(ValueRangeError, match="weights.gain: must be a finite number > 0"):
            weights(Init.he, 3, 2, np.random.default_rng(0), gain=gain)
        with pytest.raises(ValueRangeError, match="weights.gain"):
            mlp([3, 2, 2], batchnorm=False, gain=gain)
    with pytest.raises(ValueRangeError, match="momentum"):
        mlp([3, 2, 2], batchnorm=True, momentum=1.5)
    with pytest.raises(DTypeError):
        mlp([3, 2], batchnorm=True, dtype=np.int32)
    with pytest.raises(ArgumentError, match="mlp.renorm: batch renormalisation needs batch-norm layers"):
        mlp([3, 2, 2], batchnorm=False, renorm=lb.Renorm(3.0, 5.0))


@given(net=st.sampled_from([np.float32, np.float64]).flatmap(lambda dt: networks(np.dtype(dt))))
def test_summary_counts_every_parameter_and_says_what_trains(net: list[Layer]) -> None:
    # the oracle: numpy's sizes of the trainable fields; running statistics are state, not parameters
    fields = {Linear: ("w", "b"), LinearNoBias: ("w",), Batchnorm1d: ("gamma", "beta")}
    sizes = [sum(getattr(layer, f).array.size for f in fields.get(type(layer), ())) for layer in net]
    trains = [getattr(layer, "trainable", False) for layer in net]
    text = lb.summary(net)
    lines = text.splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:2 + len(net)]] if net else []
    assert [int(r[0]) for r in rows] == list(range(len(net)))
    assert [r[1] for r in rows] == [type(layer).__name__ for layer in net]
    assert [int(r[3]) for r in rows] == sizes
    assert [r[4] for r in rows] == ["" if not hasattr(layer, "trainable") else "yes" if t else "no"
                                    for layer, t in zip(net, trains)]
    stats = sum(2 * layer.features for layer in net if isinstance(layer, Batchnorm1d))
    total, trainable = sum(sizes), sum(n for n, t in zip(sizes, trains) if t)
    assert lines[-1] == (f"parameters: {total} ({trainable} trainable, {total - trainable} not); "
                         f"batch norm's running statistics: {stats} values")


def test_summary_of_the_mnist_network_and_bad_input() -> None:
    text = lb.summary(mlp((784, 300, 50, 10), batchnorm=True, dropout=0.1))
    assert "| 1 | Batchnorm1d | 300 | 600 | yes | eps 1e-05, momentum 0.1, batch statistics |" in text
    assert "| 3 | Dropout | 300 | 0 |  | p 0.1 |" in text
    assert text.endswith("parameters: 251400 (251400 trainable, 0 not); batch norm's running statistics: 700 values\n")
    with pytest.raises(ArgumentError, match=r"layers\[1\] is a str"):
        lb.summary([Activation(Act.relu), "relu"])  # type: ignore[list-item]
