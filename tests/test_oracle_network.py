"""Training steps whose update overflows, and dropout keys, against plain numpy: a step never hands
out a network holding NaN/inf, and a key numpy cannot seed from is lazybn's own error."""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import Batchnorm1d, Dropout, Layer, Linear, LinearNoBias
from lazybn.network import _pass
from lazybn.optim import SGD, Adam, Momentum, RMSProp, init_state
from lazybn.errors import NumericalError
from lazybn.train import train_step

from .helpers import DTYPES
from .net_helpers import assert_same_network


def _softmax_grad(logits: Any, tgt: Any) -> Any:
    """The gradient of the mean cross-entropy with respect to the logits (numpy, float64)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True) - tgt) / logits.shape[0]


@pytest.mark.parametrize("dtype", DTYPES)
@given(bias=st.booleans(), momentum=st.booleans(), n=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_an_update_that_overflows_a_weight_is_refused_naming_the_layer(dtype: np.dtype[Any], bias: bool,
                                                                       momentum: bool, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    tgt = np.eye(2)[labels]
    # class 0 on the positive side, class 1 on the negative: every sample pulls dw the same way
    x = rng.uniform(5.0, 10.0, (n, 2)) * np.where(labels == 0, 1.0, -1.0)[:, None]
    w = rng.uniform(-0.01, 0.01, (2, 2))
    lr = float(np.finfo(dtype).max)
    # the numpy oracle: the loss is finite, the SGD step (= the first Momentum step) overflows the weights
    dw = x.T @ _softmax_grad(x @ w, tgt)
    with np.errstate(over="ignore"):
        new_w = (w - lr * dw).astype(dtype)
    assert not np.isfinite(new_w).all()
    net: list[Layer] = [Linear(lb.matrix(w, dtype), lb.zeros(2, dtype)) if bias else LinearNoBias(lb.matrix(w, dtype))]
    opt = Momentum(lr) if momentum else SGD(lr)
    state = init_state(opt, net)
    xs, ys = lb.matrix(x, dtype), lb.matrix(tgt, dtype)
    kind = "Linear" if bias else "LinearNoBias"
    with pytest.raises(NumericalError, match=rf"training step 0: the update makes layer 0 \({kind}\) w non-finite"):
        train_step(net, opt, state, xs, ys)
    skipped = train_step(net, opt, state, xs, ys, on_nonfinite="skip")
    assert skipped.skipped and skipped.layers == net and skipped.opt_state is state
    assert np.isfinite(skipped.loss)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_an_update_that_overflows_batch_norm_honours_on_nonfinite(on_nonfinite: Any) -> None:
    x = np.array([[10.0], [20.0], [-10.0], [10.0], [10.0]])
    tgt = np.eye(2)[[0, 1, 0, 1, 1]]
    w = np.array([[1e10, 0.0]])
    lr = 1e300
    # the numpy oracle: batch norm's output, the loss's gradient, and gamma's step overflows
    xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
    dgamma = np.sum((_softmax_grad(xhat @ w, tgt) @ w.T) * xhat, axis=0)
    with np.errstate(over="ignore"):
        assert not np.isfinite(1.0 - lr * dgamma).all()
    v = lb.vector
    net: list[Layer] = [Batchnorm1d(v([0.0], np.float64), v([1.0], np.float64), v([1.0], np.float64),
                                    v([0.0], np.float64)), LinearNoBias(lb.matrix(w, np.float64))]
    opt = SGD(lr)
    state = init_state(opt, net)
    if on_nonfinite == "raise":
        with pytest.raises(NumericalError, match=r"training step 0: the update makes layer 0 \(Batchnorm1d\) "
                                                 r"non-finite \(Batchnorm1d.gamma: contains NaN or infinity\)"):
            train_step(net, opt, state, lb.matrix(x, np.float64), lb.matrix(tgt, np.float64))
    else:
        r = train_step(net, opt, state, lb.matrix(x, np.float64), lb.matrix(tgt, np.float64), on_nonfinite="skip")
        assert r.skipped and r.layers == net and r.opt_state is state


@pytest.mark.parametrize("key", [-1, -(2**40), 1.5])
def test_a_dropout_key_numpy_cannot_seed_from_is_a_value_range_error(key: Any) -> None:
    net: list[Layer] = [Dropout(0.5), LinearNoBias(lb.matrix(np.ones((3, 2))))]
    x, tgt = lb.matrix(np.ones((4, 3))), lb.matrix(np.eye(2)[[0, 1, 0, 1]])
    with pytest.raises(TypeError if isinstance(key, float) else ValueError):
        np.random.default_rng([key, 0])  # the oracle: numpy refuses this seed
    for _ in range(2):  # the trace, then the replay of a signature traced with a valid key
        _pass(x, tgt, net, 7)
        with pytest.raises(lb.ValueRangeError, match=r"Dropout in training: the key must be an integer >= 0"):
            _pass(x, tgt, net, key)
        with pytest.raises(lb.ValueRangeError, match=r"Dropout in training: the key must be an integer >= 0"):
            train_step(net, SGD(0.1), init_state(SGD(0.1), net), x, tgt, key=key)


def test_a_missing_dropout_key_asks_for_a_new_key_every_step() -> None:
    net: list[Layer] = [Dropout(0.5), LinearNoBias(lb.matrix(np.ones((3, 2))))]
    x, tgt = lb.matrix(np.arange(12.0).reshape(4, 3)), lb.matrix(np.eye(2)[[0, 1, 0, 1]])
    for call in (lambda: lb.gradients(net, x, tgt),
                 lambda: train_step(net, SGD(0.1), init_state(SGD(0.1), net), x, tgt)):
        with pytest.raises(lb.ValueRangeError, match=re.escape("pass key=<int> to gradients / train_step, a new one "
                                                               "every step (a key used again draws the same masks")):
            call()
    # what the message warns of: a key draws the same masks every time it is used, another key others
    dws = []
    for key in (3, 3, 4):
        g = lb.gradients(net, x, tgt, key=key).grads[1]
        assert isinstance(g, lb.LinearNoBiasGradients)
        dws.append(g.dw.array)
    assert np.array_equal(dws[0], dws[1]) and not np.array_equal(dws[0], dws[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_weights_whose_column_sums_overflow_are_not_refused(dtype: np.dtype[Any]) -> None:
    """The step checks the weights' column sums first; a sum past the float range is not a
    non-finite weight."""
    big = float(np.finfo(dtype).max) * 0.75
    w = np.array([[big, 0.0], [big, 0.0]])
    with np.errstate(over="ignore"):
        assert np.isfinite(w.astype(dtype)).all() and not np.isfinite(w.astype(dtype).sum(axis=0, dtype=dtype)).all()
    net: list[Layer] = [LinearNoBias(lb.matrix(w, dtype)), LinearNoBias(lb.matrix(np.zeros((2, 2)), dtype))]
    opt = SGD(0.1)
    x, tgt = lb.zeros((2, 2), dtype), lb.matrix(np.eye(2), dtype)  # x · w stays finite
    r = train_step(net, opt, init_state(opt, net), x, tgt, lr_scale=0.0)
    assert not r.skipped
    np.testing.assert_array_equal(r.layers[0].w.array, w.astype(dtype))  # type: ignore[union-attr]


@pytest.mark.parametrize("make", [lambda: Adam(1e-3), lambda: RMSProp(1e-3)], ids=["Adam", "RMSProp"])
def test_an_average_of_squared_gradients_that_overflows_is_refused(make: Any) -> None:
    """float32 gradients near 1e20 square to inf: the parameter, divided by the root of that
    average, would stay finite and never move again."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.0, (4, 2)) * 1e20
    tgt = np.eye(2)[[0, 1, 0, 1]]
    w = rng.uniform(-0.01, 0.01, (2, 2))
    # the numpy oracle: the loss's gradient is finite in float32, its square is not
    z = x @ w
    p = np.exp(z - z.max(axis=1, keepdims=True))
    dw = (x.T @ (p / p.sum(axis=1, keepdims=True) - tgt) / 4).astype(np.float32)
    assert np.isfinite(dw).all()
    with np.errstate(over="ignore"):
        assert not np.isfinite(dw * dw).all()
    net: list[Layer] = [LinearNoBias(lb.matrix(w, np.float32))]
    opt = make()
    state = init_state(opt, net)
    xs, ys = lb.matrix(x, np.float32), lb.matrix(tgt, np.float32)
    with pytest.raises(NumericalError, match=r"optimizer state of layer 0 \(LinearNoBias\) non-finite"):
        train_step(net, opt, state, xs, ys)
    skipped = train_step(net, opt, state, xs, ys, on_nonfinite="skip")
    assert skipped.skipped and skipped.opt_state is state


