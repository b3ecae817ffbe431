"""Ghost batch norm (``Batchnorm1d(ghost_batch=G)``) against a plain numpy oracle that normalises
each ghost batch (rows v, v + N/G, v + 2N/G, ...) on its own."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn import trace
from lazybn.errors import ArgumentError, ValueRangeError
from lazybn.layers import BN1, Batchnorm1d, LinearNoBias, Renorm
from lazybn.network import _pass
from lazybn.optim import init_state

from .helpers import F
from .net_helpers import assert_same_network


def _layer(c: int, rng: np.random.Generator, ghost: int | None, dtype: Any = np.float64) -> Batchnorm1d:
    return Batchnorm1d(lb.vector(rng.normal(0.0, 1.0, c), dtype), lb.vector(rng.uniform(0.5, 2.0, c), dtype),
                       lb.vector(rng.uniform(0.5, 2.0, c), dtype), lb.vector(rng.normal(0.0, 0.5, c), dtype),
                       ghost_batch=ghost)


def _groups(n: int, size: int) -> list[Any]:
    """The rows of each ghost batch: n / size groups, rows v, v + n/size, ..."""
    k = n // size
    return [np.arange(v, n, k) for v in range(k)]


def _oracle(x: F, layer: Batchnorm1d, dy: F) -> dict[str, Any]:
    """Batch norm of each ghost batch in float64 numpy, its closed-form gradients, and the mean of the
    ghost batches' statistics."""
    gamma, beta, eps = layer.gamma.array.astype(np.float64), layer.beta.array.astype(np.float64), layer.eps
    assert layer.ghost_batch is not None
    out, dx = np.empty_like(x), np.empty_like(x)
    dgamma, dbeta, means, variances = 0.0, 0.0, [], []
    for idx in _groups(x.shape[0], layer.ghost_batch):
        xs, ds = x[idx], dy[idx]
        mean, var = xs.mean(axis=0), xs.var(axis=0)
        xhat = (xs - mean) / np.sqrt(var + eps)
        out[idx] = gamma * xhat + beta
        dxhat = ds * gamma
        n = xs.shape[0]
        dx[idx] = (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (n * np.sqrt(var + eps))
        dgamma = dgamma + (ds * xhat).sum(axis=0)
        dbeta = dbeta + ds.sum(axis=0)
        means.append(mean)
        variances.append(var)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta, "mean": np.mean(means, axis=0),
            "var": np.mean(variances, axis=0)}


def _softmax(out: F) -> F:
    e = np.exp(out - out.max(axis=1, keepdims=True))
    p: F = e / e.sum(axis=1, keepdims=True)
    return p


