"""Whole networks: ``_pass`` gradients against central finite differences of the mean
cross-entropy (float64), dropout keys and scaling, a stable softmax, ``forward`` against a numpy
reference of inference, the errors of bad batches, and every script in ``examples/`` runs."""

from __future__ import annotations

import math
import re
import runpy
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, assert_never

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import (
    BN1,
    Act,
    Activation,
    Batchnorm1d,
    Dropout,
    Gradients,
    Layer,
    Linear,
    LinearGradients,
    LinearNoBias,
    LinearNoBiasGradients,
    NoGrad,
)
from lazybn.network import _pass, cross_entropy, forward, logits

from .helpers import F
from .net_helpers import numpy_inference

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
FD_STEP = 1e-6
FD_RTOL = 1e-6  # of the largest gradient entry of the array (float64, central differences)


# ---------------------------------------------------------------------------------------------
# Small networks mixing every layer kind (float64)


def _w(rng: np.random.Generator, n_in: int, n_out: int) -> lb.Matrix:
    return lb.matrix(rng.standard_normal((n_in, n_out)) / np.sqrt(n_in))


def _v(rng: np.random.Generator, n: int, low: float = -1.0, high: float = 1.0) -> lb.Vector:
    return lb.vector(rng.uniform(low, high, n))


def _bn(rng: np.random.Generator, n: int) -> Batchnorm1d:
    return Batchnorm1d(_v(rng, n), _v(rng, n, 0.5, 2.0), _v(rng, n, 0.5, 2.0), _v(rng, n))


NETS: dict[str, Callable[[np.random.Generator], list[Layer]]] = {
    "linear-bn-relu-dropout-tanh": lambda rng: [
        Linear(_w(rng, 3, 5), _v(rng, 5)), _bn(rng, 5), Activation(Act.relu), Dropout(0.3),
        LinearNoBias(_w(rng, 5, 4)), Activation(Act.tanh), Linear(_w(rng, 4, 3), _v(rng, 3)),
    ],
    "sigmoid-identity-two-bn": lambda rng: [
        LinearNoBias(_w(rng, 3, 4)), _bn(rng, 4), Activation(Act.sigmoid), Linear(_w(rng, 4, 4), _v(rng, 4)),
        Activation(Act.identity), Dropout(0.5), _bn(rng, 4), Linear(_w(rng, 4, 3), _v(rng, 3)),
    ],
    "bn-on-the-input": lambda rng: [
        _bn(rng, 3), Activation(Act.tanh), Dropout(0.2), LinearNoBias(_w(rng, 3, 3)), Activation(Act.relu),
        Linear(_w(rng, 3, 3), _v(rng, 3)),
    ],
}

TRAINABLE: dict[type, tuple[str, ...]] = {Linear: ("w", "b"), LinearNoBias: ("w",), Batchnorm1d: ("gamma", "beta")}


def batch(rng: np.random.Generator, n: int = 6, features: int = 3, classes: int = 3) -> tuple[F, lb.Matrix]:
    x = rng.standard_normal((n, features)) * 2.0 + 0.5
    return x, lb.matrix(np.eye(classes)[rng.integers(0, classes, n)])


def param_grads(g: Gradients) -> dict[str, F]:
    """The gradient of each trainable field, by the layer's field name."""
    match g:
        case LinearGradients(dw=dw, db=db):
            return {"w": dw.array, "b": db.array}
        case LinearNoBiasGradients(dw=dw):
            return {"w": dw.array}
        case BN1(dgamma=dgamma, dbeta=dbeta):
            return {"gamma": dgamma.array, "beta": dbeta.array}
        case NoGrad():
            return {}
        case _:
            assert_never(g)


def with_param(layers: list[Layer], i: int, name: str, value: F) -> list[Layer]:
    """The network with field ``name`` of layer ``i`` replaced (the frozen layer is rebuilt)."""
    arr: lb.Manifest[Any] = lb.matrix(value) if value.ndim == 2 else lb.vector(value)
    changes: dict[str, Any] = {name: arr}
    return [replace(layer, **changes) if k == i else layer for k, layer in enumerate(layers)]


def loss(layers: list[Layer], x: F, tgt: lb.Matrix, key: int) -> float:
    """The mean cross-entropy of the TRAINING pass (batch statistics, the key's dropout masks)."""
    return cross_entropy(_pass(lb.matrix(x), tgt, layers, key)[1], tgt)


def fd(f: Callable[[F], float], at: F) -> F:
    g = np.empty_like(at)
    for idx in np.ndindex(*at.shape):
        plus, minus = at.copy(), at.copy()
        plus[idx] += FD_STEP
        minus[idx] -= FD_STEP
        g[idx] = (f(plus) - f(minus)) / (plus[idx] - minus[idx])
    return g


def rel_err(got: F, want: F) -> float:
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-8))