@pytest.mark.parametrize("bad", ["input nan", "input inf", "target nan"])
def test_a_batch_holding_nan_or_inf_is_skipped_when_asked(bad: str) -> None:
    """on_nonfinite="skip" skips a batch holding NaN/inf as it skips a step that makes one: the
    epoch trains on the other batches exactly as a loop of steps over them alone does (dropout
    keys and a cumulative count included), and the step hands back the layers and state given."""
    rng = np.random.default_rng(7)
    net = lb.mlp((3, 5, 2), batchnorm=True, dropout=0.2, momentum=None, seed=4)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = lb.one_hot(rng.integers(0, 2, 12), 2)
    if bad == "target nan":
        y[5, 1] = np.nan
    else:
        x[5, 1] = np.nan if bad == "input nan" else np.inf
    opt = lb.Adam(0.01)
    state = init_state(opt, net)
    with pytest.raises(NumericalError, match=rf"train_step: the {bad.split()[0]} batch contains NaN or infinity"):
        train_step(net, opt, state, lb.matrix(x[4:8]), lb.matrix(y[4:8]))
    skipped = train_step(net, opt, state, lb.matrix(x[4:8]), lb.matrix(y[4:8]), key=3, on_nonfinite="skip")
    assert skipped.skipped and skipped.opt_state is state and skipped.layers == net
    assert skipped.pred.shape == (4, 2)
    got, got_state, loss = lb.train_epoch(net, opt, state, x, y, 4, None, key=0, on_nonfinite="skip")
    layers, want_state, losses = list(net), state, []
    for rows in (slice(0, 4), slice(8, 12)):  # the batches without NaN/inf, with the keys train_epoch gives them
        step = train_step(layers, opt, want_state, lb.matrix(x[rows]), lb.matrix(y[rows]), key=want_state.step)
        layers, want_state = step.layers, step.opt_state
        losses.append(step.loss)
    assert_same_network(got, layers)
    assert got_state.step == want_state.step == 2 and loss == sum(losses) / 2
    bn = got[1]
    assert isinstance(bn, Batchnorm1d) and bn.tracked == 2


