"""``lb.gradcheck``: correct gradients pass on every layer kind, and a wrong gradient is caught."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import lazybn as lb
import lazybn.network
import lazybn.trace
from lazybn.layers import Act, Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, Renorm

F64 = np.float64


def _bn(rng: np.random.Generator, n: int, **kw: Any) -> Batchnorm1d:
    return Batchnorm1d(lb.vector(rng.normal(size=n), F64), lb.vector(rng.uniform(0.5, 2.0, n), F64),
                       lb.vector(rng.uniform(0.5, 2.0, n), F64), lb.vector(rng.normal(size=n), F64), **kw)


def _net(variant: dict[str, Any], rng: np.random.Generator) -> list[Layer]:
    return [Linear(lb.matrix(rng.normal(size=(5, 4)) / 2, F64), lb.vector(rng.normal(size=4), F64)),
            _bn(rng, 4, **variant), Activation(Act.tanh), Dropout(0.25),
            LinearNoBias(lb.matrix(rng.normal(size=(4, 4)) / 2, F64)), _bn(rng, 4), Activation(Act.sigmoid),
            Linear(lb.matrix(rng.normal(size=(4, 3)), F64), lb.vector(rng.normal(size=3), F64))]


def _batch(rng: np.random.Generator, n: int = 8) -> tuple[lb.Matrix, lb.Matrix]:
    return lb.matrix(rng.normal(size=(n, 5)) * 2 + 1, F64), lb.matrix(np.eye(3)[rng.integers(0, 3, n)], F64)


@pytest.mark.parametrize("variant", [{}, {"frozen": True}, {"ghost_batch": 4}, {"momentum": None, "unbiased": False}])
@pytest.mark.parametrize("seed", [0, 1])
def test_correct_gradients_pass_for_every_layer_kind(variant: dict[str, Any], seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers = _net(variant, rng)
    x, t = _batch(rng)
    errors = lb.gradcheck(layers, x, t, key=seed, entries=8, seed=seed)
    want = [(0, "w"), (0, "b"), (1, "gamma"), (1, "beta"), (4, "w"), (5, "gamma"), (5, "beta"), (7, "w"), (7, "b"),
            (None, "x")]
    assert [(e.layer, e.name) for e in errors] == want
    assert [e.checked for e in errors] == [8, 4, 4, 4, 8, 4, 4, 8, 3, 8]
    assert max(e.error for e in errors) < 1e-6, errors


@pytest.mark.parametrize("wrong", ["dx", "dgamma"])
def test_a_wrong_batch_norm_gradient_is_caught(wrong: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the backward of batch norm with one term scaled: the check must see it in that array (and,
    # for dx, in everything before the layer), and nowhere else
    real = lazybn.network.bn_backward

    def broken(*args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
        dx, dgamma, dbeta = real(*args, **kwargs)
        if wrong == "dx":
            return (lb.compute(lb.scale(1.5, dx)) if dx.shape != (0, 0) else dx), dgamma, dbeta  # (0, 0): not needed
        return dx, lb.compute(lb.scale(2.0, dgamma)), dbeta

    monkeypatch.setattr(lazybn.trace, "REPLAY", False)  # the pass runs its body, which calls the patched name
    monkeypatch.setattr(lazybn.network, "bn_backward", broken)
    rng = np.random.default_rng(2)
    layers = _net({}, rng)
    x, t = _batch(rng)
    errors = {(e.layer, e.name): e.error for e in lb.gradcheck(layers, x, t, entries=8)}
    # (the bias right before batch norm has a zero gradient, which no scaling changes)
    bad = {(0, "w"), (1, "gamma"), (1, "beta"), (4, "w"), (None, "x")} if wrong == "dx" else {
        (1, "gamma"), (5, "gamma")}
    assert all(errors[k] > 0.1 for k in bad), errors
    assert all(v < 1e-6 for k, v in errors.items() if k not in bad), errors


def test_batch_renormalisation_shows_its_stop_gradient() -> None:
    # r and d are constants for the gradient (the paper's stop-gradient), so what flows back past a
    # renormalising layer is not the loss's derivative; gamma, beta and everything after it are
    rng = np.random.default_rng(0)
    layers = _net({"renorm": Renorm(1.5, 0.5)}, rng)
    x, t = _batch(rng)
    errors = {(e.layer, e.name): e.error for e in lb.gradcheck(layers, x, t, entries=8)}
    assert max(errors[(0, "w")], errors[(0, "b")], errors[(None, "x")]) > 1e-3, errors
    assert all(v < 1e-6 for (i, _), v in errors.items() if i is not None and i >= 1), errors


def test_bad_arguments_are_refused() -> None:
    rng = np.random.default_rng(3)
    layers = _net({}, rng)
    x, t = _batch(rng)
    with pytest.raises(lb.DTypeError, match="float64"):
        lb.gradcheck(lb.mlp((5, 4, 3), batchnorm=True), lb.matrix(x.array, np.float32),
                     lb.matrix(t.array, np.float32))
    for step in (0.0, -1e-6, float("nan")):
        with pytest.raises(lb.ValueRangeError, match="step"):
            lb.gradcheck(layers, x, t, step=step)
    with pytest.raises(lb.ValueRangeError, match="entries"):
        lb.gradcheck(layers, x, t, entries=0)
    with pytest.raises(lb.ShapeError):
        lb.gradcheck(layers, x, lb.matrix(np.eye(3)[:4], F64))  # targets for 4 of the 8 samples


def test_entries_beyond_an_arrays_size_check_all_of_it() -> None:
    rng = np.random.default_rng(4)
    layers: list[Layer] = [LinearNoBias(lb.matrix(rng.normal(size=(2, 3)), F64)), _bn(rng, 3), Activation(Act.relu),
                           Linear(lb.matrix(rng.normal(size=(3, 2)), F64), lb.vector(rng.normal(size=2), F64))]
    x = lb.matrix(rng.normal(size=(6, 2)), F64)
    t = lb.matrix(np.eye(2)[rng.integers(0, 2, 6)], F64)
    errors = lb.gradcheck(layers, x, t, entries=1000)
    assert [e.checked for e in errors] == [6, 3, 3, 6, 2, 12]
    assert max(e.error for e in errors) < 1e-6


def test_layers_that_do_not_train_have_nothing_to_check() -> None:
    rng = np.random.default_rng(5)
    layers = _net({}, rng)
    fixed = [replace(layer, trainable=False) if i in (0, 1) and isinstance(layer, (Linear, Batchnorm1d)) else layer
             for i, layer in enumerate(layers)]
    x, t = _batch(rng)
    errors = lb.gradcheck(fixed, x, t, entries=8)
    assert [(e.layer, e.name) for e in errors] == [(4, "w"), (5, "gamma"), (5, "beta"), (7, "w"), (7, "b"), (None, "x")]
    assert max(e.error for e in errors) < 1e-6