# ---------------------------------------------------------------------------------------------
# Gradients of the whole network


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(NETS))
def test_pass_gradients_match_finite_differences(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers = NETS[name](rng)
    x, tgt = batch(rng)
    key = 7 + seed
    dx, pred, grads = _pass(lb.matrix(x), tgt, layers, key)
    assert len(grads) == len(layers)
    assert pred.shape == tgt.shape and dx.shape == x.shape
    assert rel_err(dx.array, fd(lambda v: loss(layers, v, tgt, key), x)) < FD_RTOL
    checked = 0
    for i, (layer, g) in enumerate(zip(layers, grads)):
        got = param_grads(g)
        assert set(got) == set(TRAINABLE.get(type(layer), ()))
        for field, grad in got.items():
            p = np.asarray(getattr(layer, field).array)
            want = fd(lambda v: loss(with_param(layers, i, field, v), x, tgt, key), p)
            assert rel_err(grad, want) < FD_RTOL, f"layer {i} {type(layer).__name__}.{field}"
            checked += 1
    assert checked == sum(len(TRAINABLE.get(type(la), ())) for la in layers)


def test_training_ignores_the_running_statistics() -> None:
    """mu and var are inference state: the training pass does not read them."""
    rng = np.random.default_rng(3)
    layers = NETS["sigmoid-identity-two-bn"](rng)
    x, tgt = batch(rng)
    _, pred, _ = _pass(lb.matrix(x), tgt, layers, 1)
    other = with_param(with_param(layers, 1, "mu", rng.standard_normal(4) * 10), 1, "var", rng.uniform(0, 9, 4))
    np.testing.assert_array_equal(_pass(lb.matrix(x), tgt, other, 1)[1].array, pred.array)


# ---------------------------------------------------------------------------------------------
# Dropout: keys, determinism, inverted scaling


def _flatten(out: tuple[lb.Matrix, lb.Matrix, list[Gradients]]) -> list[F]:
    dx, pred, grads = out
    return [dx.array, pred.array, *(a for g in grads for a in param_grads(g).values())]


def test_pass_is_deterministic_for_a_key_and_keys_change_the_masks() -> None:
    rng = np.random.default_rng(4)
    layers = NETS["linear-bn-relu-dropout-tanh"](rng)
    x, tgt = batch(rng, n=32)
    first = _flatten(_pass(lb.matrix(x), tgt, layers, key=11))
    again = _flatten(_pass(lb.matrix(x), tgt, layers, key=11))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = _flatten(_pass(lb.matrix(x), tgt, layers, key=12))
    assert not np.array_equal(first[1], other[1])  # another key, other dropout masks


def _dropout_output_stats(p: float, key: int, shape: tuple[int, int]) -> tuple[F, F]:
    """Column means and biased variances of Dropout(p) applied to ones: read exactly from the
    batch statistics of a batch-norm layer placed right after it."""
    n, c = shape
    bn = Batchnorm1d(lb.zeros(c, np.float64), lb.ones(c, np.float64), lb.ones(c, np.float64), lb.zeros(c, np.float64))
    tgt = lb.matrix(np.eye(c)[np.arange(n) % c])
    g = _pass(lb.matrix(np.ones(shape)), tgt, [Dropout(p), bn], key)[2][1]
    assert isinstance(g, BN1)
    return g.batch_mu.array, g.batch_var.array


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_is_inverted_and_keeps_the_expected_output(p: float) -> None:
    n, c = 2000, 50
    mean, var = _dropout_output_stats(p, 5, (n, c))
    # every output is 0 or 1/(1-p): a column with kept fraction q has mean q/(1-p) and variance
    # q (1-q) / (1-p)^2
    s = 1.0 / (1.0 - p)
    q = mean / s
    np.testing.assert_allclose(var, q * (1 - q) * s * s, rtol=1e-9, atol=1e-12)
    # E[output] = 1: the overall mean is within 5 standard errors of it
    assert abs(float(mean.mean()) - 1.0) < 5 * np.sqrt(p / (1 - p) / (n * c))
    # the kept fraction is 1 - p within 5 standard errors
    assert abs(float(q.mean()) - (1 - p)) < 5 * np.sqrt(p * (1 - p) / (n * c))
    again, _ = _dropout_output_stats(p, 5, (n, c))
    np.testing.assert_array_equal(again, mean)
    other, _ = _dropout_output_stats(p, 6, (n, c))
    assert not np.array_equal(other, mean)


def test_dropout_without_a_key_is_a_value_range_error() -> None:
    rng = np.random.default_rng(5)
    x, tgt = batch(rng)
    with pytest.raises(lb.ValueRangeError, match="key"):
        _pass(lb.matrix(x), tgt, [Dropout(0.5), LinearNoBias(_w(rng, 3, 3))])
    with pytest.raises(lb.ValueRangeError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_dropout_of_zero_and_dropout_at_inference_are_the_identity() -> None:
    rng = np.random.default_rng(6)
    layers = NETS["bn-on-the-input"](rng)
    without = [la for la in layers if not isinstance(la, Dropout)]
    x, tgt = batch(rng)
    zero_p = [Dropout(0.0) if isinstance(la, Dropout) else la for la in layers]
    for a, b in zip(_flatten(_pass(lb.matrix(x), tgt, zero_p, 1)), _flatten(_pass(lb.matrix(x), tgt, without, 1)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(forward(layers, lb.matrix(x)).array, forward(without, lb.matrix(x)).array)


# ---------------------------------------------------------------------------------------------
# Softmax, inference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_is_stable_for_huge_logits(dtype: type[np.floating[Any]]) -> None:
    rng = np.random.default_rng(7)
    z = rng.choice([-1e4, 1e4, 0.0, 9999.0], size=(8, 5)).astype(dtype)
    probs = forward([], lb.matrix(z)).array
    assert probs.dtype == dtype
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6 if dtype == np.float32 else 1e-14)
    np.testing.assert_array_equal(probs.argmax(axis=1), z.argmax(axis=1))
    tgt = lb.matrix(np.eye(5, dtype=dtype)[rng.integers(0, 5, 8)])
    dx, pred, grads = _pass(lb.matrix(z), tgt, [])
    np.testing.assert_array_equal(pred.array, probs)
    assert np.isfinite(dx.array).all() and grads == []
    assert np.isfinite(cross_entropy(pred, tgt))


@pytest.mark.parametrize("name", list(NETS))
def test_forward_matches_a_numpy_reference_of_inference(name: str) -> None:
    rng = np.random.default_rng(8)
    layers = NETS[name](rng)
    x = rng.standard_normal((7, 3)) * 3
    want_logits, want = numpy_inference(layers, x)
    np.testing.assert_allclose(logits(layers, lb.matrix(x)).array, want_logits, rtol=1e-12, atol=1e-13)
    got = forward(layers, lb.matrix(x)).array
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    # rows are independent at inference (running statistics, no dropout): a batch of one works
    # (to rounding: BLAS multiplies one row with another kernel than seven)
    np.testing.assert_allclose(forward(layers, lb.matrix(x[2:3])).array[0], got[2], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Errors


def test_wrong_target_shapes_are_shape_errors() -> None:
    rng = np.random.default_rng(9)
    layers = NETS["bn-on-the-input"](rng)
    x, tgt = batch(rng)
    with pytest.raises(lb.ShapeError, match="one row per sample") as rows_err:
        _pass(lb.matrix(x), lb.matrix(np.eye(3)[[0, 1, 2, 0, 1]]), layers, 1)
    assert rows_err.value.left == (6, 3) and rows_err.value.right == (5, 3)
    with pytest.raises(lb.ShapeError, match="one column per class") as cols_err:
        _pass(lb.matrix(x), lb.matrix(np.eye(4)[[0, 1, 2, 3, 0, 1]]), layers, 1)
    assert cols_err.value.left == (6, 3) and cols_err.value.right == (6, 4)


def test_rank_errors() -> None:
    rng = np.random.default_rng(10)
    layers = NETS["linear-bn-relu-dropout-tanh"](rng)
    x, tgt = batch(rng)
    with pytest.raises(lb.RankError, match="must be matrices"):
        _pass(lb.vector(x[0]), tgt, layers, 1)  # type: ignore[arg-type]
    with pytest.raises(lb.RankError, match="must be matrices"):
        _pass(lb.matrix(x), lb.vector(np.ones(6)), layers, 1)  # type: ignore[arg-type]
    with pytest.raises(lb.RankError, match="must be a matrix"):
        forward(layers, lb.vector(x[0]))  # type: ignore[arg-type]
    with pytest.raises(lb.RankError, match="expected a matrix"):
        Linear(w=lb.vector(np.ones(3)), b=lb.vector(np.ones(3)))  # type: ignore[arg-type]
    with pytest.raises(lb.RankError, match="expected a vector"):
        Linear(w=lb.matrix(np.ones((3, 2))), b=lb.matrix(np.ones((1, 2))))  # type: ignore[arg-type]
    with pytest.raises(lb.ShapeError, match=r"layer 0 \(LinearNoBias\) takes 4 features, the input has 3"):
        _pass(lb.matrix(x), tgt, [LinearNoBias(_w(rng, 4, 3))], 1)
    with pytest.raises(lb.ShapeError, match=r"layer 1 \(LinearNoBias\) takes 4 features, the layers before it give 3"):
        _pass(lb.matrix(x), tgt, [LinearNoBias(_w(rng, 3, 3)), LinearNoBias(_w(rng, 4, 3))], 1)


def test_an_empty_batch_is_a_clear_error_or_an_empty_result() -> None:
    x = lb.matrix(np.zeros((0, 3)))
    tgt = lb.matrix(np.zeros((0, 3)))
    try:
        dx, pred, _ = _pass(x, tgt, [Activation(Act.relu)])
    except lb.LazybnError:
        return
    assert dx.shape == (0, 3) and pred.shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# Examples cannot go stale


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(path)])  # as `python examples/NAME.py` (not pytest's arguments)
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out  # every example shows its result


def test_train_epoch_batches_own_their_rows_and_match_train_step() -> None:
    from lazybn.optim import init_state
    from lazybn.train import _rows, batches, train_epoch, train_step

    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)]
    for idx in (np.array([3, 1, 2]), np.arange(4)):
        got = _rows(x, idx, lb.Comp.Seq)
        assert not np.shares_memory(got.array, x) and not got.array.flags.writeable
        np.testing.assert_array_equal(got.array, x[idx])
    net = lb.mlp((4, 5, 3), batchnorm=True, seed=0)
    opt = lb.SGD(0.1)
    layers, state, _ = train_epoch(net, opt, init_state(opt, net), x, y, 4, None)
    want_layers, want_state = list(net), init_state(opt, net)
    for idx in batches(10, 4, None):
        r = train_step(want_layers, opt, want_state, lb.matrix(x[idx]), lb.matrix(y[idx]), key=want_state.step)
        want_layers, want_state = r.layers, r.opt_state
    for a, b in zip(layers, want_layers):
        for f in ("w", "gamma", "beta", "mu", "var"):
            if hasattr(a, f):
                np.testing.assert_array_equal(getattr(a, f).array, getattr(b, f).array)


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 12), k=st.integers(2, 6),
       zeros=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy_matches_numpy(dtype: type, n: int, k: int, zeros: bool, seed: int) -> None:
    """The loss kernel against plain numpy: -mean(log(p of the true class)), a zero probability
    clamped at the dtype's smallest normal number."""
    rng = np.random.default_rng(seed)
    p: F = rng.random((n, k)).astype(dtype)
    labels = rng.integers(0, k, n)
    if zeros:
        p[np.arange(n), labels] = 0.0
    t: F = np.eye(k, dtype=dtype)[labels]
    picked = p[np.arange(n), labels].astype(np.float64)
    want = -np.mean(np.log(np.maximum(picked, np.finfo(dtype).tiny)))
    got = cross_entropy(lb.matrix(p), lb.matrix(t))
    assert got == pytest.approx(want, rel=4 * float(np.finfo(dtype).eps))