@settings(max_examples=30, deadline=None)
@given(size=st.integers(2, 6), k=st.integers(1, 4), c=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_training_pass_matches_the_oracle(size: int, k: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = size * k
    layer = _layer(c, rng, size)
    x = rng.normal(rng.uniform(-3, 3), rng.uniform(0.2, 3), (n, c))
    tgt = np.eye(c)[rng.integers(0, c, n)]
    dx, pred, (g,) = _pass(lb.matrix(x, np.float64), lb.matrix(tgt, np.float64), [layer])
    out = _oracle(x, layer, np.zeros_like(x))["out"]
    want = _oracle(x, layer, (_softmax(out) - tgt) / n)
    assert isinstance(g, BN1) and g.n == size
    np.testing.assert_allclose(pred.array, _softmax(out), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx.array, want["dx"], rtol=1e-9, atol=1e-12)
    for key, got in (("dgamma", g.dgamma), ("dbeta", g.dbeta), ("mean", g.batch_mu), ("var", g.batch_var)):
        np.testing.assert_allclose(got.array, want[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_running_statistics_average_the_ghost_batches() -> None:
    """Unbiased running variance: each ghost batch's variance times G/(G-1), averaged."""
    rng = np.random.default_rng(1)
    layer = replace(_layer(3, rng, 4), momentum=0.25)
    x = rng.normal(2.0, 3.0, (12, 3))
    _, _, (g,) = _pass(lb.matrix(x, np.float64), lb.matrix(np.eye(3)[rng.integers(0, 3, 12)], np.float64), [layer])
    assert isinstance(g, BN1)
    new = lb.network.update_running(layer, g)
    groups = [x[idx] for idx in _groups(12, 4)]
    mean = np.mean([gr.mean(axis=0) for gr in groups], axis=0)
    var = np.mean([gr.var(axis=0, ddof=1) for gr in groups], axis=0)
    np.testing.assert_allclose(new.mu.array, 0.75 * layer.mu.array + 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(new.var.array, 0.75 * layer.var.array + 0.25 * var, rtol=1e-12)


def test_one_ghost_batch_is_batch_norm() -> None:
    rng = np.random.default_rng(2)
    layer = _layer(4, rng, 8, np.float32)
    x = lb.matrix(rng.normal(1.0, 2.0, (8, 4)), np.float32)
    tgt = lb.matrix(np.eye(4)[rng.integers(0, 4, 8)], np.float32)
    got, want = _pass(x, tgt, [layer]), _pass(x, tgt, [replace(layer, ghost_batch=None)])
    for a, b in ((got[0], want[0]), (got[1], want[1])):
        assert a.array.tobytes() == b.array.tobytes()


def test_inference_ignores_ghost_batches() -> None:
    rng = np.random.default_rng(3)
    layer = _layer(3, rng, 2, np.float32)
    x = lb.matrix(rng.standard_normal((5, 3)), np.float32)
    assert lb.forward([layer], x).array.tobytes() == lb.forward([replace(layer, ghost_batch=None)], x).array.tobytes()


def test_training_steps_replay_bitwise() -> None:
    rng = np.random.default_rng(4)
    net = lb.mlp([5, 6, 3], batchnorm=True, seed=3)
    net = [replace(layer, ghost_batch=3) if isinstance(layer, Batchnorm1d) else layer for layer in net]
    opt = lb.Adam(0.01)
    batches = [(lb.matrix(rng.standard_normal((9, 5)), np.float32),
                lb.matrix(np.eye(3)[rng.integers(0, 3, 9)], np.float32)) for _ in range(3)]

    def train() -> list[lb.Layer]:
        layers, state = list(net), init_state(opt, net)
        for x, y in batches:
            step = lb.train_step(layers, opt, state, x, y)
            layers, state = step.layers, step.opt_state
        return layers

    got = train()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "REPLAY", False)
        want = train()
    assert_same_network(got, want)


def test_train_epoch_checks_the_ghost_batches_of_the_steps_it_takes() -> None:
    """22 samples in batches of 8 are batches of 8, 8 and 6: ghost batches of 4 cannot split
    the third, which train_epoch refuses before its first step, unless max_steps stops it first."""
    rng = np.random.default_rng(5)
    layers = [replace(layer, ghost_batch=4) if isinstance(layer, Batchnorm1d) else layer
              for layer in lb.mlp((6, 8, 3), batchnorm=True, seed=1)]
    x = rng.normal(size=(22, 6)).astype(np.float32)
    y = lb.one_hot(np.arange(22) % 3, 3)
    opt = lb.SGD(lr=0.1)
    with pytest.raises(lb.ValueRangeError, match=r"give batches of \[6, 8\] rows"):
        lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, y, 8, None)
    trained, state, loss = lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, y, 8, None, max_steps=2)
    assert state.step == 2 and np.isfinite(loss)


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(ValueRangeError, match="at least 2 rows"):
        _layer(2, rng, 1)
    with pytest.raises(ArgumentError, match="ghost_batch"):
        _layer(2, rng, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="cannot be combined"):
        replace(_layer(2, rng, 2), renorm=Renorm())
    layer = _layer(2, rng, 3)
    with pytest.raises(ValueRangeError, match="ghost batches of 3 rows, which do not divide the batch of 8"):
        _pass(lb.matrix(np.ones((8, 2)), np.float64), lb.matrix(np.eye(2)[[0, 1] * 4], np.float64), [layer])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_ghost_layer_that_does_not_train_behind_fixed_layers_still_updates_its_statistics(dtype: Any) -> None:
    """With no layer up to it that trains, no gradient comes back to a ghost layer: its step still
    averages the ghost batches' statistics into the running ones (as the numpy oracle does, and
    bit for bit as the same layer training does), leaves its gamma and beta as they are, and the
    layers after it step as in the network that trains them all."""
    rng = np.random.default_rng(6)
    net = [replace(layer, ghost_batch=3, momentum=0.5) if isinstance(layer, Batchnorm1d) else layer
           for layer in lb.mlp((4, 5, 3), batchnorm=True, seed=2, dtype=dtype)]
    fixed = [replace(layer, trainable=False) if i < 2 and isinstance(layer, (LinearNoBias, Batchnorm1d)) else layer
             for i, layer in enumerate(net)]
    x = rng.normal(1.0, 2.0, (12, 4)).astype(dtype)
    y = np.eye(3, dtype=dtype)[rng.integers(0, 3, 12)]
    opt = lb.SGD(0.1)
    got = lb.train_step(fixed, opt, init_state(opt, fixed), lb.matrix(x), lb.matrix(y))
    want = lb.train_step(net, opt, init_state(opt, net), lb.matrix(x), lb.matrix(y))
    bn, trained = net[1], want.layers[1]
    assert isinstance(bn, Batchnorm1d) and isinstance(got.layers[1], Batchnorm1d) and isinstance(trained, Batchnorm1d)
    h = x.astype(np.float64) @ net[0].w.array.astype(np.float64)  # type: ignore[union-attr]
    groups = [h[idx] for idx in _groups(12, 3)]
    mean = np.mean([g.mean(axis=0) for g in groups], axis=0)
    var = np.mean([g.var(axis=0, ddof=1) for g in groups], axis=0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got.layers[1].mu.array, 0.5 * bn.mu.array + 0.5 * mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(got.layers[1].var.array, 0.5 * bn.var.array + 0.5 * var, rtol=tol, atol=tol)
    assert_same_network(got.layers[1:2], [replace(trained, gamma=bn.gamma, beta=bn.beta, trainable=False)])
    assert_same_network(got.layers[:1], fixed[:1])
    assert_same_network(got.layers[2:], want.layers[2:])
    assert got.pred.array.tobytes() == want.pred.array.tobytes()
    p = lb.gradients(fixed, lb.matrix(x), lb.matrix(y))
    g = p.grads[1]
    assert isinstance(g, BN1) and g.n == 3 and g.dgamma.shape == (0,) and g.dbeta.shape == (0,)
    np.testing.assert_allclose(g.batch_mu.array, mean, rtol=tol, atol=tol)
    with_dx = lb.gradients(fixed, lb.matrix(x), lb.matrix(y), input_grad=True)  # the gradient comes back then
    assert with_dx.dx.shape == (12, 4)
