"""The benchmarks' baselines compute what they claim, so that a ratio in docs/performance.md
compares the same work: each baseline against an oracle of its own (float64 numpy, finite
differences, PyTorch where installed, or lazybn where the claim is "the same network, the same
step"). The benchmark scripts are imported by path; their ``main`` does not run, nothing is timed."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import Batchnorm1d, Layer, Linear, LinearNoBias
from lazybn.optim import init_state

from .helpers import DTYPES, F

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@functools.cache
def bench(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module of its own (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(f"_lazybn_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- bench_bn: the two numpy baselines ------------------------------------------------------

def bn_oracle(x: F, dy: F, gamma: F, beta: F, eps: float) -> tuple[F, F, F, F]:
    """Batch norm's training forward and the gradients of ``sum(dy * y)``, in float64."""
    x, dy, gamma, beta = (np.asarray(a, np.float64) for a in (x, dy, gamma, beta))
    mu = x.mean(axis=0)
    sigma = np.sqrt(((x - mu) ** 2).mean(axis=0) + eps)
    xhat = (x - mu) / sigma
    dx = gamma / sigma * (dy - dy.mean(axis=0) - xhat * (dy * xhat).mean(axis=0))
    return gamma * xhat + beta, dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def test_the_batch_norm_oracle_is_the_derivative_of_its_forward() -> None:
    """Central differences of ``sum(dy * y)`` along random directions of x, gamma and beta."""
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((7, 4)) * 3 + 1, rng.standard_normal((7, 4))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    _, dx, dgamma, dbeta = bn_oracle(x, dy, gamma, beta, 1e-5)
    for grad, at in ((dx, 0), (dgamma, 1), (dbeta, 2)):
        v = rng.standard_normal(grad.shape)
        h = 1e-6

        def loss(t: float) -> float:
            args = [x, gamma, beta]
            args[at] = args[at] + t * v
            return float((dy * bn_oracle(args[0], dy, args[1], args[2], 1e-5)[0]).sum())

        fd = (loss(h) - loss(-h)) / (2 * h)
        assert abs(fd - float((grad * v).sum())) <= 1e-6 * (1 + abs(fd))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["naive_numpy", "closed_numpy"]), st.sampled_from(DTYPES), st.integers(2, 40),
       st.integers(1, 6), st.integers(0, 2**32 - 1), st.sampled_from([1e-3, 1.0, 1e3]), st.sampled_from([0.0, 3.0]))