@pytest.mark.parametrize(("values", "want"), [
    ([-1.0, np.nan, -2.0], math.nan), ([-np.inf, -1.0], math.inf), ([np.inf, -np.inf], math.nan),
    ([-3e38, -3e38, -3e38], 3e38), ([], math.nan)])
def test_the_mean_loss_of_non_finite_or_empty_log_likelihoods(values: list[float], want: float) -> None:
    """NaN and infinity come out of the mean as IEEE arithmetic says (the step checks for them)."""
    from lazybn.network import mean_loss

    got = mean_loss(lb.vector(np.array(values, np.float32)))
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e300, 0.0) | st.sampled_from([-1.0, -1e-16, -3e-17]), min_size=1, max_size=30))
def test_the_mean_loss_is_the_exactly_rounded_sum_divided_once(values: list[float]) -> None:
    """The mean loss is the exact sum of the log-likelihoods (rational arithmetic), rounded once,
    divided by n: one sample of loss 1 and ten of 1e-16 lose nothing (a float sum drops the ten)."""
    from fractions import Fraction

    from lazybn.network import mean_loss

    for vs in (values, [-1.0] + [-1e-16] * 10):
        exact = sum((Fraction(v) for v in vs), Fraction(0))
        assert mean_loss(lb.vector(np.array(vs, np.float64))) == -float(exact) / len(vs)


