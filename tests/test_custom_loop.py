"""Loops of your own: ``lb.gradients`` (the training pass without the update) against numpy and
central finite differences, its NaN/inf errors, and a loop of ``gradients``, ``update`` and
``update_running`` that reproduces ``train_step`` bit for bit for every optimizer and batch-norm
variant."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import BN1, Batchnorm1d, Layer

from .test_network import FD_RTOL, NETS, TRAINABLE, batch, fd, param_grads, with_param


def rel_err(got: Any, want: Any) -> float:
    """The largest difference relative to the largest entry, or to 1e-3 for a gradient that is 0
    in exact arithmetic (a bias in front of batch norm), where central differences leave ~1e-10."""
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-3))


def _numpy_loss(pred: Any, tgt: Any) -> float:
    return float(-np.mean(np.sum(tgt * np.log(pred), axis=1)))


@pytest.mark.parametrize("name", list(NETS))
def test_gradients_match_finite_differences_and_the_loss_numpy_computes(name: str) -> None:
    rng = np.random.default_rng(5)
    layers = NETS[name](rng)
    x, tgt = batch(rng)
    key = 11

    def loss(net: list[Layer], at: Any) -> float:
        return lb.gradients(net, lb.matrix(at), tgt, key=key).loss

    p = lb.gradients(layers, lb.matrix(x), tgt, key=key, input_grad=True)
    assert len(p.grads) == len(layers)
    assert math.isclose(p.loss, _numpy_loss(p.pred.array, tgt.array), rel_tol=1e-12)
    np.testing.assert_allclose(p.pred.array.sum(axis=1), 1.0, rtol=1e-12)
    assert rel_err(p.dx.array, fd(lambda v: loss(layers, v), x)) < FD_RTOL
    for i, (layer, g) in enumerate(zip(layers, p.grads)):
        got = param_grads(g)
        assert set(got) == set(TRAINABLE.get(type(layer), ()))
        for field, grad in got.items():
            want = fd(lambda v: loss(with_param(layers, i, field, v), x), np.asarray(getattr(layer, field).array))
            assert rel_err(grad, want) < FD_RTOL, f"layer {i} {type(layer).__name__}.{field}"
    assert lb.gradients(layers, lb.matrix(x), tgt, key=key).dx is None  # not computed unless asked for


def _variant(which: str, n: int, dtype: Any) -> Batchnorm1d:
    bn = Batchnorm1d(lb.vector(np.linspace(-0.5, 0.5, n), dtype), lb.vector(np.linspace(0.5, 2.0, n), dtype),
                     lb.ones(n, dtype), lb.zeros(n, dtype))
    match which:
        case "momentum":
            return bn
        case "cumulative":
            return replace(bn, momentum=None, tracked=3)
        case "frozen":
            return replace(bn, frozen=True)
        case "renorm":
            return replace(bn, renorm=lb.Renorm(1.5, 0.5))
        case "ghost":
            return replace(bn, ghost_batch=4)
        case "fixed":
            return replace(bn, trainable=False)
    raise AssertionError(which)


def _step_by_hand(layers: list[Layer], opt: lb.Optimizer, state: lb.OptState, x: lb.Matrix, tgt: lb.Matrix,
                  key: int) -> tuple[list[Layer], lb.OptState, float]:
    p = lb.gradients(layers, x, tgt, key=key)
    new, state = lb.update(opt, state, layers, p.grads)
    new = [lb.update_running(layer, g) if isinstance(layer, Batchnorm1d) and isinstance(g, BN1) else layer
           for layer, g in zip(new, p.grads)]
    return new, state, p.loss


OPTIMIZERS = [lb.SGD(0.1), lb.Momentum(0.05, weight_decay=1e-3), lb.Adam(1e-2), lb.RMSProp(1e-2)]


@settings(max_examples=12, deadline=None)
@given(which=st.sampled_from(["momentum", "cumulative", "frozen", "renorm", "ghost", "fixed"]),
       opt=st.sampled_from(OPTIMIZERS), dtype=st.sampled_from([np.float32, np.float64]),
       dropout=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_a_loop_of_gradients_update_and_update_running_is_train_step(which: str, opt: lb.Optimizer, dtype: Any,
                                                                      dropout: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers: list[Layer] = [lb.LinearNoBias(lb.matrix(rng.normal(size=(5, 6)) / 2, dtype)),
                           _variant(which, 6, dtype), lb.Activation(lb.Act.relu),
                           *([lb.Dropout(0.25)] if dropout else []), lb.Linear(lb.matrix(rng.normal(size=(6, 3)), dtype),
                                                                             lb.zeros(3, dtype))]
    mine, theirs = list(layers), list(layers)
    state_mine = state_theirs = lb.init_state(opt, layers)
    for step in range(3):
        x = lb.matrix(rng.normal(size=(8, 5)), dtype)
        tgt = lb.matrix(np.eye(3)[rng.integers(0, 3, 8)], dtype)
        mine, state_mine, loss = _step_by_hand(mine, opt, state_mine, x, tgt, key=step)
        r = lb.train_step(theirs, opt, state_theirs, x, tgt, key=step)
        theirs, state_theirs = r.layers, r.opt_state
        assert loss == r.loss
        assert state_mine.step == state_theirs.step
        for mine_slots, their_slots in zip(state_mine.slots, state_theirs.slots):
            for u, v in zip(mine_slots, their_slots):
                np.testing.assert_array_equal(u.array, v.array)
        for a, b in zip(mine, theirs):
            assert type(a) is type(b)
            for field in ("w", "b", "gamma", "beta", "mu", "var", "tracked"):
                if hasattr(a, field):
                    u, v = getattr(a, field), getattr(b, field)
                    np.testing.assert_array_equal(getattr(u, "array", u), getattr(v, "array", v), err_msg=field)


def test_gradients_refuse_non_finite_batches_naming_what() -> None:
    layers = lb.mlp((4, 5, 3), batchnorm=True, seed=0)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    tgt = lb.matrix(lb.one_hot(np.arange(6) % 3, 3))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(lb.NumericalError, match="gradients: the input batch contains NaN or infinity"):
        lb.gradients(layers, lb.matrix(bad), tgt)
    with pytest.raises(lb.NumericalError, match="gradients: the target batch contains NaN or infinity"):
        lb.gradients(layers, lb.matrix(x), lb.matrix(np.full((6, 3), np.inf, np.float32)))
    with pytest.raises(lb.ArgumentError, match="gradients: the input must be a lazybn Matrix"):
        lb.gradients(layers, x, tgt)  # type: ignore[call-overload]


def test_a_batch_statistic_that_overflows_is_named_before_the_loss_it_makes_nan() -> None:
    # numpy: the squared deviations of +-1e30 overflow float32, so the batch variance is inf
    x = np.zeros((4, 4), np.float32)
    x[:, 0] = [1e30, -1e30, 1e30, -1e30]
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.var(x[:, 0], dtype=np.float32))
    layers: list[Layer] = [lb.Batchnorm1d(lb.zeros(4), lb.ones(4), lb.ones(4), lb.zeros(4)),
                           lb.LinearNoBias(lb.ones((4, 2)))]
    with pytest.raises(lb.NumericalError, match=r"gradients: layer 0 \(Batchnorm1d\) has a non-finite batch_var"):
        lb.gradients(layers, lb.matrix(x), lb.matrix(np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]))


def test_logits_that_overflow_make_a_nan_loss_which_is_named() -> None:
    # numpy: the logits x.w overflow float32 to +inf and -inf, so softmax is NaN
    x = np.full((3, 2), 1e20, np.float32)
    w = np.array([[1e20, -1e20], [1e20, -1e20]], np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(x @ w).all()
    with pytest.raises(lb.NumericalError, match="gradients: the loss is nan"):
        lb.gradients([lb.LinearNoBias(lb.matrix(w))], lb.matrix(x), lb.matrix(np.eye(2, dtype=np.float32)[[0, 1, 0]]))


def test_a_loop_with_a_changing_count_and_renormalisation_bounds_traces_each_step_once() -> None:
    """A cumulative average's count and batch renormalisation's bounds change every step of a loop;
    they reach the replays as values, so ``gradients``, ``update`` and ``update_running`` trace
    once (and the bounds still clip r and d, so each step's loss differs; the count still counts)."""
    rng = np.random.default_rng(4)
    x = lb.matrix(rng.normal(3.0, 2.0, (8, 5)))
    tgt = lb.matrix(np.eye(3)[rng.integers(0, 3, 8)])
    w = lb.matrix(rng.normal(size=(5, 3)))
    running = (lb.vector(np.zeros(5)), lb.vector(np.ones(5)), lb.vector(np.ones(5)), lb.vector(np.zeros(5)))
    opt = lb.Momentum(0.01)

    def net(step: int) -> list[Layer]:
        return [lb.Batchnorm1d(*running, momentum=None, tracked=step), lb.Activation(lb.Act.tanh),
                lb.Batchnorm1d(*running, renorm=lb.Renorm(1.0 + 0.01 * step, 0.001 * step)), lb.LinearNoBias(w)]

    def step(layers: list[Layer]) -> tuple[lb.PassResult, list[Layer]]:
        p = lb.gradients(layers, x, tgt)
        new, _ = lb.update(opt, lb.init_state(opt, layers), layers, p.grads)
        return p, [lb.update_running(la, g) if isinstance(la, Batchnorm1d) and isinstance(g, BN1) else la
                   for la, g in zip(new, p.grads)]

    first, stepped = step(net(1))
    traces = lb.fuse.stats().traces
    later = [step(net(k)) for k in range(2, 6)]
    assert lb.fuse.stats().traces == traces
    assert later[0][0].loss != first.loss  # the bounds reach the pass: r and d are clipped to them
    for k, (_, new) in enumerate(later, start=2):  # the count and the bounds come back, the count one more
        assert isinstance(new[0], Batchnorm1d) and new[0].tracked == k + 1
        assert isinstance(new[2], Batchnorm1d) and new[2].renorm == lb.Renorm(1.0 + 0.01 * k, 0.001 * k)
    again, restepped = step(net(1))
    assert again.loss == first.loss
    for g, h in zip(again.grads, first.grads):
        for f in ("dgamma", "dbeta", "dw"):
            if hasattr(g, f):
                np.testing.assert_array_equal(getattr(g, f).array, getattr(h, f).array)
    for a, b in zip(restepped, stepped):
        for f in ("gamma", "mu", "var", "w"):
            if hasattr(a, f):
                np.testing.assert_array_equal(getattr(a, f).array, getattr(b, f).array)


FIXED_NETS: dict[str, Callable[[np.random.Generator], list[Layer]]] = {
    "a batch norm that does not train": lambda rng: [
        lb.Linear(lb.matrix(rng.normal(size=(6, 11))), lb.zeros(11, np.float64)),
        Batchnorm1d(lb.zeros(11, np.float64), lb.ones(11, np.float64), lb.ones(11, np.float64),
                    lb.zeros(11, np.float64), trainable=False),
        lb.Activation(lb.Act.relu), lb.LinearNoBias(lb.matrix(rng.normal(size=(11, 4))))],
    "layers of every kind that do not train": lambda rng: [
        lb.Linear(lb.matrix(rng.normal(size=(6, 11))), lb.zeros(11, np.float64), trainable=False),
        Batchnorm1d(lb.zeros(11, np.float64), lb.ones(11, np.float64), lb.ones(11, np.float64),
                    lb.zeros(11, np.float64), trainable=False),
        lb.LinearNoBias(lb.matrix(rng.normal(size=(11, 11))), trainable=False),
        Batchnorm1d(lb.zeros(11, np.float64), lb.ones(11, np.float64), lb.ones(11, np.float64),
                    lb.zeros(11, np.float64), momentum=None, trainable=False),
        lb.Activation(lb.Act.tanh), lb.LinearNoBias(lb.matrix(rng.normal(size=(11, 4))))],
}


@pytest.mark.parametrize("name", list(FIXED_NETS))
def test_a_loop_with_layers_that_do_not_train_traces_only_its_first_step(name: str) -> None:
    """A layer with ``trainable=False`` gets empty gradients; a replay of ``gradients`` hands out
    the same arguments to ``update`` and ``update_running`` as its first call (no two of the empty
    arrays are one array), so steps after the first replay all three (shapes no other test uses)."""
    rng = np.random.default_rng(8)
    layers = FIXED_NETS[name](rng)
    opt = lb.Momentum(0.01)
    state = lb.init_state(opt, layers)
    traced: list[tuple[int, int, int]] = []
    for _ in range(4):
        x = lb.matrix(rng.normal(size=(10, 6)))
        tgt = lb.matrix(np.eye(4)[rng.integers(0, 4, 10)])
        before = lb.fuse.stats().traces
        p = lb.gradients(layers, x, tgt)
        after_gradients = lb.fuse.stats().traces
        layers, state = lb.update(opt, state, layers, p.grads)
        after_update = lb.fuse.stats().traces
        layers = [lb.update_running(la, g) if isinstance(la, Batchnorm1d) and isinstance(g, BN1) else la
                  for la, g in zip(layers, p.grads)]
        traced.append((after_gradients - before, after_update - after_gradients,
                       lb.fuse.stats().traces - after_update))
    assert traced[1:] == [(0, 0, 0)] * 3, f"traces per step (gradients, update, update_running): {traced}"


def test_update_refuses_a_batch_norm_step_that_overflows_gamma_naming_the_layer() -> None:
    # numpy: the batch-norm output xhat and dgamma = sum(dz * xhat); 1 - lr * dgamma overflows
    x = np.array([[10.0], [20.0], [-10.0], [10.0], [10.0]])
    tgt = np.eye(2)[[0, 1, 0, 1, 1]]
    w = np.array([[1e10, 0.0]])
    xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
    logits = xhat @ w
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    dgamma = np.sum((((e / e.sum(axis=1, keepdims=True)) - tgt) / 5 @ w.T) * xhat, axis=0)
    lr = 1e300
    with np.errstate(over="ignore"):
        assert not np.isfinite(1.0 - lr * dgamma).all()
    net: list[Layer] = [lb.LinearNoBias(lb.matrix(np.eye(1))),
                        Batchnorm1d(lb.vector([0.0], np.float64), lb.vector([1.0], np.float64),
                                    lb.vector([1.0], np.float64), lb.vector([0.0], np.float64)),
                        lb.LinearNoBias(lb.matrix(w))]
    net[0] = replace(net[0], trainable=False)  # type: ignore[arg-type]
    p = lb.gradients(net, lb.matrix(x), lb.matrix(tgt))
    with pytest.raises(lb.NumericalError, match=r"update at step 0: the update makes layer 1 \(Batchnorm1d\) "
                                                r"non-finite \(Batchnorm1d.gamma: contains NaN or infinity\)"):
        lb.update(lb.SGD(lr), lb.init_state(lb.SGD(lr), net), net, p.grads)


def test_update_running_refuses_another_layers_statistics() -> None:
    wide, narrow = (Batchnorm1d(lb.zeros(n), lb.ones(n), lb.ones(n), lb.zeros(n)) for n in (4, 3))
    g = lb.gradients([wide, lb.LinearNoBias(lb.ones((4, 2)))], lb.matrix(np.arange(12.0).reshape(3, 4), np.float32),
                     lb.matrix(np.eye(2)[[0, 1, 0]], np.float32)).grads[0]
    assert isinstance(g, BN1)
    with pytest.raises(lb.ShapeError, match=r"update_running: .*one entry per feature of the layer \(3\)"):
        lb.update_running(narrow, g)
    with pytest.raises(lb.DTypeError, match="update_running: the BN1's batch_mu is float32 but the layer holds float64"):
        f64 = lb.vector(np.zeros(4), np.float64), lb.vector(np.ones(4), np.float64)
        lb.update_running(Batchnorm1d(f64[0], f64[1], f64[1], f64[0]), g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_refuses_a_step_that_overflows_a_weight_naming_it(dtype: Any) -> None:
    # numpy: w - lr * dw with lr at the dtype's largest value overflows where dw is not 0
    x = np.array([[30.0, 10.0], [-20.0, 10.0]])
    tgt = np.eye(2)
    w = np.array([[0.05, -0.05], [0.025, 0.0]])
    logits = x @ w
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    dw = x.T @ ((e / e.sum(axis=1, keepdims=True) - tgt) / 2)
    lr = float(np.finfo(dtype).max)
    with np.errstate(over="ignore"):
        assert not np.isfinite((w - lr * dw).astype(dtype)).all()
    net: list[Layer] = [lb.LinearNoBias(lb.matrix(w, dtype))]
    opt = lb.SGD(lr)
    state = lb.init_state(opt, net)
    p = lb.gradients(net, lb.matrix(x, dtype), lb.matrix(tgt, dtype))
    np.testing.assert_allclose(param_grads(p.grads[0])["w"], dw, rtol=1e-5)
    with pytest.raises(lb.NumericalError, match=r"update at step 0: the update makes layer 0 \(LinearNoBias\) w "
                                                r"non-finite"):
        lb.update(opt, state, net, p.grads)
    fine, _ = lb.update(lb.SGD(0.1), lb.init_state(lb.SGD(0.1), net), net, p.grads)  # a finite step goes through
    assert isinstance(fine[0], lb.LinearNoBias)
    np.testing.assert_allclose(fine[0].w.array, w - 0.1 * dw, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), concentration=st.sampled_from([0.05, 1.0, 20.0]))
def test_soft_labels_get_the_gradient_of_their_loss(seed: int, concentration: float) -> None:
    """Rows of probabilities that are not one-hot (soft or smoothed labels): the input gradient is
    that of the mean cross-entropy, by central differences of the loss numpy computes."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = [lb.Linear(lb.matrix(rng.normal(size=(3, 4))), lb.vector(rng.normal(size=4))),
                           lb.Activation(lb.Act.tanh), lb.LinearNoBias(lb.matrix(rng.normal(size=(4, 3))))]
    x = rng.normal(size=(5, 3))
    tgt = rng.dirichlet(np.full(3, concentration), 5)

    def numpy_loss(at: Any) -> float:
        pred = lb.gradients(layers, lb.matrix(at), lb.matrix(tgt)).pred.array
        return _numpy_loss(pred, tgt)

    p = lb.gradients(layers, lb.matrix(x), lb.matrix(tgt), input_grad=True)
    assert p.dx is not None
    assert rel_err(p.dx.array, fd(numpy_loss, x)) < FD_RTOL


BAD_TARGETS = {"two classes at once": [[1.0, 1.0, 0.0]], "a row of zeros": [[0.0, 0.0, 0.0]],
               "a negative entry": [[1.5, -0.5, 0.0]], "a sum of 0.99": [[0.99, 0.0, 0.0]]}


@pytest.mark.parametrize("name", list(BAD_TARGETS))
def test_targets_that_are_not_probabilities_are_refused_before_any_step(name: str) -> None:
    """Only for probability rows is (pred - tgt) / m the gradient of the loss; other targets are a
    ValueRangeError naming the row, from every entry point, and train_epoch finds the row before
    its first step, wherever it is."""
    layers = lb.mlp((2, 4, 3), batchnorm=True, seed=0)
    opt = lb.SGD(0.1)
    y = np.eye(3, dtype=np.float32)[np.arange(300) % 3]
    y[250] = BAD_TARGETS[name][0]
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    for call in (lambda: lb.gradients(layers, lb.matrix(x[200:]), lb.matrix(y[200:])),
                 lambda: lb.train_step(layers, opt, lb.init_state(opt, layers), lb.matrix(x[200:]), lb.matrix(y[200:]))):
        with pytest.raises(lb.ValueRangeError, match=r"target rows must be probabilities.*; row 50 is"):
            call()
    with pytest.raises(lb.ValueRangeError, match="train_epoch: target rows must be probabilities.*; row 250 is"):
        lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, y, 100, None, max_steps=1)
    y[250] = [0.1, 0.8, 0.1]  # a soft label is a probability row
    lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, y, 100, None, max_steps=1)


def test_soft_labels_from_a_float32_softmax_train_a_float64_network() -> None:
    """Rows of a float32 softmax sum to 1 within a few float32 ulps: as float64 targets they are
    probabilities (the check is for rows of zeros, two classes at once, negative entries)."""
    logits = np.random.default_rng(1).normal(size=(64, 1000)).astype(np.float32) * 3
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft = (e / e.sum(axis=1, keepdims=True)).astype(np.float64)
    assert np.abs(soft.sum(axis=1) - 1).max() > 1e-8  # not exactly 1 in float64
    net = lb.mlp((5, 1000), batchnorm=False, seed=0, dtype=np.float64)
    x = lb.matrix(np.random.default_rng(2).normal(size=(64, 5)))
    p = lb.gradients(net, x, lb.matrix(soft))
    assert math.isfinite(p.loss)


def test_the_batch_is_checked_for_rank_and_dtype_before_its_targets() -> None:
    net = lb.mlp((3, 4, 2), batchnorm=True, seed=0)
    x = lb.matrix(np.ones((4, 3), np.float32))
    opt = lb.SGD(0.1)
    with pytest.raises(lb.RankError, match="gradients: input and target must be matrices"):
        lb.gradients(net, x, lb.vector(np.ones(4, np.float32)))  # type: ignore[arg-type]
    with pytest.raises(lb.RankError, match="train_step: input and target must be matrices"):
        lb.train_step(net, opt, lb.init_state(opt, net), x, lb.vector(np.ones(4, np.float32)))  # type: ignore[arg-type]
    with pytest.raises(lb.DTypeError, match="gradients: the target is float64 but the input is float32"):
        lb.gradients(net, x, lb.matrix(np.full((4, 2), 0.7)))  # not probabilities either: the dtype comes first
    with pytest.raises(lb.ArgumentError, match="gradients: layers"):
        lb.gradients(None, x, lb.matrix(np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]))  # type: ignore[call-overload]


def test_gradcheck_refuses_targets_that_are_not_probabilities() -> None:
    net = lb.mlp((3, 4, 2), batchnorm=True, seed=0, dtype=np.float64)
    with pytest.raises(lb.ValueRangeError, match="gradcheck: target rows must be probabilities"):
        lb.gradcheck(net, lb.matrix(np.ones((4, 3))), lb.matrix(np.zeros((4, 2))))


def test_a_finite_gradient_whose_sum_overflows_passes_without_a_warning() -> None:
    """The finiteness check sums each array first; a sum beyond float32's range is no error: here
    the batch means, 3e38 in each of 4 features (numpy: finite, but their float32 sum is not)."""
    x = np.full((4, 4), 3e38, np.float32)
    with np.errstate(over="ignore"):
        assert np.isfinite(x.mean(axis=0, dtype=np.float64).astype(np.float32)).all() and np.isinf(x[0].sum())
    net: list[Layer] = [Batchnorm1d(lb.zeros(4), lb.ones(4), lb.ones(4), lb.zeros(4)), lb.LinearNoBias(lb.ones((4, 2)))]
    with np.errstate(all="raise"):  # no warning, no error
        p = lb.gradients(net, lb.matrix(x), lb.matrix(np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]))
    assert isinstance(p.grads[0], BN1)
    np.testing.assert_array_equal(p.grads[0].batch_mu.array, np.float32(3e38))


def test_update_takes_any_sequence_of_gradients() -> None:
    net = lb.mlp((3, 4, 2), batchnorm=True, seed=0)
    p = lb.gradients(net, lb.matrix(np.ones((4, 3), np.float32) * np.arange(4, dtype=np.float32)[:, None]),
                     lb.matrix(np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]))
    opt = lb.SGD(0.1)
    as_list, _ = lb.update(opt, lb.init_state(opt, net), net, p.grads)
    as_tuple, _ = lb.update(opt, lb.init_state(opt, net), net, tuple(p.grads))
    for a, b in zip(as_list, as_tuple):
        if isinstance(a, lb.LinearNoBias) and isinstance(b, lb.LinearNoBias):
            np.testing.assert_array_equal(a.w.array, b.w.array)