def test_the_numpy_batch_norm_baselines_compute_y_dx_dgamma_dbeta(name: str, dtype: np.dtype[Any], n: int, d: int,
                                                                   seed: int, scale: float, offset: float) -> None:
    """Each output, in the input's dtype (the baseline does float32 work on float32 data), within
    the dtype's rounding of the float64 oracle on the same (rounded) inputs."""
    rng = np.random.default_rng(seed)
    x = ((rng.standard_normal((n, d)) + offset) * scale).astype(dtype)
    dy = rng.standard_normal((n, d)).astype(dtype)
    gamma, beta = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    got = getattr(bench("bench_bn"), name)(x, dy, gamma, beta)
    want = bn_oracle(x, dy, gamma, beta, bench("bench_bn").EPS)
    # What each output's rounding error is relative to: x - mu loses |x| / sigma of x's precision
    g, ady = np.abs(gamma.astype(np.float64)), np.abs(dy.astype(np.float64))
    sigma = np.sqrt(x.astype(np.float64).var(axis=0) + bench("bench_bn").EPS)
    cond = 1 + np.abs(x).max(axis=0) / sigma
    scales = [g * cond + np.abs(beta), g / sigma * ady.max(0) * cond, ady.sum(0) * cond, ady.sum(0)]
    tol = 64 * np.finfo(dtype).eps
    for what, a, b, s in zip(("y", "dx", "dgamma", "dbeta"), got, want, scales):
        assert a.dtype == dtype and a.shape == b.shape, f"{name} {what}: {a.dtype}{a.shape}"
        err = np.abs(a.astype(np.float64) - b).max()
        assert err <= tol * s.max(), f"{name} {what}: error {err} against scale {s.max()}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_lazybn_batch_norm_case_computes_the_gradients(dtype: np.dtype[Any]) -> None:
    rng = np.random.default_rng(5)
    x, dy = (rng.standard_normal((9, 5)).astype(dtype) for _ in range(2))
    dx, dgamma, dbeta = bench("bench_bn").lazybn_case(x, dy, lb.Comp.Seq)()
    _, *want = bn_oracle(x, dy, np.ones(5), np.zeros(5), bench("bench_bn").EPS)
    for a, b in zip((dx, dgamma, dbeta), want):
        np.testing.assert_allclose(a.array, b, rtol=0, atol=100 * np.finfo(dtype).eps * np.abs(b).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_torch_batch_norm_step_is_forward_and_backward(dtype: np.dtype[Any]) -> None:
    """y, dx, dgamma and dbeta, in the dtype of the data."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x, dy = (rng.standard_normal((11, 4)).astype(dtype) for _ in range(2))
    gamma, beta = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
    xt, gt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, gamma, beta))
    rm, rv = torch.zeros(4, dtype=xt.dtype), torch.ones(4, dtype=xt.dtype)
    y = bench("bench_bn").torch_step(xt, torch.from_numpy(dy), gt, bt, rm, rv)
    want = bn_oracle(x, dy, gamma, beta, bench("bench_bn").EPS)
    for t, b in zip((y, xt.grad, gt.grad, bt.grad), want):
        a = t.detach().numpy()
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=0, atol=100 * np.finfo(dtype).eps * np.abs(b).max())


# --- bench_fusion: the numpy expression -----------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(1, 20), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_the_fusion_numpy_chain_is_the_expression(dtype: np.dtype[Any], n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, a, b = (rng.standard_normal(s).astype(dtype) for s in ((n, d), d, d))
    y, s = bench("bench_fusion").chain_numpy(x, a, b)
    x64, a64, b64 = (v.astype(np.float64) for v in (x, a, b))
    want = (2 * (np.maximum(x64 * a64 + b64, 0) - 0.5) + 0.1 * x64) ** 2
    assert y.dtype == s.dtype == dtype
    tol = 16 * np.finfo(dtype).eps
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol * float(np.abs(x64).max() + 1))
    np.testing.assert_allclose(s, y.astype(np.float64).sum(0), rtol=0, atol=n * tol * float(np.abs(y).sum(0).max()))


def test_the_fusion_check_passes_for_lazybn_and_fails_for_a_wrong_result(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = bench("bench_fusion")
    rng = np.random.default_rng(2)
    x, a, b = (rng.standard_normal(s).astype(np.float32) for s in ((6, 4), 4, 4))
    mod.check(x, a, b, lb.Comp.Seq)
    real = mod.chain_numpy
    monkeypatch.setattr(mod, "chain_numpy", lambda x, a, b: (real(x, a, b)[0] * 1.001, real(x, a, b)[1]))
    with pytest.raises(AssertionError):
        mod.check(x, a, b, lb.Comp.Seq)


# --- bench_inference: numpy_logits ----------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(st.booleans(), st.booleans(), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_numpy_logits_are_lazybns_logits(batchnorm: bool, folded: bool, rows: int, seed: int) -> None:
    """The benchmark's network, running statistics unlike the initial ones (variances down to where
    eps matters), unfolded and folded."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    for layer in lb.mlp([11, 9, 6, 4], batchnorm=batchnorm, seed=seed % 1000):
        if isinstance(layer, Batchnorm1d):
            k = layer.features
            mu, var, gamma, beta = (lb.vector(v, np.float32) for v in (
                rng.normal(0, 1, k), 10 ** rng.uniform(-4, 0.3, k), rng.normal(1, 0.2, k), rng.normal(0, 0.5, k)))
            layer = Batchnorm1d(mu, var, gamma, beta)
        layers.append(layer)
    if folded:
        layers = lb.fold_batchnorm(layers)
    a = rng.random((rows, 11), dtype=np.float32)
    got = bench("bench_inference").numpy_logits(layers, a)
    want = lb.logits(layers, lb.matrix(a)).array
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