def _overflowing_batch() -> tuple[list[Layer], lb.Matrix, lb.Matrix]:
    """A finite float32 batch whose first batch-norm layer's variance overflows to infinity."""
    net = lb.mlp((4, 3, 2), batchnorm=True, seed=0)
    x = np.array([[1e30, -1e30, 1e30, -1e30], [-1e30, 1e30, -1e30, 1e30], [1, 2, 3, 4]], np.float32)
    return net, lb.matrix(x), lb.matrix(np.eye(2, dtype=np.float32)[[0, 1, 0]])


def test_a_step_with_non_finite_batch_statistics_names_the_layer_and_applies_nothing() -> None:
    from lazybn.optim import init_state
    from lazybn.errors import NumericalError
    from lazybn.train import train_step

    net, x, y = _overflowing_batch()
    bn = next(i for i, layer in enumerate(net) if isinstance(layer, Batchnorm1d))
    opt = lb.SGD(0.1)
    state = init_state(opt, net)
    before = [np.array(getattr(layer, f).array) for layer in net for f in ("w", "mu", "var", "gamma", "beta")
              if hasattr(layer, f)]
    with pytest.raises(NumericalError, match=rf"training step 0: layer {bn} \(Batchnorm1d\) has a non-finite "
                                             "batch_var"):
        train_step(net, opt, state, x, y)
    after = [getattr(layer, f).array for layer in net for f in ("w", "mu", "var", "gamma", "beta") if hasattr(layer, f)]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    skipped = train_step(net, opt, state, x, y, on_nonfinite="skip")
    assert skipped.skipped and skipped.opt_state is state and skipped.layers == net
    # a finite batch afterwards trains as if nothing had happened (the same as on a fresh network)
    fine = lb.matrix(np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32))
    got = train_step(net, opt, state, fine, y)
    want = train_step(lb.mlp((4, 3, 2), batchnorm=True, seed=0), opt, init_state(opt, net), fine, y)
    assert not got.skipped and got.opt_state.step == 1 and got.loss == want.loss
    for la, lw in zip(got.layers, want.layers):
        for f in ("w", "mu", "var", "gamma", "beta"):
            if hasattr(la, f):
                np.testing.assert_array_equal(getattr(la, f).array, getattr(lw, f).array)


def test_what_is_named_first_is_a_batch_statistic_then_the_loss_then_a_gradient() -> None:
    """Logits beyond float32 make the loss and dw NaN: gradients() names the loss, the cause, not
    the gradient it spoils; a batch statistic comes before both, wherever its layer is."""
    from lazybn.network import first_nonfinite

    net: list[Layer] = [LinearNoBias(lb.matrix(np.full((2, 2), 3e38), np.float32))]
    x, tgt = lb.matrix(np.full((2, 2), 10.0), np.float32), lb.matrix(np.eye(2), np.float32)
    with pytest.raises(lb.NumericalError, match=r"^gradients: the loss is nan$"):
        lb.gradients(net, x, tgt)
    grads = [(0, "LinearNoBias", "dw"), (1, "Batchnorm1d", "dgamma")]
    assert first_nonfinite(math.nan, [*grads, (1, "Batchnorm1d", "batch_mu")]) == \
        "layer 1 (Batchnorm1d) has a non-finite batch_mu"
    assert first_nonfinite(math.inf, grads) == "the loss is inf"
    assert first_nonfinite(1.0, grads) == "layer 0 (LinearNoBias) has a non-finite dw"
    assert first_nonfinite(1.0, []) is None


def test_a_product_that_overflows_is_one_clear_error_without_numpy_warnings() -> None:
    import warnings

    from lazybn.optim import init_state
    from lazybn.errors import NumericalError
    from lazybn.train import train_step

    f32 = np.float32
    net: list[Layer] = [Linear(lb.matrix(np.full((2, 3), 3e38, f32)), lb.vector(np.zeros(3, f32)))]
    x, y = lb.matrix(np.ones((4, 2), f32)), lb.matrix(np.eye(3, dtype=f32)[[0, 1, 2, 0]])
    opt = lb.SGD(0.1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(NumericalError, match="training step 0: the loss is nan"):
            train_step(net, opt, init_state(opt, net), x, y)
        assert train_step(net, opt, init_state(opt, net), x, y, on_nonfinite="skip").skipped
    assert [str(w.message) for w in seen] == []  # not "overflow encountered in matmul" before the error


def test_the_step_loss_is_the_cross_entropy_of_its_prediction() -> None:
    from lazybn.optim import init_state
    from lazybn.train import train_step

    rng = np.random.default_rng(5)
    net = lb.mlp((4, 6, 3), batchnorm=True, seed=2)
    x = lb.matrix(rng.standard_normal((7, 4)).astype(np.float32))
    labels = rng.integers(0, 3, 7)
    y = lb.matrix(np.eye(3, dtype=np.float32)[labels])
    opt = lb.SGD(0.1)
    for _ in range(3):  # the trace, then replays
        r = train_step(net, opt, init_state(opt, net), x, y)
        p = r.pred.array.astype(np.float64)[np.arange(7), labels]
        assert r.loss == pytest.approx(-np.mean(np.log(p)), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), shuffle=st.booleans())
