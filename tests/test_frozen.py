"""Batch norm frozen for fine-tuning (``Batchnorm1d(frozen=True)``): training normalises with the
running statistics and leaves them as they are, while gamma and beta learn. Oracles: plain numpy
(the inference formula and its elementwise gradient), central finite differences, and PyTorch's
``BatchNorm1d`` in eval mode inside a training step where torch is installed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn import fuse
from lazybn.batchnorm import frozen_backward, frozen_forward, update_running
from lazybn.layers import BN1, Batchnorm1d, LinearNoBias
from lazybn.network import _pass, logits

from .net_helpers import assert_same_network, assert_torch_steps_agree

F = np.ndarray[Any, Any]


def _layer(c: int, rng: np.random.Generator, dtype: Any = np.float64, **kw: Any) -> Batchnorm1d:
    return Batchnorm1d(lb.vector(rng.normal(0.0, 2.0, c), dtype), lb.vector(rng.uniform(0.0, 3.0, c), dtype),
                       lb.vector(rng.uniform(0.5, 2.0, c), dtype), lb.vector(rng.normal(0.0, 1.0, c), dtype),
                       frozen=True, **kw)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), c=st.integers(1, 9), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1))
def test_forward_is_inference_and_backward_is_its_elementwise_gradient(n: int, c: int, dtype: Any,
                                                                      seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer = _layer(c, rng, dtype, eps=1e-3)
    x = rng.normal(0.0, 3.0, (n, c)).astype(dtype)
    dy = rng.normal(0.0, 1.0, (n, c)).astype(dtype)
    out = frozen_forward(lb.matrix(x), layer)
    assert out.array.tobytes() == logits([layer], lb.matrix(x)).array.tobytes()  # inference's forward, bit for bit
    mu, var, gamma, beta = (getattr(layer, k).array.astype(np.float64) for k in ("mu", "var", "gamma", "beta"))
    sigma = np.sqrt(var + 1e-3)
    xhat = (x - mu) / sigma
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.array, gamma * xhat + beta, rtol=tol, atol=tol)
    dx, dgamma, dbeta = frozen_backward(lb.matrix(dy), lb.matrix(x), layer)
    np.testing.assert_allclose(dx.array, dy * gamma / sigma, rtol=tol, atol=tol)
    np.testing.assert_allclose(dgamma.array, (dy * xhat).sum(axis=0), rtol=tol, atol=tol * n)
    np.testing.assert_allclose(dbeta.array, dy.sum(axis=0), rtol=tol, atol=tol * n)


def test_the_training_pass_normalises_a_frozen_layer_with_its_running_statistics() -> None:
    """``_pass`` itself, not only the frozen step functions: its predictions are inference's
    (running statistics) and the gradient reaching the layer below is dy·gamma/sigma."""
    rng = np.random.default_rng(11)
    w = lb.matrix(rng.normal(size=(4, 3)))
    layers: list[lb.Layer] = [LinearNoBias(w), _layer(3, rng, eps=1e-3)]
    x = rng.normal(0.0, 2.0, (6, 4))
    tgt = np.eye(3)[rng.integers(0, 3, 6)]
    _, pred, grads = _pass(lb.matrix(x), lb.matrix(tgt), layers)
    np.testing.assert_allclose(pred.array, lb.forward(layers, lb.matrix(x)).array, rtol=1e-13, atol=1e-15)
    bn = layers[1]
    assert isinstance(bn, Batchnorm1d) and isinstance(grads[0], lb.LinearNoBiasGradients)
    dy = (pred.array - tgt) / 6  # the mean cross-entropy's gradient at the softmax's input
    dz = dy * bn.gamma.array / np.sqrt(bn.var.array + 1e-3)
    np.testing.assert_allclose(grads[0].dw.array, x.T @ dz, rtol=1e-12, atol=1e-14)


def test_backward_matches_central_finite_differences() -> None:
    """The loss sum(dy * y) through a training pass's frozen layer: x, gamma and beta."""
    rng = np.random.default_rng(7)
    layer = _layer(3, rng, eps=1e-5)
    x, dy = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))

    def loss(x: F, layer: Batchnorm1d) -> float:
        return float((dy * frozen_forward(lb.matrix(x), layer).array).sum())

    dx, dgamma, dbeta = frozen_backward(lb.matrix(dy), lb.matrix(x), layer)
    h = 1e-6
    for i in range(6):
        for j in range(3):
            xp, xm = x.copy(), x.copy()
            xp[i, j] += h
            xm[i, j] -= h
            assert (loss(xp, layer) - loss(xm, layer)) / (2 * h) == pytest.approx(dx.array[i, j], rel=1e-6, abs=1e-9)
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        g, b = layer.gamma.array, layer.beta.array
        fd_gamma = (loss(x, replace(layer, gamma=lb.vector(g + e))) - loss(x, replace(layer, gamma=lb.vector(g - e))))
        fd_beta = (loss(x, replace(layer, beta=lb.vector(b + e))) - loss(x, replace(layer, beta=lb.vector(b - e))))
        assert fd_gamma / (2 * h) == pytest.approx(dgamma.array[j], rel=1e-6, abs=1e-9)
        assert fd_beta / (2 * h) == pytest.approx(dbeta.array[j], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_steps_keep_the_statistics_and_learn_gamma_and_beta(momentum: float | None) -> None:
    """Several SGD steps (one trace, then replays): mu, var and the count never change; gamma and
    beta move by -lr times their gradients in numpy; a batch of one trains."""
    rng = np.random.default_rng(3)
    w = lb.matrix(rng.normal(size=(4, 3)))
    bn = _layer(3, rng, momentum=momentum, tracked=5)
    layers: list[lb.Layer] = [LinearNoBias(w), bn, lb.Activation(lb.Act.relu), LinearNoBias(lb.matrix(rng.normal(size=(3, 2))))]
    opt = lb.SGD(0.1)
    state = lb.init_state(opt, layers)
    before = fuse.stats().traces
    for k, n in enumerate([8, 8, 1, 8]):
        x = lb.matrix(rng.normal(size=(n, 4)))
        tgt = lb.matrix(np.eye(2)[rng.integers(0, 2, n)])
        step = lb.train_step(layers, opt, state, x, tgt)
        first, old, _, last = layers
        new = step.layers[1]
        assert isinstance(first, LinearNoBias) and isinstance(last, LinearNoBias)
        assert isinstance(old, Batchnorm1d) and isinstance(new, Batchnorm1d) and new.frozen
        for name in ("mu", "var"):
            assert getattr(new, name).array.tobytes() == getattr(bn, name).array.tobytes(), (k, name)
        assert new.tracked == 5
        # the oracle: the network in numpy, the frozen layer normalising with its running statistics
        xhat = (x.array @ first.w.array - bn.mu.array) / np.sqrt(bn.var.array + bn.eps)
        y = old.gamma.array * xhat + old.beta.array
        z = np.maximum(y, 0.0) @ last.w.array
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dy = ((p - tgt.array) / n) @ last.w.array.T * (y > 0)
        np.testing.assert_allclose(new.gamma.array, old.gamma.array - 0.1 * (dy * xhat).sum(axis=0), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(new.beta.array, old.beta.array - 0.1 * dy.sum(axis=0), rtol=1e-12, atol=1e-14)
        layers, state = step.layers, step.opt_state
    assert fuse.stats().traces - before <= 4  # the pass and the step, per batch size (8 and 1)


def test_update_running_leaves_a_frozen_layer_as_it_is() -> None:
    rng = np.random.default_rng(1)
    layer = _layer(3, rng, momentum=None, tracked=2)
    g = BN1(lb.vector(rng.normal(size=3)), lb.vector(rng.uniform(1, 2, 3)), lb.zeros(3, np.float64),
            lb.zeros(3, np.float64), 8)
    assert update_running(layer, g) is layer


def test_frozen_settings_are_checked_and_saved(tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(lb.ArgumentError, match="frozen"):
        _layer(3, rng, renorm=lb.Renorm(3.0, 5.0))
    with pytest.raises(lb.ArgumentError, match="frozen"):
        _layer(3, rng, ghost_batch=4)
    with pytest.raises(lb.ArgumentError, match="True or False"):
        replace(_layer(3, rng), frozen=1)  # type: ignore[arg-type]
    layers: list[lb.Layer] = [_layer(3, rng), replace(_layer(3, rng), frozen=False)]
    lb.save(tmp_path / "net.npz", layers)
    assert_same_network(lb.load(tmp_path / "net.npz").layers, layers)


def test_matches_torch_eval_mode_batch_norm_in_a_training_step() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    nn = torch.nn
    rng = np.random.default_rng(5)
    layers: list[lb.Layer] = [LinearNoBias(lb.matrix(rng.normal(size=(5, 4)))), _layer(4, rng, eps=1e-5),
                              lb.Activation(lb.Act.relu), LinearNoBias(lb.matrix(rng.normal(size=(4, 3))))]
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4, eps=1e-5), nn.ReLU(),
                          nn.Linear(4, 3, bias=False)).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in lb.to_torch(layers).items()})
    model.train()
    model[1].eval()  # the usual way to freeze batch norm for fine-tuning in torch
    assert_torch_steps_agree(torch, model, layers, rng.normal(size=(6, 5)), rng.integers(0, 3, 6))