# --- bench_epoch: the numpy and PyTorch networks, "matmul only" -----------------------------

def weights(layers: list[Layer]) -> list[F]:
    return [layer.w.array for layer in layers if isinstance(layer, (Linear, LinearNoBias))]


def lazybn_params(layers: list[Layer]) -> dict[str, list[F]]:
    """A network's arrays under the names of ``bench_epoch.numpy_params``."""
    bns = [layer for layer in layers if isinstance(layer, Batchnorm1d)]
    return {"w": weights(layers), "b": [layer.b.array for layer in layers if isinstance(layer, Linear)],
            "gamma": [layer.gamma.array for layer in bns], "beta": [layer.beta.array for layer in bns],
            "mean": [layer.mu.array for layer in bns], "var": [layer.var.array for layer in bns]}


def assert_same_update(old: dict[str, list[F]], got: dict[str, list[F]], want: dict[str, list[F]]) -> None:
    """Every array moved as ``want``'s did, to float32's rounding of the move and of the value."""
    assert got.keys() == want.keys()
    for key in want:
        assert len(got[key]) == len(want[key]) == len(old[key]), key
        for i, (o, g, w) in enumerate(zip(old[key], got[key], want[key])):
            assert g.dtype == w.dtype == np.float32 and g.shape == w.shape, f"{key}[{i}]"
            move = np.abs(w.astype(np.float64) - o).max()
            assert move > 0, f"{key}[{i}] did not move"
            tol = 1e-3 * move + 4 * np.finfo(np.float32).eps * np.abs(o).max()
            err = np.abs(g.astype(np.float64) - w).max()
            assert err <= tol, f"{key}[{i}]: differs by {err}, moved by {move}"


def copy_params(p: dict[str, list[F]]) -> dict[str, list[F]]:
    return {k: [a.copy() for a in v] for k, v in p.items()}


@pytest.mark.parametrize("bn", [True, False])
def test_the_numpy_network_starts_from_lazybns_layers(bn: bool) -> None:
    mod = bench("bench_epoch")
    got, want = mod.numpy_params(bn), lazybn_params(lb.mlp(mod.SIZES, batchnorm=bn, seed=0))
    assert got.keys() == want.keys()
    for key in want:
        assert len(got[key]) == len(want[key]), key
        for g, w in zip(got[key], want[key]):
            assert g.dtype == w.dtype and np.array_equal(g, w), key


def lazybn_steps(bn: bool, x: F, y: F, batches: list[F]) -> tuple[list[float], list[Layer]]:
    mod = bench("bench_epoch")
    layers = lb.mlp(mod.SIZES, batchnorm=bn, seed=0)
    opt = lb.SGD(mod.LR)
    state = init_state(opt, layers)
    losses = []
    for idx in batches:
        step = lb.train_step(layers, opt, state, lb.matrix(x[idx]), lb.matrix(y[idx]))
        layers, state = step.layers, step.opt_state
        losses.append(step.loss)
    return losses, layers


@pytest.mark.parametrize("bn", [True, False])
def test_the_numpy_network_takes_lazybns_training_steps(bn: bool) -> None:
    """Two SGD steps on two batches gathered by index: the same loss at each step, then the same
    weights, biases or batch-norm parameters and running statistics as lazybn's ``train_step``."""
    mod = bench("bench_epoch")
    x, y = mod._data(2)
    batches = mod._shuffled(0, 2, x, np.random.default_rng(7))
    want_losses, layers = lazybn_steps(bn, x, y, batches)
    params = mod.numpy_params(bn)
    old = copy_params(params)
    step = mod.numpy_step(bn, params, x, y)
    losses = [step(idx) for idx in batches]
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert_same_update(old, params, lazybn_params(layers))