def test_batches_cover_every_sample_once_and_never_leave_a_last_batch_of_one(n: int, batch_size: int,
                                                                             shuffle: bool) -> None:
    from lazybn.train import batches

    got = list(batches(n, batch_size, np.random.default_rng(0) if shuffle else None))
    assert sorted(np.concatenate(got).tolist()) == list(range(n))
    sizes = [len(b) for b in got]
    assert all(s == batch_size for s in sizes[:-1])
    if n > 1 and batch_size > 1:
        assert sizes[-1] >= 2, "a trailing sample must join the batch before it"
    if n % batch_size == 1 and n > 1:
        assert sizes[-1] == batch_size + 1


def test_batches_and_train_epoch_refuse_bad_arguments_when_called() -> None:
    """Not at the first batch or after the first step: a generator would check nothing until then,
    and -1 samples would give no batch at all."""
    from lazybn.train import batches

    cases: list[tuple[Any, Any]] = [(-1, 2), (2.5, 2), (True, 2), (10, 0)]
    for n, size in cases:
        with pytest.raises(lb.ValueRangeError, match="n \\(the number of samples\\)|batch_size"):
            batches(n, size, None)  # no next(): the call itself refuses
    assert [b.tolist() for b in batches(0, 3, None)] == []
    net = lb.mlp([4, 3], batchnorm=False, seed=0)
    opt = lb.SGD(0.1)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    with pytest.raises(lb.ArgumentError, match="train_epoch.progress: must be a function"):
        lb.train_epoch(net, opt, lb.init_state(opt, net), x, y, 2, None, progress=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(NETS))
def test_layers_that_do_not_train_get_no_gradient_and_change_no_other(name: str) -> None:
    # trainable=False: the layer's gradients are empty and nothing else changes, bit for bit; with
    # no input gradient asked for, no layer before the first that trains computes one either
    rng = np.random.default_rng(3)
    layers = NETS[name](rng)
    x, tgt = batch(rng)
    dx, pred, grads = _pass(lb.matrix(x), tgt, layers, 5)
    for frozen in ([0], [0, 1], [i for i, layer in enumerate(layers) if hasattr(layer, "trainable")][:-1]):
        fixed = [replace(layer, trainable=False) if i in frozen and isinstance(layer, (Linear, LinearNoBias, Batchnorm1d))
                 else layer for i, layer in enumerate(layers)]
        dx2, pred2, grads2 = _pass(lb.matrix(x), tgt, fixed, 5)
        assert pred2.array.tobytes() == pred.array.tobytes() and dx2.array.tobytes() == dx.array.tobytes()
        for i, (g, g2) in enumerate(zip(grads, grads2)):
            for f, a in param_grads(g).items():
                b = param_grads(g2)[f]
                assert b.size == 0 if i in frozen and hasattr(layers[i], "trainable") else b.tobytes() == a.tobytes()
        _, _, grads3 = _pass(lb.matrix(x), tgt, fixed, 5, input_grad=False)
        first = min(i for i, layer in enumerate(fixed) if getattr(layer, "trainable", False))
        for i, (g, g3) in enumerate(zip(grads, grads3)):
            for f, a in param_grads(g).items():
                assert param_grads(g3)[f].size == 0 if i < first else param_grads(g3)[f].tobytes() == a.tobytes()


def _softmax_rows(z: F) -> F:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: F = e / e.sum(axis=1, keepdims=True)
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 3), batch_size=st.integers(2, 6),
       features=st.integers(1, 4), classes=st.integers(2, 4), lr=st.floats(1e-3, 1.0),
       lr_scale=st.floats(0.0, 2.0), beta=st.none() | st.floats(0.0, 0.95))
def test_train_epoch_and_train_step_step_by_the_learning_rate_times_lr_scale(
        seed: int, steps: int, batch_size: int, features: int, classes: int, lr: float, lr_scale: float,
        beta: float | None) -> None:
    """Softmax regression (one Linear layer, float64) trained in plain numpy: every step moves w
    and b by -lr * lr_scale times the gradient of the batch's mean cross-entropy (SGD) or times
    the momentum buffer, beta * buffer + gradient (Momentum). ``train_epoch`` over consecutive
    batches and a loop of ``train_step`` give the numpy weights, and the epoch's loss is the mean
    of the batches' losses before their steps."""
    rng = np.random.default_rng(seed)
    n = steps * batch_size
    x = rng.normal(size=(n, features)) * 2.0
    labels = rng.integers(0, classes, n)
    t = np.eye(classes)[labels]
    w0, b0 = rng.normal(size=(features, classes)), rng.normal(size=classes)
    opt: lb.Optimizer = lb.SGD(lr) if beta is None else lb.Momentum(lr, beta=beta)
    w, b, vw, vb = w0.copy(), b0.copy(), np.zeros_like(w0), np.zeros_like(b0)
    losses = []
    for k in range(steps):
        rows = slice(k * batch_size, (k + 1) * batch_size)
        p = _softmax_rows(x[rows] @ w + b)
        losses.append(-np.mean(np.log(p[np.arange(batch_size), labels[rows]])))
        dz = (p - t[rows]) / batch_size
        gw, gb = x[rows].T @ dz, dz.sum(axis=0)
        if beta is not None:
            vw, vb = beta * vw + gw, beta * vb + gb
            gw, gb = vw, vb
        w, b = w - lr * lr_scale * gw, b - lr * lr_scale * gb
    start: list[Layer] = [Linear(lb.matrix(w0), lb.vector(b0))]
    epoch, state, loss = lb.train_epoch(start, opt, lb.init_state(opt, start), x, t, batch_size, None,
                                        lr_scale=lr_scale)
    assert state.step == steps
    assert loss == pytest.approx(float(np.mean(losses)), rel=1e-10)
    looped, looped_state = start, lb.init_state(opt, start)
    for k in range(steps):
        rows = slice(k * batch_size, (k + 1) * batch_size)
        r = lb.train_step(looped, opt, looped_state, lb.matrix(x[rows]), lb.matrix(t[rows]), lr_scale=lr_scale)
        looped, looped_state = r.layers, r.opt_state
    for got in (epoch, looped):
        layer = got[0]
        assert isinstance(layer, Linear)
        np.testing.assert_allclose(layer.w.array, w, rtol=1e-10, atol=1e-12 * (1.0 + float(np.abs(w).max())))
        np.testing.assert_allclose(layer.b.array, b, rtol=1e-10, atol=1e-12 * (1.0 + float(np.abs(b).max())))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), batch_size=st.integers(1, 16),
       classes=st.integers(2, 5), batchnorm=st.booleans())