def test_skipping_still_refuses_what_is_not_a_numerical_problem() -> None:
    net = lb.mlp((3, 4, 2), batchnorm=True, seed=0)
    opt = lb.SGD(0.1)
    state = init_state(opt, net)
    x = np.full((4, 5), np.nan, np.float32)  # the wrong number of features, and NaN
    y = lb.one_hot(np.array([0, 1, 0, 1]), 2)
    with pytest.raises(lb.ShapeError, match="layer 0 .* takes 3 features, the input has 5 columns"):
        train_step(net, opt, state, lb.matrix(x), lb.matrix(y), on_nonfinite="skip")
    bad_targets = y.copy()
    bad_targets[0, 0], bad_targets[1, 0] = np.nan, 2.0  # one row to skip, one that is no probability
    with pytest.raises(lb.ValueRangeError, match="target rows must be probabilities"):
        lb.train_epoch(net, opt, state, np.ones((4, 3), np.float32), bad_targets, 2, None, on_nonfinite="skip")
    for where in ("train_step", "train_epoch"):
        with pytest.raises(lb.ArgumentError, match=f"{where}: on_nonfinite must be 'raise' or 'skip', got 'Skip'"):
            if where == "train_step":
                train_step(net, opt, state, lb.matrix(x[:, :3]), lb.matrix(y), on_nonfinite="Skip")  # type: ignore[arg-type]
            else:
                lb.train_epoch(net, opt, state, x[:, :3], y, 2, None, on_nonfinite="Skip")  # type: ignore[arg-type]