@pytest.mark.parametrize("net", ["numpy", "torch"])
def test_a_block_is_a_shuffled_pass_with_a_step_per_batch(net: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch of a block is one step (which returns its loss) on the batch's rows gathered by
    index; each pass over the rows takes a fresh order."""
    if net == "torch":
        pytest.importorskip("torch")
    mod = bench("bench_epoch")
    x, y = mod._data(5)
    seen: list[F] = []

    def fake(*args: object) -> Any:
        def step(idx: object) -> float:
            seen.append(np.asarray(idx))
            return 1.0
        return step

    monkeypatch.setattr(mod, f"{net}_step", fake)
    monkeypatch.setattr(mod, "torch_net", lambda bn: None)
    block = getattr(mod, f"{net}_blocks")(True, x, y)
    block(2, 3)
    block(2, 3)
    assert len(seen) == 6 and all(idx.shape == (mod.BATCH,) for idx in seen)
    first, second = np.concatenate(seen[:3]), np.concatenate(seen[3:])
    assert sorted(first) == sorted(second) == list(range(2 * mod.BATCH, 5 * mod.BATCH))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("bn", [True, False])
def test_the_torch_network_takes_lazybns_training_steps(bn: bool) -> None:
    """From lazybn's initial weights (PyTorch's own init differs), two SGD steps match lazybn's."""
    torch = pytest.importorskip("torch")
    mod = bench("bench_epoch")
    x, y = mod._data(2)
    batches = mod._shuffled(0, 2, x, np.random.default_rng(7))
    want_losses, layers = lazybn_steps(bn, x, y, batches)
    net = mod.torch_net(bn)
    old = lazybn_params(lb.mlp(mod.SIZES, batchnorm=bn, seed=0))
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    bns = [m for m in net if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(lins) == 3 and len(bns) == (2 if bn else 0)
    assert [m.bias is not None for m in lins] == [not bn] * 3
    with torch.no_grad():
        for m, w in zip(lins, old["w"]):
            m.weight.copy_(torch.from_numpy(w.T.copy()))
            if m.bias is not None:
                m.bias.zero_()
    step = mod.torch_step(net, x, y)
    losses = [step(torch.from_numpy(idx)) for idx in batches]
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)

    def arr(t: Any) -> F:
        return np.array(t.detach().numpy())

    got = {"w": [arr(m.weight).T for m in lins], "b": [arr(m.bias) for m in lins if m.bias is not None],
           "gamma": [arr(m.weight) for m in bns], "beta": [arr(m.bias) for m in bns],
           "mean": [arr(m.running_mean) for m in bns], "var": [arr(m.running_var) for m in bns]}
    assert_same_update(old, got, lazybn_params(layers))


def test_matmul_only_does_a_steps_eight_products() -> None:
    mod = bench("bench_epoch")
    x, y = mod._data(1)
    rng = np.random.default_rng(4)
    sizes, n = mod.SIZES, mod.BATCH
    ws = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
    hs = [rng.standard_normal((n, b)).astype(np.float32) for b in sizes[1:]]
    x0 = x[:n]
    got = mod.step_products(x0, ws, hs)
    w64, h64, x64 = [w.astype(np.float64) for w in ws], [h.astype(np.float64) for h in hs], x0.astype(np.float64)
    forward = [x64 @ w64[0]]
    forward += [forward[0] @ w64[1]]
    forward += [forward[1] @ w64[2]]
    weight_grads = [x64.T @ h64[0], h64[0].T @ h64[1], h64[1].T @ h64[2]]
    input_grads = [h64[1] @ w64[1].T, h64[2] @ w64[2].T]
    want = forward + weight_grads + input_grads
    assert len(got) == 8
    key = [(g.shape, g.dtype.name) for g in got]
    assert sorted(key) == sorted((w.shape, "float32") for w in want)
    assert [(784, 300), (300, 50), (50, 10)] == [g.shape for g in got if g.shape[0] != n]
    for w in want:  # each product is among the step's, to float32's rounding
        assert any(g.shape == w.shape and np.allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max()) for g in got)