def test_accuracy_is_the_fraction_of_rows_whose_largest_logit_is_the_label(seed: int, n: int, batch_size: int,
                                                                           classes: int, batchnorm: bool) -> None:
    """Every sample counts once, whatever the batch size (a short last batch included): the
    arg-max of each row of numpy's inference of the same network, compared with the labels."""
    rng = np.random.default_rng(seed)
    layers = lb.mlp((3, 5, classes), batchnorm=batchnorm, seed=seed % 1000, dtype=np.float64)
    x = rng.normal(size=(n, 3)) * 2.0 + 0.5
    labels = rng.integers(0, classes, n)
    want_logits, _ = numpy_inference(layers, x)
    hits = np.argmax(want_logits, axis=1) == labels
    top2 = np.sort(want_logits, axis=1)[:, -2:]
    unclear = int(np.sum(top2[:, 1] - top2[:, 0] <= 1e-9 * (1.0 + float(np.abs(want_logits).max()))))
    got = lb.accuracy(layers, x, labels, batch_size=batch_size)
    assert abs(got * n - float(hits.sum())) <= unclear + 1e-9, (got, hits.mean())


def test_every_step_of_an_epoch_draws_its_own_dropout_masks() -> None:
    """The same batch at every step of an epoch (and nothing learning: lr_scale 0) still gives a
    loss of its own at each step, as each step's dropout masks are new; the epoch is repeatable
    for its key, and another key gives other masks."""
    rng = np.random.default_rng(12)
    rows = rng.normal(size=(4, 8))
    x, y = np.tile(rows, (5, 1)), np.eye(3)[np.tile([0, 1, 2, 0], 5)]
    layers: list[Layer] = [Dropout(0.5), Linear(_w(rng, 8, 3), _v(rng, 3))]
    opt = lb.SGD(0.1)

    def losses(key: int) -> list[float]:
        seen: list[float] = []
        lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, y, 4, None, key=key, lr_scale=0.0,
                       progress=seen.append)
        return seen

    first = losses(3)
    assert len(first) == 5
    assert len(set(first)) == 5, first  # five steps, five masks
    assert losses(3) == first
    assert losses(4) != first


def test_inference_traces_once_and_a_changing_count_or_bound_traces_nothing_new() -> None:
    """``logits`` replays its layers: the same network again, its retrained self with another
    cumulative count, and new renormalisation bounds trace nothing new; the logits are the numpy
    oracle's."""
    rng = np.random.default_rng(2)
    layers = [replace(la, momentum=None, renorm=lb.Renorm(2.0, 1.0)) if isinstance(la, Batchnorm1d) else la
              for la in lb.mlp((7, 13, 5), batchnorm=True, seed=3, dtype=np.float64)]  # shapes no other test uses
    x = rng.normal(size=(9, 7))
    logits(layers, lb.matrix(x))
    before = lb.fuse.stats().traces
    opt = lb.SGD(0.1)
    state = lb.init_state(opt, layers)
    for bounds in (lb.Renorm(2.5, 1.5), lb.Renorm(3.0, 2.0)):
        step = lb.train_step(layers, opt, state, lb.matrix(x), lb.matrix(np.eye(5)[rng.integers(0, 5, 9)]))
        layers = [replace(la, renorm=bounds) if isinstance(la, Batchnorm1d) else la for la in step.layers]
        state = step.opt_state
        traces, replays = lb.fuse.stats().traces, lb.fuse.stats().replays
        got = logits(layers, lb.matrix(x)).array
        assert lb.fuse.stats().traces == traces, "inference traced again"
        assert lb.fuse.stats().replays == replays + 1, "inference is not one replay"  # not merely untraced
        np.testing.assert_allclose(got, numpy_inference(layers, x)[0], rtol=1e-12, atol=1e-12)
    assert any(isinstance(la, Batchnorm1d) and la.tracked == 2 for la in layers)
    assert lb.fuse.stats().traces > before  # the training steps did trace: the counter counts


def test_max_steps_takes_that_many_steps_and_refuses_what_is_no_count() -> None:
    rng = np.random.default_rng(8)
    net = lb.mlp((3, 4, 2), batchnorm=True, seed=0)
    x, y = rng.normal(size=(10, 3)).astype(np.float32), lb.one_hot(rng.integers(0, 2, 10), 2)
    opt = lb.SGD(0.1)
    state = lb.init_state(opt, net)
    for steps, want in ((0, 0), (2, 2), (99, 5), (None, 5)):
        assert lb.train_epoch(net, opt, state, x, y, 2, None, max_steps=steps)[1].step == want
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(lb.ValueRangeError, match=rf"train_epoch.max_steps: must be an integer >= 0 or None "
                                                     rf"\(every batch\), got {bad!r}"):
            lb.train_epoch(net, opt, state, x, y, 2, None, max_steps=bad)  # type: ignore[arg-type]


