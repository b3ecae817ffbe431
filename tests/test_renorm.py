"""Batch renormalisation (``Batchnorm1d(renorm=Renorm(...))``) against plain numpy oracles, and
PyTorch autograd with r and d detached where it is installed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.errors import ArgumentError, ValueRangeError
from lazybn.layers import BN1, Batchnorm1d, Renorm
from lazybn.batchnorm import _clip, renorm_forward
from lazybn.network import _pass
from lazybn.optim import init_state

from .helpers import F
from .net_helpers import assert_same_network


def _layer(c: int, rng: np.random.Generator, dtype: Any = np.float64, renorm: Renorm | None = Renorm(),
           eps: float = 1e-3) -> Batchnorm1d:
    return Batchnorm1d(lb.vector(rng.normal(0.0, 1.0, c), dtype), lb.vector(np.abs(rng.normal(1.0, 0.5, c)), dtype),
                       lb.vector(rng.normal(1.0, 0.1, c), dtype), lb.vector(rng.normal(0.0, 0.1, c), dtype),
                       eps=eps, renorm=renorm)


def _oracle(x: F, layer: Batchnorm1d, dy: F) -> dict[str, F]:
    """Ioffe's Algorithm 1 in float64 numpy, and its gradients with r and d held constant."""
    arr = {k: getattr(layer, k).array.astype(np.float64) for k in ("mu", "var", "gamma", "beta")}
    x = x.astype(np.float64)
    n = x.shape[0]
    mean, var = x.mean(axis=0), x.var(axis=0)
    sigma_b, sigma = np.sqrt(var + layer.eps), np.sqrt(arr["var"] + layer.eps)
    assert layer.renorm is not None
    rmax, dmax = layer.renorm.rmax, layer.renorm.dmax
    r, d = sigma_b / sigma, (mean - arr["mu"]) / sigma
    if rmax is not None:
        r = np.clip(r, 1 / rmax, rmax)
    if dmax is not None:
        d = np.clip(d, -dmax, dmax)
    xhat = (x - mean) / sigma_b
    out = arr["gamma"] * (xhat * r + d) + arr["beta"]
    dxhat = dy * arr["gamma"] * r
    dx = (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (n * sigma_b)
    return {"out": out, "r": r, "d": d, "mean": mean, "var": var, "dx": dx,
            "dgamma": (dy * (xhat * r + d)).sum(axis=0), "dbeta": dy.sum(axis=0)}


def _softmax_grad(out: F, tgt: F) -> F:
    """The gradient of the mean cross-entropy at the logits ``out``."""
    e = np.exp(out - out.max(axis=1, keepdims=True))
    grad: F = (e / e.sum(axis=1, keepdims=True) - tgt) / out.shape[0]
    return grad


def test_known_case_three_by_three() -> None:
    """x = [[4, 6, 2], [8, -2, 5], [6, 4, 3]], eps 1e-3: out = (x̂·r + d)·γ + β with r = σ_B/σ and
    d = (μ_B - μ)/σ from the running statistics."""
    x = np.array([[4.0, 6.0, 2.0], [8.0, -2.0, 5.0], [6.0, 4.0, 3.0]])
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        layer = _layer(3, np.random.default_rng(0), dtype)
        out, mean, var, r, d = renorm_forward(lb.matrix(x, dtype), layer)
        want = _oracle(x, layer, np.zeros_like(x))
        for got, key in ((out, "out"), (mean, "mean"), (var, "var"), (r, "r"), (d, "d")):
            assert got.dtype == dtype
            np.testing.assert_allclose(got.array, want[key], rtol=tol, atol=tol, err_msg=key)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), c=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       rmax=st.none() | st.floats(1.0, 3.0), dmax=st.none() | st.floats(0.0, 2.0),
       loc=st.floats(-3.0, 3.0), spread=st.floats(0.1, 4.0))