def test_targets_with_nan_are_refused_before_the_first_step_unless_skipping() -> None:
    net = lb.mlp((3, 4, 2), batchnorm=True, seed=0)
    opt = lb.SGD(0.1)
    y = lb.one_hot(np.array([0, 1, 0, 1]), 2)
    y[3, 1] = np.nan  # in the second batch of two
    steps: list[float] = []
    with pytest.raises(NumericalError, match="train_epoch: the target batch contains NaN or infinity"):
        lb.train_epoch(net, opt, init_state(opt, net), np.ones((4, 3), np.float32), y, 2, None, progress=steps.append)
    assert steps == []  # no step trained on the first batch
    _, state, loss = lb.train_epoch(net, opt, init_state(opt, net), np.ones((4, 3), np.float32), y, 2, None,
                                    on_nonfinite="skip", progress=steps.append)
    assert len(steps) == 2 and state.step == 1 and loss == steps[0]  # the second batch skipped


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize(("where", "field"), [(0, "w"), (3, "w"), (3, "b")])
def test_nan_or_inf_in_a_linear_layers_weights_is_named(value: float, where: int, field: str) -> None:
    """A Linear does not look at its weights when built; the errors their NaN/inf causes name
    them, and a step refuses them even when asked to skip (every batch would be skipped)."""
    rng = np.random.default_rng(9)
    net: list[Layer] = [Linear(lb.matrix(rng.normal(size=(3, 4)), np.float32), lb.vector(np.zeros(4), np.float32)),
                        Batchnorm1d(lb.zeros(4), lb.ones(4), lb.ones(4), lb.zeros(4)), lb.Activation(lb.Act.tanh),
                        Linear(lb.matrix(rng.normal(size=(4, 2)), np.float32), lb.vector(np.zeros(2), np.float32))]
    layer = net[where]
    assert isinstance(layer, Linear)
    a = getattr(layer, field).array.copy()
    a.flat[1] = value
    net[where] = Linear(lb.matrix(a), layer.b) if field == "w" else Linear(layer.w, lb.vector(a))
    x, labels = rng.normal(size=(6, 3)).astype(np.float32), rng.integers(0, 2, 6)
    want = rf"layer {where} \(Linear\) holds NaN or infinity in {field}"
    opt = lb.SGD(0.1)
    with pytest.raises(NumericalError, match=f"gradients: {want}"):
        lb.gradients(net, lb.matrix(x), lb.matrix(lb.one_hot(labels, 2)))
    modes: tuple[Literal["raise", "skip"], ...] = ("raise", "skip")
    for on_nonfinite in modes:
        with pytest.raises(NumericalError, match=f"training step 0: {want} before the step"):
            train_step(net, opt, init_state(opt, net), lb.matrix(x), lb.matrix(lb.one_hot(labels, 2)),
                       on_nonfinite=on_nonfinite)
    if where == 0 and value == np.inf:
        return  # tanh takes the infinite features to +-1: the outputs are finite, and so is the accuracy
    with pytest.raises(NumericalError, match=rf"accuracy: the network's outputs for rows 0..5 are not finite \({want}\)"):
        lb.accuracy(net, x, labels)