def test_a_key_that_is_not_a_seed_is_refused_as_given() -> None:
    """The key the caller gave is named, not the per-step key made from it."""
    rng = np.random.default_rng(8)
    net = lb.mlp((3, 4, 2), batchnorm=True, dropout=0.5, seed=0)
    x, y = rng.normal(size=(10, 3)).astype(np.float32), lb.one_hot(rng.integers(0, 2, 10), 2)
    opt = lb.SGD(0.1)
    state = lb.init_state(opt, net)
    for bad in (-1, True, 1.0, "3"):
        with pytest.raises(lb.ValueRangeError, match=rf"train_epoch: key must be an integer >= 0 \(the dropout masks' "
                                                     rf"seed\), got {re.escape(repr(bad))}"):
            lb.train_epoch(net, opt, state, x, y, 2, None, key=bad)  # type: ignore[arg-type]
    assert lb.train_epoch(net, opt, state, x, y, 2, None, key=3)[1].step == 5


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), spread=st.sampled_from([1.0, 50.0, 300.0, 3000.0]),
       soft=st.booleans(), seed=st.integers(0, 2**16))
def test_the_step_loss_is_the_cross_entropy_of_the_logits_however_wrong_the_prediction(
        dtype: type, spread: float, soft: bool, seed: int) -> None:
    """The loss against a float64 log-softmax of the logits: a sample whose target's probability
    underflows counts with its whole loss (from log(p + tiny) it stopped at -log(tiny): 87.3 in
    float32, 708 in float64)."""
    from lazybn.optim import init_state
    from lazybn.train import train_step

    rng = np.random.default_rng(seed)
    w: F = (rng.standard_normal((4, 3)) * spread).astype(dtype)
    b: F = rng.standard_normal(3).astype(dtype)
    net: list[Layer] = [Linear(lb.matrix(w), lb.vector(b))]
    x: F = rng.standard_normal((6, 4)).astype(dtype)
    t = rng.dirichlet(np.ones(3), 6) if soft else np.eye(3)[rng.integers(0, 3, 6)]
    z = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    log_softmax = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    tgt = lb.matrix(t.astype(dtype))
    want = float(-np.mean(np.sum(tgt.array.astype(np.float64) * log_softmax, axis=1)))
    rel = 1e-5 if dtype == np.float32 else 1e-12
    opt = lb.SGD(1e-30)  # a step that changes nothing, whatever the gradient
    for _ in range(2):  # the trace, then a replay
        assert lb.gradients(net, lb.matrix(x), tgt).loss == pytest.approx(want, rel=rel)
        assert train_step(net, opt, init_state(opt, net), lb.matrix(x), tgt).loss == pytest.approx(want, rel=rel)


def test_a_confidently_wrong_sample_counts_with_its_whole_loss() -> None:
    from lazybn.optim import init_state
    from lazybn.train import train_step

    for dtype, gap in ((np.float32, 200.0), (np.float64, 1000.0)):
        net: list[Layer] = [LinearNoBias(lb.matrix(np.array([[gap, 0.0], [0.0, 0.0]], dtype)))]
        x, y = lb.matrix(np.array([[1.0, 0.0], [0.0, 1.0]], dtype)), lb.matrix(np.array([[0.0, 1.0], [1.0, 0.0]], dtype))
        want = (gap + math.log(2.0)) / 2  # the first sample's -log p is gap (to rounding), the second's log 2
        opt = lb.SGD(0.1)
        assert lb.gradients(net, x, y).loss == pytest.approx(want, rel=1e-7)
        assert train_step(net, opt, init_state(opt, net), x, y).loss == pytest.approx(want, rel=1e-7)


def test_finite_gradients_whose_sum_overflows_are_not_refused() -> None:
    """gradients() finds NaN/inf through a sum, which can overflow where every entry is finite:
    float32 entries of dx of 1.5e38 sum to 9e38. They are returned as the numpy oracle's."""
    w = np.zeros((3, 3))
    w[:, 0], w[:, 1] = 2e38, -1e38  # every sample predicts class 0 (logit 6e8) and is of class 1
    x, tgt = np.full((2, 3), 1e-30), np.eye(3)[[1, 1]]
    net: list[Layer] = [LinearNoBias(lb.matrix(w, np.float32))]
    r = lb.gradients(net, lb.matrix(x, np.float32), lb.matrix(tgt, np.float32), input_grad=True)
    z = x @ w
    p = np.exp(z - z.max(axis=1, keepdims=True))
    want = (p / p.sum(axis=1, keepdims=True) - tgt) / 2 @ w.T
    with np.errstate(over="ignore"):
        assert np.isfinite(want.astype(np.float32)).all() and not np.isfinite(want.astype(np.float32).sum())
    np.testing.assert_allclose(r.dx.array, want, rtol=1e-6)
    assert r.loss == pytest.approx(9e8, rel=1e-6)


def test_an_input_gradient_beyond_the_float_range_is_named_when_asked_for() -> None:
    """Weights of +-3e38 make dx = w[:, 0] - w[:, 1] = 6e38, beyond float32 (numpy agrees), while
    the loss and dw stay finite: gradients() with input_grad=True names dx; without, it passes."""
    w = np.zeros((2, 2))
    w[:, 0], w[:, 1] = 3e38, -3e38  # the sample predicts class 0 and is of class 1
    x, tgt = np.full((1, 2), 1e-30), np.eye(2)[[1]]
    z = x @ w
    with np.errstate(over="ignore"):
        assert not np.isfinite(((np.exp(z - z.max()) / np.exp(z - z.max()).sum() - tgt) @ w.T).astype(np.float32)).all()
    net: list[Layer] = [LinearNoBias(lb.matrix(w, np.float32))]
    xs, ts = lb.matrix(x, np.float32), lb.matrix(tgt, np.float32)
    with pytest.raises(lb.NumericalError, match="the input gradient dx is not finite"):
        lb.gradients(net, xs, ts, input_grad=True)
    assert lb.gradients(net, xs, ts).loss == pytest.approx(12e8, rel=1e-6)