def test_training_pass_matches_the_oracle(n: int, c: int, seed: int, rmax: float | None, dmax: float | None,
                                          loc: float, spread: float) -> None:
    """Forward, r, d (clipped) and the gradients through a training pass, float64."""
    rng = np.random.default_rng(seed)
    layer = _layer(c, rng, renorm=Renorm(rmax, dmax))
    x = rng.normal(loc, spread, (n, c))
    tgt = np.eye(c)[rng.integers(0, c, n)]
    dx, pred, grads = _pass(lb.matrix(x, np.float64), lb.matrix(tgt, np.float64), [layer])
    out = _oracle(x, layer, np.zeros_like(x))["out"]
    want = _oracle(x, layer, _softmax_grad(out, tgt))
    g = grads[0]
    assert isinstance(g, BN1) and g.n == n
    e = np.exp(out - out.max(axis=1, keepdims=True))
    np.testing.assert_allclose(pred.array, e / e.sum(axis=1, keepdims=True), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g.batch_mu.array, want["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.batch_var.array, want["var"], rtol=1e-12, atol=1e-12)
    scale = np.abs(want["dx"]).max() + 1e-300
    np.testing.assert_allclose(dx.array, want["dx"], rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(g.dgamma.array, want["dgamma"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g.dbeta.array, want["dbeta"], rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]), lo=st.floats(-10.0, 10.0),
       width=st.floats(0.0, 10.0))
def test_clip_is_exact_at_every_magnitude(data: st.DataObject, dtype: Any, lo: float, width: float) -> None:
    """r and d are clipped exactly as ``np.clip``, however far outside the bounds they are (a clip
    built from sums rounded: 1e8 clipped to 5 gave 8 in float32)."""
    finite = st.floats(width=32 if dtype == np.float32 else 64, allow_nan=False, allow_infinity=False)
    values = np.array(data.draw(st.lists(finite | st.sampled_from([1e8, -1e8, 1.7e9, 1e17, -1e30]), min_size=1,
                                         max_size=12)), dtype)
    lo32, hi32 = dtype(lo), dtype(lo + width)
    got = lb.compute(_clip(lb.delay(lb.vector(values, dtype)), float(lo32), float(hi32))).array
    assert np.array_equal(got, np.clip(values, lo32, hi32)), (values, got)


def test_a_large_offset_clips_d_to_dmax() -> None:
    """A feature about 1e8 from its running mean (raw data, say) has d = 1e8: clipped to dmax exactly."""
    rng = np.random.default_rng(0)
    x = (1e8 + rng.normal(0.0, 1e3, (6, 2))).astype(np.float32)
    layer = _layer(2, rng, np.float32, Renorm(3.0, 5.0))
    _, _, _, r, d = renorm_forward(lb.matrix(x), layer)
    assert d.array.tolist() == [5.0, 5.0] and r.array.tolist() == [3.0, 3.0]


def test_running_statistics_equal_to_the_batch_give_batch_norm() -> None:
    """r = 1 and d = 0 when the running statistics are the batch's: the output and gradients of
    batch norm (float32)."""
    rng = np.random.default_rng(4)
    x = lb.matrix(rng.normal(2.0, 3.0, (16, 5)), np.float32)
    tgt = lb.matrix(np.eye(5)[rng.integers(0, 5, 16)], np.float32)
    plain = _layer(5, rng, np.float32, renorm=None)
    _, _, (g0,) = _pass(x, tgt, [plain])
    assert isinstance(g0, BN1)
    plain = replace(plain, mu=g0.batch_mu, var=g0.batch_var)
    dx0, pred0, (g0,) = _pass(x, tgt, [plain])
    dx1, pred1, (g1,) = _pass(x, tgt, [replace(plain, renorm=Renorm(3.0, 5.0))])
    assert isinstance(g0, BN1) and isinstance(g1, BN1)
    for a, b, what in ((dx0, dx1, "dx"), (pred0, pred1, "pred"), (g0.dgamma, g1.dgamma, "dgamma"),
                       (g0.dbeta, g1.dbeta, "dbeta")):
        np.testing.assert_allclose(b.array, a.array, rtol=1e-6, atol=1e-7, err_msg=what)


def test_inference_is_the_same_with_and_without_renorm() -> None:
    rng = np.random.default_rng(5)
    layers = lb.mlp([6, 4, 3], batchnorm=True, seed=1, renorm=Renorm(2.0, 1.0))
    plain = [replace(layer, renorm=None) if isinstance(layer, Batchnorm1d) else layer for layer in layers]
    x = lb.matrix(rng.standard_normal((7, 6)), np.float32)
    assert lb.logits(layers, x).array.tobytes() == lb.logits(plain, x).array.tobytes()


def test_training_steps_replay_and_update_gamma_with_the_renorm_gradient() -> None:
    rng = np.random.default_rng(6)
    layers = lb.mlp([4, 3, 3], batchnorm=True, seed=2, dtype=np.float64, renorm=Renorm(1.5, 0.5))
    opt = lb.SGD(0.1)
    state = init_state(opt, layers)
    for _ in range(3):
        x = rng.normal(1.0, 2.0, (6, 4))
        tgt = np.eye(3)[rng.integers(0, 3, 6)]
        bn = layers[1]
        assert isinstance(bn, Batchnorm1d)
        h = x @ layers[0].w.array  # type: ignore[union-attr]
        out = _oracle(h, bn, np.zeros_like(h))
        rest = np.maximum(out["out"], 0) @ layers[3].w.array  # type: ignore[union-attr]
        dy = (_softmax_grad(rest, tgt) @ layers[3].w.array.T) * (out["out"] > 0)  # type: ignore[union-attr]
        want = _oracle(h, bn, dy)
        step = lb.train_step(layers, opt, state, lb.matrix(x, np.float64), lb.matrix(tgt, np.float64))
        layers, state = step.layers, step.opt_state
        np.testing.assert_allclose(layers[1].gamma.array, bn.gamma.array - 0.1 * want["dgamma"],  # type: ignore[union-attr]
                                   rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(bounds=st.lists(st.tuples(st.none() | st.floats(1.0, 1.3), st.none() | st.floats(0.0, 0.4)),
                       min_size=2, max_size=5),
       ramp=st.booleans())
def test_bounds_that_change_every_step_take_effect_in_the_replay_without_a_new_trace(
        bounds: list[tuple[float | None, float | None]], ramp: bool) -> None:
    """The paper ramps rmax and dmax step by step: each step must clip with its own bounds (against
    the oracle, with bounds tight enough that r and d are clipped), bit for bit as without the
    replay, and only a new pattern of set and unset bounds traces the step again."""
    if ramp:  # the paper's schedule, in miniature: rmax from 1 up, dmax from 0 up
        bounds = [(1.0 + 0.1 * k, 0.1 * k) for k in range(len(bounds))]
    rng = np.random.default_rng(7)
    start = lb.mlp([4, 3, 3], batchnorm=True, seed=3, dtype=np.float64, renorm=Renorm())
    opt = lb.SGD(0.1)
    xs = [rng.normal(1.0, 2.0, (6, 4)) for _ in bounds]
    tgts = [np.eye(3)[rng.integers(0, 3, 6)] for _ in bounds]

    def train() -> tuple[list[lb.Layer], list[tuple[int, list[lb.Layer], F, F, F]]]:
        layers, state = start, init_state(opt, start)
        seen: list[tuple[int, list[lb.Layer], F, F, F]] = []
        for k, ((rmax, dmax), x, tgt) in enumerate(zip(bounds, xs, tgts)):
            layers = [replace(layer, renorm=Renorm(rmax, dmax)) if isinstance(layer, Batchnorm1d) else layer
                      for layer in layers]
            traces = lb.fuse.stats().traces
            step = lb.train_step(layers, opt, state, lb.matrix(x, np.float64), lb.matrix(tgt, np.float64))
            new = [bound is None for bound in bounds[k]] != [bound is None for bound in bounds[k - 1]]
            seen.append((lb.fuse.stats().traces - traces if k and not new else 0, layers, x, tgt,
                         step.layers[1].gamma.array))  # type: ignore[union-attr]
            layers, state = step.layers, step.opt_state
        return layers, seen

    got, seen = train()
    for traced, layers, x, tgt, gamma in seen:
        assert traced == 0  # the same pattern of bounds: the step replays
        w0, bn, w3 = layers[0].w.array, layers[1], layers[3].w.array  # type: ignore[union-attr]
        assert isinstance(bn, Batchnorm1d)
        h = x @ w0
        out = _oracle(h, bn, np.zeros_like(h))
        dy = (_softmax_grad(np.maximum(out["out"], 0) @ w3, tgt) @ w3.T) * (out["out"] > 0)
        np.testing.assert_allclose(gamma, bn.gamma.array - 0.1 * _oracle(h, bn, dy)["dgamma"], rtol=1e-10, atol=1e-12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lb.trace, "REPLAY", False)
        want, _ = train()
    assert_same_network(got, want)
    assert [layer.renorm for layer in got if isinstance(layer, Batchnorm1d)] == [Renorm(*bounds[-1])]


def test_invalid_bounds_are_refused() -> None:
    for kw, match in ((dict(rmax=0.5), "rmax"), (dict(rmax=float("nan")), "rmax"), (dict(dmax=-0.1), "dmax")):
        with pytest.raises(ValueRangeError, match=match):
            Renorm(**kw)
    with pytest.raises(ArgumentError, match="rmax"):
        Renorm(rmax="3")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="renorm"):
        _layer(2, np.random.default_rng(0), renorm=(3.0, 5.0))  # type: ignore[arg-type]


def test_matches_pytorch_autograd_with_r_and_d_detached() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    layer = _layer(4, rng, renorm=Renorm(1.2, 0.3), eps=1e-5)
    x = rng.normal(0.5, 2.0, (9, 4))
    tgt = np.eye(4)[rng.integers(0, 4, 9)]
    xt = torch.tensor(x, requires_grad=True)
    gamma = torch.tensor(layer.gamma.array, requires_grad=True)
    beta = torch.tensor(layer.beta.array, requires_grad=True)
    mean, var = xt.mean(0), xt.var(0, unbiased=False)
    sigma_b = torch.sqrt(var + layer.eps)
    sigma = torch.sqrt(torch.tensor(layer.var.array) + layer.eps)
    r = torch.clamp(sigma_b / sigma, 1 / 1.2, 1.2).detach()
    d = torch.clamp((mean - torch.tensor(layer.mu.array)) / sigma, -0.3, 0.3).detach()
    out = gamma * ((xt - mean) / sigma_b * r + d) + beta
    torch.nn.functional.cross_entropy(out, torch.tensor(tgt.argmax(1))).backward()
    dx, _, (g,) = _pass(lb.matrix(x, np.float64), lb.matrix(tgt, np.float64), [layer])
    assert isinstance(g, BN1)
    np.testing.assert_allclose(dx.array, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g.dgamma.array, gamma.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g.dbeta.array, beta.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_par_and_seq_agree() -> None:
    """Above the parallel threshold (4 MiB) Comp.Par runs the parallel kernels: same results to
    float32 rounding of differently ordered float64 sums."""
    rng = np.random.default_rng(9)
    x = rng.normal(1.0, 2.0, (1100, 1000)).astype(np.float32)
    dy = rng.standard_normal((1100, 1000)).astype(np.float32) / 1100
    layer = _layer(1000, rng, np.float32, renorm=Renorm(1.5, 0.5))
    got = {}
    for comp in (lb.Comp.Seq, lb.Comp.Par):
        xm = lb.matrix(x, np.float32, comp=comp)
        out, mean, var, r, d = renorm_forward(xm, layer)
        got[comp] = (out.array, mean.array, var.array, r.array, d.array)
    for a, b in zip(got[lb.Comp.Seq], got[lb.Comp.Par]):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)
    want = _oracle(x, layer, dy)
    np.testing.assert_allclose(got[lb.Comp.Par][0], want["out"], rtol=1e-4, atol=1e-4)


def _ramp_oracle(t: int, final: float, start: int, steps: int, first: float) -> float:
    """A bound linear from ``first`` at step ``start`` to ``final`` at ``start + steps``, flat outside."""
    if steps == 0:
        return first if t < start else final
    return float(np.interp(t, [start, start + steps], [first, final]))


@given(rmax=st.floats(1.0, 10.0), dmax=st.floats(0.0, 10.0), start=st.integers(0, 50), rsteps=st.integers(0, 60),
       dsteps=st.integers(0, 60), t=st.integers(0, 200))
@example(rmax=3.0, dmax=5.0, start=10, rsteps=20, dsteps=40, t=20)  # halfway up rmax (2.0), a quarter up dmax (1.25)
@example(rmax=3.0, dmax=5.0, start=10, rsteps=20, dsteps=40, t=11)  # the first step of the ramps
def test_a_ramp_is_batch_norm_until_it_starts_then_linear_to_its_bounds(rmax: float, dmax: float, start: int,
                                                                         rsteps: int, dsteps: int, t: int) -> None:
    got = lb.RenormRamp(rmax, dmax, start, rsteps, dsteps).at(t)
    assert got.rmax == pytest.approx(_ramp_oracle(t, rmax, start, rsteps, 1.0), rel=1e-12, abs=1e-12)
    assert got.dmax == pytest.approx(_ramp_oracle(t, dmax, start, dsteps, 0.0), rel=1e-12, abs=1e-12)
    if t < start:
        assert (got.rmax, got.dmax) == (1.0, 0.0)  # r = 1, d = 0: batch norm


def test_invalid_ramps_are_refused() -> None:
    for kw, match in ((dict(rmax=0.5), "rmax"), (dict(dmax=-1.0), "dmax"), (dict(start=-1), "start"),
                      (dict(rmax_steps=2.5), "rmax_steps"), (dict(dmax_steps=True), "dmax_steps")):
        with pytest.raises(ValueRangeError, match=match):
            lb.RenormRamp(**{"rmax": 3.0, "dmax": 5.0, **kw})  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="RenormRamp.rmax"):
        lb.RenormRamp(None, 5.0)  # type: ignore[arg-type]


def test_train_epoch_ramps_the_bounds_step_by_step_as_a_loop_of_steps_would() -> None:
    """``train_epoch(renorm=ramp)`` equals train_step with ``ramp.at(t)`` set by hand, bit for bit,
    with one trace for the whole ramp; a network without renormalising layers refuses a ramp."""
    rng = np.random.default_rng(12)
    x, y = rng.normal(0.5, 2.0, (60, 5)), np.eye(3, dtype=np.float64)[rng.integers(0, 3, 60)]
    start = lb.mlp([5, 4, 4, 3], batchnorm=True, seed=4, dtype=np.float64, renorm=Renorm(3.0, 5.0))
    ramp, opt = lb.RenormRamp(3.0, 5.0, start=2, rmax_steps=3, dmax_steps=2), lb.SGD(0.05)
    traces = lb.fuse.stats().traces
    got, state, _ = lb.train.train_epoch(start, opt, init_state(opt, start), x, y, 10, None, renorm=ramp)
    assert lb.fuse.stats().traces - traces <= 1 and state.step == 6
    layers, state = start, init_state(opt, start)
    for k in range(6):
        layers = [replace(layer, renorm=ramp.at(k)) if isinstance(layer, Batchnorm1d) else layer for layer in layers]
        step = lb.train_step(layers, opt, state, lb.matrix(x[10 * k:10 * k + 10]), lb.matrix(y[10 * k:10 * k + 10]),
                             key=k)
        layers, state = step.layers, step.opt_state
    assert_same_network(got, layers)
    assert [layer.renorm for layer in got if isinstance(layer, Batchnorm1d)] == [ramp.at(5)] * 2
    with pytest.raises(ArgumentError, match="needs a layer that renormalises"):
        plain = lb.mlp([5, 4, 3], batchnorm=True, seed=4, dtype=np.float64)
        lb.train.train_epoch(plain, opt, init_state(opt, plain), x, y, 10, None, renorm=ramp)