FIRST_BN: dict[str, Callable[[Batchnorm1d], Batchnorm1d]] = {
    "plain": lambda bn: bn, "renorm": lambda bn: replace(bn, renorm=lb.Renorm(1.5, 0.5)),
    "ghost": lambda bn: replace(bn, ghost_batch=3), "frozen": lambda bn: replace(bn, frozen=True),
}


@pytest.mark.parametrize("name", [*(n for n in NETS if n != "bn-on-the-input"),
                                  *(f"bn-on-the-input/{first}" for first in FIRST_BN)])
def test_no_input_gradient_is_computed_unless_asked_for(name: str) -> None:
    """input_grad=False: a first linear or batch-norm layer (in each of its variants) computes no
    dx (the empty (0, 0) matrix), and the parameter gradients are those of input_grad=True bit for
    bit. (A frozen layer's dgamma and dbeta, without dx, come from a pass that only sums, which
    adds its rows in pairs: they may differ in the last bit.)"""
    rng = np.random.default_rng(4)
    net, _, first = name.partition("/")
    layers = NETS[net](rng)
    if first:
        assert isinstance(layers[0], Batchnorm1d)
        layers[0] = FIRST_BN[first](layers[0])
    x, tgt = batch(rng)
    dx, _, grads = _pass(lb.matrix(x), tgt, layers, 5)
    none, _, grads2 = _pass(lb.matrix(x), tgt, layers, 5, input_grad=False)
    assert dx.shape == x.shape and none.shape == (0, 0)
    for g, g2 in zip(grads, grads2):
        for f, a in param_grads(g).items():
            if first == "frozen":
                np.testing.assert_allclose(param_grads(g2)[f], a, rtol=4 * float(np.finfo(a.dtype).eps), atol=0)
            else:
                assert param_grads(g2)[f].tobytes() == a.tobytes()


@pytest.mark.parametrize("kind", ["Linear", "LinearNoBias", "Batchnorm1d"])
@pytest.mark.parametrize("wrong", ["width", "dtype"])
def test_a_later_layer_that_does_not_fit_the_layers_before_it_is_named(kind: str, wrong: str) -> None:
    """Training, inference and accuracy name the layer that does not take what the layers before
    it give (the number of features, or the dtype), not the operation inside it that fails."""
    from lazybn.optim import init_state
    from lazybn.train import train_step

    f32 = np.float32
    width, dtype = (4, f32) if wrong == "width" else (3, np.float64)
    bad: Layer = (Linear(lb.matrix(np.ones((width, 2)), dtype), lb.vector(np.zeros(2), dtype)) if kind == "Linear"
                  else LinearNoBias(lb.matrix(np.ones((width, 2)), dtype)) if kind == "LinearNoBias"
                  else Batchnorm1d(lb.zeros(width, dtype), lb.ones(width, dtype), lb.ones(width, dtype),
                                   lb.zeros(width, dtype)))
    net: list[Layer] = [LinearNoBias(lb.matrix(np.ones((2, 3)), f32)), Activation(Act.relu), bad]
    x, y = np.ones((4, 2), f32), np.eye(3 if kind == "Batchnorm1d" else 2, dtype=f32)[[0, 1, 0, 1]]
    want = (rf"layer 2 \({kind}\) takes 4 features, the layers before it give 3" if wrong == "width"
            else rf"layer 2 \({kind}\) holds float64 but the layers before it give float32")
    error = lb.ShapeError if wrong == "width" else lb.DTypeError
    opt = lb.SGD(0.1)
    for op, call in (("training pass", lambda: lb.gradients(net, lb.matrix(x), lb.matrix(y))),
                     ("training pass", lambda: train_step(net, opt, init_state(opt, net), lb.matrix(x), lb.matrix(y))),
                     ("logits", lambda: lb.logits(net, lb.matrix(x))), ("forward", lambda: lb.forward(net, lb.matrix(x))),
                     ("logits", lambda: lb.accuracy(net, x, np.zeros(4, np.int64)))):
        with pytest.raises(error, match=f"^{op}: .*{want}"):
            call()


@given(classes=st.integers(1, 12), data=st.data())
def test_one_hot_is_the_identity_matrix_row_of_each_label_and_refuses_labels_just_outside(classes: int,
                                                                                         data: st.DataObject) -> None:
    from lazybn.preprocess import one_hot

    labels = np.array(data.draw(st.lists(st.integers(0, classes - 1), max_size=20)), dtype=np.int64)
    got = one_hot(labels, classes, np.float64)
    assert got.shape == (len(labels), classes) and got.dtype == np.float64
    assert np.array_equal(got, np.eye(classes)[labels].reshape(len(labels), classes))
    for bad in (-1, classes):  # the nearest labels outside [0, classes): -1 would pick the last column
        at = data.draw(st.integers(0, len(labels)))
        with pytest.raises(lb.ValueRangeError, match=re.escape(f"labels must be in [0, {classes})")):
            one_hot(np.insert(labels, at, bad), classes)


@pytest.mark.parametrize("classes", [2.0, 0, -2, True, "2", None])
@pytest.mark.parametrize("n", [0, 3])
def test_one_hot_refuses_a_class_count_that_is_not_a_positive_integer(classes: object, n: int) -> None:
    from lazybn.preprocess import one_hot

    with pytest.raises(lb.ValueRangeError, match=re.escape(f"one_hot: classes must be an integer >= 1 (the number "
                                                           f"of classes), got {classes!r}")):
        one_hot(np.zeros(n, np.int64), classes)  # type: ignore[arg-type]
    assert np.array_equal(one_hot(np.array([1, 0, 2]), 3), np.eye(3, dtype=np.float32)[[1, 0, 2]])
