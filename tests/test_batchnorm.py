"""Batch norm against independent oracles: plain numpy (closed-form backward), central finite
differences of ``sum(dy * y)``, and PyTorch in float64 (optional).

The item numbers in this file refer to the list "Batch-norm behaviours the tests check" in
docs/reliability.md. Covered here, in lazybn's conventions (momentum = weight of the new batch,
running variance unbiased, eps > 0 so "eps=0" reads eps=1e-12, a batch of one in training is a
ValueRangeError):
1 and 12 known answers; 2 biased normalisation; 3 invariances; 4 and 5 cancellation; 6 never
negative or NaN; 9 batch of one; 11 channel mismatch; 15 inference; 16 train/inference gap;
21 finite differences and torch; 22 gradient identities; 23 inference-path gradient;
24 degenerate backward; 27 determinism and Seq vs Par.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
import lazybn.fuse
import lazybn.trace
from lazybn.layers import BN1, Batchnorm1d
from lazybn.network import _pass, bn_backward, bn_forward, logits, update_running

from .helpers import F, arrays

F64 = np.dtype(np.float64)
F32 = np.dtype(np.float32)
EPS0 = 1e-12  # lazybn requires eps > 0: this stands for eps = 0 in the behaviours list

# Tolerances, one table per oracle, relative to the result's natural scale (see ``_scales``).
NUMPY_RTOL = {F64: 1e-13, F32: 1e-5}
FD_RTOL = 1e-6
TORCH_RTOL = 1e-6
PAR_RTOL = {F64: 1e-12, F32: 1e-5}  # Par sums in per-thread chunks: another rounding order


# ---------------------------------------------------------------------------------------------
# Oracles, written independently of lazybn (float64 unless said otherwise)


def np_forward(x: F, gamma: F, beta: F, eps: float) -> tuple[F, F, F]:
    """Training forward, two-pass: (y, batch mean, biased batch variance)."""
    x = x.astype(np.float64)
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    y: F = gamma * (x - mu) / np.sqrt(var + eps) + beta
    return y, mu, var


def np_backward(dy: F, x: F, gamma: F, eps: float) -> tuple[F, F, F]:
    """Closed-form backward: dx = gamma / (N sigma) * (N dy - sum dy - xhat sum(dy xhat))."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    n = x.shape[0]
    mu = x.mean(axis=0)
    ivar = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=0) + eps)
    xhat = (x - mu) * ivar
    dbeta = dy.sum(axis=0)
    dgamma = (dy * xhat).sum(axis=0)
    dx: F = gamma * ivar / n * (n * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def np_backward_detached_mu(dy: F, x: F, gamma: F, eps: float) -> F:
    """A WRONG backward that treats the batch mean as a constant: the FD check must catch it."""
    mu = x.mean(axis=0)
    ivar = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=0) + eps)
    xhat = (x - mu) * ivar
    out: F = gamma * ivar * (dy - xhat * (dy * xhat).mean(axis=0))
    return out


# ---------------------------------------------------------------------------------------------
# lazybn under test


def bn_layer(gamma: F, beta: F, *, eps: float = 1e-5, momentum: float = 0.1, mu: F | None = None,
             var: F | None = None, unbiased: bool = True) -> Batchnorm1d:
    dt = gamma.dtype
    c = gamma.shape[0]
    return Batchnorm1d(lb.vector(np.zeros(c) if mu is None else mu, dt), lb.vector(np.ones(c) if var is None else var, dt),
                       lb.vector(gamma, dt), lb.vector(beta, dt), eps=eps, momentum=momentum, unbiased=unbiased)


@dataclass(frozen=True)
class Train:
    y: F
    mu: F
    var: F
    dx: F
    dgamma: F
    dbeta: F
    grads: BN1


def train(x: F, dy: F, layer: Batchnorm1d, comp: lb.Comp = lb.Comp.Seq) -> Train:
    """lazybn's training forward (steps 1-9) and step-by-step backward (steps 9-1)."""
    xm = lb.matrix(x, comp=comp)
    y, mu, var = bn_forward(xm, layer)
    dx, dgamma, dbeta = bn_backward(lb.matrix(dy, comp=comp), xm, layer, mu, var)
    g = BN1(mu, var, dgamma, dbeta, x.shape[0])
    return Train(y.array, mu.array, var.array, dx.array, dgamma.array, dbeta.array, g)


def loss_per_column(x: F, dy: F, layer: Batchnorm1d) -> F:
    """sum_i dy[i, j] * y[i, j] for each column j, with lazybn's forward."""
    out: F = (dy * bn_forward(lb.matrix(x), layer)[0].array).sum(axis=0)
    return out


def fd_dx_by_rows(x: F, dy: F, layer: Batchnorm1d, rel_step: float = 1e-5) -> F:
    """Central differences of sum(dy * y) w.r.t. x. Columns are normalised independently (item 3
    checks it), so moving row k of every column at once gives all of row k's partials."""
    step = rel_step * np.sqrt(x.var(axis=0) + layer.eps)
    g = np.empty_like(x)
    for k in range(x.shape[0]):
        xp, xm = x.copy(), x.copy()
        xp[k] += step
        xm[k] -= step
        g[k] = (loss_per_column(xp, dy, layer) - loss_per_column(xm, dy, layer)) / (xp[k] - xm[k])
    return g


def fd_dx_full(x: F, dy: F, layer: Batchnorm1d, h: float) -> F:
    """Central differences element by element, of the total loss (no independence assumed)."""
    g = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (loss_per_column(xp, dy, layer).sum() - loss_per_column(xm, dy, layer).sum()) / (xp[idx] - xm[idx])
    return g


def fd_param(x: F, dy: F, layer: Batchnorm1d, name: str, h: float = 1e-6) -> F:
    """Central differences w.r.t. gamma or beta (rebuilding the frozen layer), one column each."""
    p = np.asarray(getattr(layer, name).array, dtype=np.float64)

    def moved(v: F) -> Batchnorm1d:
        return replace(layer, gamma=lb.vector(v)) if name == "gamma" else replace(layer, beta=lb.vector(v))

    plus, minus = moved(p + h), moved(p - h)
    out: F = (loss_per_column(x, dy, plus) - loss_per_column(x, dy, minus)) / (2 * h)
    return out


def _scales(x: F, dy: F, gamma: F, eps: float) -> tuple[float, float, float]:
    """The natural size of dx, dgamma and dbeta (what their rounding errors are relative to):
    |gamma| |dy| / sigma, sum |dy xhat| and sum |dy|. Using the result itself would divide by ~0
    where the gradient cancels (a batch of two, dy constant per feature)."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    sigma = np.sqrt(x64.var(axis=0) + eps)
    xhat = (x64 - x64.mean(axis=0)) / sigma
    return (float(np.max(np.abs(gamma) / sigma * np.abs(dy64).max(axis=0))),
            float(np.abs(dy64 * xhat).sum(axis=0).max()), float(np.abs(dy64).sum(axis=0).max()))


def rel_err(got: F, want: F, scale: float) -> float:
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))) / max(scale, 1e-300))


@contextlib.contextmanager
def par_everywhere() -> Iterator[None]:
    """Force the parallel kernel for every expression with a matrix loop, however small. (A
    threshold of 0 would also make vector-only kernels "parallel": see the xfail below.)

    A ``@fused`` program replays the kernels it was traced with, whatever the threshold is now:
    the step functions forget their programs on entry (a serial one traced earlier would replay
    here) and on exit (a parallel one traced here would replay in later tests, where the body
    runs serial kernels and gives other last bits)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lazybn.fuse, "PAR_THRESHOLD_BYTES", 1)
        lazybn.trace._forget_replays()
        try:
            yield
        finally:
            lazybn.trace._forget_replays()


# ---------------------------------------------------------------------------------------------
# Random cases: batch 2..64, width 1..64, gamma ~ U(0.5, 2), x with per-feature offsets and scales


@dataclass(frozen=True)
class Case:
    x: F
    dy: F
    gamma: F
    beta: F


@st.composite
def cases(draw: st.DrawFn, max_n: int = 64, max_c: int = 64, dtype: np.dtype[Any] = F64) -> Case:
    n = draw(st.integers(2, max_n))
    c = draw(st.integers(1, max_c))
    log_scale = draw(st.floats(-3.0, 3.0))
    offset = draw(st.floats(-10.0, 10.0))  # in units of the feature's scale
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** (log_scale + rng.uniform(-0.5, 0.5, c))
    z = rng.standard_normal((n, c))
    z = (z - z.mean(axis=0)) / z.std(axis=0)  # unit spread: |x| / std stays below ~20 (bounded cancellation)
    x = scale * (offset + rng.uniform(-1, 1, c) + z)
    return Case(x.astype(dtype), rng.standard_normal((n, c)).astype(dtype),
                rng.uniform(0.5, 2.0, c).astype(dtype), rng.standard_normal(c).astype(dtype))


# ---------------------------------------------------------------------------------------------
# Forward and backward against numpy and finite differences (items 21, 22)


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@given(data=st.data())
def test_training_forward_and_backward_match_the_numpy_oracle(dtype: np.dtype[Any], data: st.DataObject) -> None:
    c = data.draw(cases(dtype=dtype))
    eps = 1e-5
    got = train(c.x, c.dy, bn_layer(c.gamma, c.beta, eps=eps))
    gamma = c.gamma.astype(np.float64)
    y, mu, var = np_forward(c.x, gamma, c.beta.astype(np.float64), eps)
    dx, dgamma, dbeta = np_backward(c.dy, c.x, gamma, eps)
    sdx, sdg, sdb = _scales(c.x, c.dy, gamma, eps)
    tol = NUMPY_RTOL[dtype]
    assert got.y.dtype == got.dx.dtype == got.dgamma.dtype == dtype
    assert rel_err(got.y, y, float(np.max(np.abs(gamma) * np.sqrt(c.x.shape[0])) + np.abs(c.beta).max())) < tol
    assert rel_err(got.mu, mu, float(np.abs(c.x).max())) < tol
    assert rel_err(got.var, var, float(var.max())) < tol * 10
    assert rel_err(got.dx, dx, sdx) < tol
    assert rel_err(got.dgamma, dgamma, sdg) < tol
    assert rel_err(got.dbeta, dbeta, sdb) < tol


@given(c=cases())
def test_backward_matches_central_finite_differences(c: Case) -> None:
    layer = bn_layer(c.gamma, c.beta)
    got = train(c.x, c.dy, layer)
    sdx, sdg, sdb = _scales(c.x, c.dy, c.gamma, layer.eps)
    assert rel_err(got.dx, fd_dx_by_rows(c.x, c.dy, layer), sdx) < FD_RTOL
    assert rel_err(got.dgamma, fd_param(c.x, c.dy, layer, "gamma"), sdg) < FD_RTOL
    assert rel_err(got.dbeta, fd_param(c.x, c.dy, layer, "beta"), sdb) < FD_RTOL


def test_backward_fixed_case_element_by_element() -> None:
    """Item 21 as written: N=8, C=3, eps=1e-5, h=1e-6; dgamma = sum dy xhat and dbeta = sum dy to 1e-12."""
    rng = np.random.default_rng(21)
    x, dy = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    gamma, beta = rng.uniform(0.5, 2.0, 3), rng.standard_normal(3)
    layer = bn_layer(gamma, beta)
    got = train(x, dy, layer)
    fd = fd_dx_full(x, dy, layer, h=1e-6)
    assert np.max(np.abs(got.dx - fd) / np.abs(fd)) < 1e-6  # elementwise relative: no cancellation here
    xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(got.dgamma, (dy * xhat).sum(0), rtol=1e-12)
    np.testing.assert_allclose(got.dbeta, dy.sum(0), rtol=1e-12)


def test_the_finite_difference_check_catches_a_backward_that_detaches_the_mean() -> None:
    """Item 22, last point: the oracle has teeth. Dropping the path through mu is caught; lazybn passes."""
    rng = np.random.default_rng(22)
    x, dy = rng.standard_normal((16, 4)) * 3 + 1, rng.standard_normal((16, 4))
    gamma, beta = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
    layer = bn_layer(gamma, beta)
    fd = fd_dx_by_rows(x, dy, layer)
    sdx = _scales(x, dy, gamma, layer.eps)[0]
    assert rel_err(train(x, dy, layer).dx, fd, sdx) < FD_RTOL
    assert rel_err(np_backward_detached_mu(dy, x, gamma, layer.eps), fd, sdx) > 1e-2


@given(c=cases())
def test_normalised_output_has_mean_zero_and_biased_variance_one(c: Case) -> None:
    """Item 2 with gamma=1, beta=0, eps=1e-12: y is xhat, and "no affine" is gamma=1, beta=0."""
    n, k = c.x.shape
    layer = bn_layer(np.ones(k), np.zeros(k), eps=EPS0)
    got = train(c.x, c.dy, layer)
    var = c.x.var(axis=0)
    shrink = var / (var + EPS0)  # 1 - 1e-12/var: the only effect of eps
    assert np.all(np.abs(got.y.mean(axis=0)) < 1e-12 * np.sqrt(n) * 10)
    np.testing.assert_allclose((got.y ** 2).mean(axis=0), shrink, rtol=1e-12, atol=0)
    dx_no_affine = np_backward(c.dy, c.x, np.ones(k), EPS0)[0]
    assert rel_err(got.dx, dx_no_affine, _scales(c.x, c.dy, np.ones(k), EPS0)[0]) < NUMPY_RTOL[F64]
    # with an affine: (y - beta) / gamma has mean 0 and std 1 (Keras's check)
    got2 = train(c.x, c.dy, bn_layer(c.gamma, c.beta, eps=EPS0))
    z = (got2.y - c.beta) / c.gamma
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(axis=0), np.sqrt(shrink), atol=1e-6)


def test_sums_are_zero_and_n_on_random_32_by_8() -> None:
    """Item 2 as written: sum_i y = 0 and sum_i y^2 = N per channel (1e-12 relative)."""
    x = np.random.default_rng(2).standard_normal((32, 8)) * 4 + 3
    y = train(x, x, bn_layer(np.ones(8), np.zeros(8), eps=EPS0)).y
    assert np.all(np.abs(y.sum(axis=0)) < 1e-12 * 32)
    np.testing.assert_allclose((y ** 2).sum(axis=0), 32.0, rtol=1e-11)


@given(c=cases())
def test_gradient_identities(c: Case) -> None:
    """Item 22: sum_i dx = 0; dy constant per feature gives dx = 0; sum_i dx xhat = 0 at eps ~ 0."""
    n, k = c.x.shape
    layer = bn_layer(c.gamma, c.beta, eps=EPS0)
    sdx = _scales(c.x, c.dy, c.gamma, EPS0)[0]
    got = train(c.x, c.dy, layer)
    assert np.all(np.abs(got.dx.sum(axis=0)) <= 1e-13 * n * sdx)
    var = c.x.var(axis=0)
    xhat = (c.x - c.x.mean(axis=0)) / np.sqrt(var + EPS0)
    # exactly 0 at eps = 0; eps leaves gamma / sigma * sum(dy xhat) * eps / (var + eps)
    eps_part = c.gamma / np.sqrt(var + EPS0) * (c.dy * xhat).sum(axis=0) * EPS0 / (var + EPS0)
    assert np.all(np.abs((got.dx * xhat).sum(axis=0) - eps_part) <= 1e-13 * n * sdx)
    flat = np.broadcast_to(c.dy[0], c.x.shape).copy()
    assert np.all(np.abs(train(c.x, flat, layer).dx) <= 1e-13 * n * _scales(c.x, flat, c.gamma, EPS0)[0])


# ---------------------------------------------------------------------------------------------
# Known answers (items 1, 12)


def test_known_answer_forward() -> None:
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    one, zero = np.ones(1), np.zeros(1)
    np.testing.assert_allclose(train(x, x, bn_layer(one, zero, eps=1e-5)).y[:, 0],
                               [-1.34163542, -0.44721181, 0.44721181, 1.34163542], atol=1e-8)
    np.testing.assert_allclose(train(x, x, bn_layer(one, zero, eps=1e-3)).y[:, 0],
                               [-1.34110445, -0.44703482, 0.44703482, 1.34110445], atol=1e-8)


def test_known_answer_running_statistics_after_one_training_pass() -> None:
    """Item 12 through the public training pass: from (0, 1) with momentum 0.1, x = [1, 2, 3, 4]."""
    layer = bn_layer(np.ones(1), np.zeros(1), momentum=0.1)
    x = lb.matrix(np.array([[1.0], [2.0], [3.0], [4.0]]))
    _, _, grads = _pass(x, lb.matrix(np.ones((4, 1))), [layer])
    g = grads[0]
    assert isinstance(g, BN1)
    np.testing.assert_allclose(g.batch_var.array, [1.25], rtol=1e-15)  # biased: normalises the batch
    new = update_running(layer, g)
    np.testing.assert_allclose(new.mu.array, [0.25], rtol=1e-15)
    np.testing.assert_allclose(new.var.array, [0.9 + 0.1 * 5.0 / 3.0], rtol=1e-15)  # 1.0666667: unbiased
    # the biased policy is available as a field, and the layer's other fields are carried over
    biased = update_running(replace(layer, unbiased=False), g)
    np.testing.assert_allclose(biased.var.array, [0.9 + 0.1 * 1.25], rtol=1e-15)
    assert new.gamma is layer.gamma and new.beta is layer.beta and new.eps == layer.eps
    np.testing.assert_array_equal(layer.mu.array, [0.0])  # the old layer is untouched


# ---------------------------------------------------------------------------------------------
# Invariances (item 3)


@given(c=cases(max_n=32, max_c=8), data=st.data())
def test_invariances(c: Case, data: st.DataObject) -> None:
    n, k = c.x.shape
    layer = bn_layer(c.gamma, c.beta, eps=EPS0)
    base = train(c.x, c.dy, layer)
    # channel independence: changing column j leaves the other columns bit-identical
    j = data.draw(st.integers(0, k - 1))
    x2 = c.x.copy()
    x2[:, j] = x2[:, j] * 3.0 + 1.0 + np.arange(n)
    other = train(x2, c.dy, layer)
    keep = np.arange(k) != j
    for before, after in ((base.y, other.y), (base.dx, other.dx)):
        np.testing.assert_array_equal(before[:, keep], after[:, keep])
    np.testing.assert_array_equal(base.dgamma[keep], other.dgamma[keep])
    # positive scaling and shift: BN(a x + b) = BN(x) (up to eps/var ~ 1e-12 and rounding of the shift)
    a = data.draw(st.floats(0.1, 10.0))
    b = data.draw(st.floats(-300.0, 300.0)) * float(np.sqrt(c.x.var(axis=0)).min())
    scaled = train(a * c.x + b, c.dy, layer)
    var = c.x.var(axis=0)
    eps_effect = a * np.sqrt((var + EPS0) / (a * a * var + EPS0))  # 1 at eps = 0: eps is not scaled with x
    want = (base.y - c.beta) * eps_effect + c.beta
    assert rel_err(scaled.y, want, float(np.abs(base.y).max() + 1.0)) < 1e-12
    # batch permutation: BN(x[P]) = BN(x)[P], and the same for dx
    perm = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(n)
    permuted = train(c.x[perm], c.dy[perm], layer)
    assert rel_err(permuted.y, base.y[perm], float(np.abs(base.y).max() + 1.0)) < 1e-12
    sdx = _scales(c.x, c.dy, c.gamma, EPS0)[0]
    assert rel_err(permuted.dx, base.dx[perm], sdx) < 1e-11


# ---------------------------------------------------------------------------------------------
# Cancellation, ranges (items 4, 5, 6)


def test_cancellation_float32_offset_1e4() -> None:
    """Item 4: 1e4 + N(0,1), 256 x 16, float32: batch variance within 1e-3 of a float64 two-pass."""
    x = (1e4 + np.random.default_rng(4).standard_normal((256, 16))).astype(np.float32)
    got = train(x, x, bn_layer(np.ones(16, np.float32), np.zeros(16, np.float32)))
    x64 = x.astype(np.float64)
    want = ((x64 - x64.mean(0)) ** 2).mean(0)
    assert got.var.dtype == np.float32
    assert np.max(np.abs(got.var - want) / want) < 1e-3
    assert np.isfinite(got.y).all()
    np.testing.assert_allclose(got.y.std(axis=0), 1.0, atol=1e-3)


def test_cancellation_float64_offset_1e8() -> None:
    """Item 5: 1e8 + N(0,1), 64 x 4, float64: relative error < 1e-9 against a longdouble oracle."""
    x = 1e8 + np.random.default_rng(5).standard_normal((64, 4))
    got = train(x, x, bn_layer(np.ones(4), np.zeros(4)))
    xl = x.astype(np.longdouble)
    want = ((xl - xl.mean(0)) ** 2).mean(0)
    assert np.max(np.abs(got.var.astype(np.longdouble) - want) / want) < 1e-9
    mu_want = xl.mean(0)
    assert np.max(np.abs(got.mu.astype(np.longdouble) - mu_want)) <= np.spacing(1e8)  # within one ulp


@pytest.mark.parametrize("dtype,big", [(F32, 1e6), (F64, 1e12)], ids=["float32", "float64"])
@given(data=st.data())
def test_never_negative_never_nan(dtype: np.dtype[Any], big: float, data: st.DataObject) -> None:
    """Item 6: any finite input with |x| <= 1e6 (f32) or 1e12 (f64) and N >= 2."""
    n, k = data.draw(st.integers(2, 40)), data.draw(st.integers(1, 6))
    x = data.draw(arrays(dtype, (n, k), big))
    dy = data.draw(arrays(dtype, (n, k), 10.0))
    layer = bn_layer(np.ones(k, dtype), np.zeros(k, dtype))
    got = train(x, dy, layer)
    assert (got.var >= 0).all()
    for a in (got.y, got.mu, got.var, got.dx, got.dgamma, got.dbeta):
        assert np.isfinite(a).all()
    new = update_running(layer, got.grads)
    assert (new.var.array >= 0).all() and np.isfinite(new.var.array).all() and np.isfinite(new.mu.array).all()


# ---------------------------------------------------------------------------------------------
# Batch of one, inference, train/inference gap (items 9, 15, 16, 23)


def test_batch_of_one_in_training_is_a_value_range_error() -> None:
    """Item 9: lazybn's running variance is unbiased, so one sample per batch is refused (as torch)."""
    layer = bn_layer(np.ones(3), np.zeros(3))
    with pytest.raises(lb.ValueRangeError, match="more than 1 sample"):
        _pass(lb.matrix(np.ones((1, 3))), lb.matrix(np.eye(3)[:1]), [layer])
    with pytest.raises(lb.ValueRangeError, match="empty"):
        _pass(lb.matrix(np.ones((0, 3))), lb.matrix(np.ones((0, 3))), [layer])


def test_update_running_refuses_a_one_sample_batch_statistic() -> None:
    """bn_forward itself computes one row (var 0, out = beta); the running update refuses it, so the
    unbiased running variance can never become n/(n-1) = 1/0."""
    layer = bn_layer(np.ones(3), np.zeros(3))
    x = lb.matrix(np.arange(3.0).reshape(1, 3))
    _, mu, var = bn_forward(x, layer)
    with pytest.raises(lb.ValueRangeError, match="more than 1 sample"):
        update_running(layer, BN1(mu, var, mu, mu, 1))


@given(c=cases(max_n=16, max_c=8))
def test_inference_uses_the_stored_statistics_and_mutates_nothing(c: Case) -> None:
    """Item 15: y = gamma (x - rm) / sqrt(rv + eps) + beta; rows independent; a batch of one works."""
    n, k = map(int, c.x.shape)
    rng = np.random.default_rng(n * 100 + k)
    rm, rv = rng.standard_normal(k) * 3, rng.uniform(0.0, 4.0, k)
    layer = bn_layer(c.gamma, c.beta, mu=rm, var=rv)
    before = {name: getattr(layer, name).array.copy() for name in ("mu", "var", "gamma", "beta")}
    y = logits([layer], lb.matrix(c.x)).array
    want = c.gamma * (c.x - rm) / np.sqrt(rv + layer.eps) + c.beta
    assert rel_err(y, want, float(np.abs(want).max() + 1.0)) < 1e-13
    np.testing.assert_array_equal(logits([layer], lb.matrix(c.x)).array, y)  # bitwise repeatable
    for i in range(n):  # a batch of one works, and each row depends on that row only
        np.testing.assert_array_equal(logits([layer], lb.matrix(c.x[i:i + 1])).array[0], y[i])
    for name, arr in before.items():
        np.testing.assert_array_equal(getattr(layer, name).array, arr)


def test_inference_leaves_every_field_of_a_layer_as_it_was() -> None:
    """Item 15 for the other fields: a cumulative average's count, momentum, eps and flags."""
    layer = replace(bn_layer(np.ones(3), np.zeros(3), momentum=0.1), momentum=None, tracked=5)
    fields = {k: getattr(layer, k) for k in layer.__dataclass_fields__}
    x = lb.matrix(np.random.default_rng(15).standard_normal((4, 3)))
    for _ in range(3):
        logits([layer], x)
        lb.forward([layer], x)
    assert {k: getattr(layer, k) for k in layer.__dataclass_fields__} == fields
    assert layer.tracked == 5


def test_inference_path_gradient_is_elementwise() -> None:
    """Item 23, torch's deterministic case: channel 0 has running variance 0, eps=1e-4."""
    n, k = 5, 4
    x = np.arange(n * k, dtype=np.float64).reshape(n, k)
    gamma, rv = np.arange(1.0, k + 1), 2.0 * np.arange(k)
    layer = bn_layer(gamma, np.zeros(k), eps=1e-4, mu=np.full(k, 3.0), var=rv)
    dy = np.random.default_rng(23).standard_normal((n, k))
    y = logits([layer], lb.matrix(x)).array
    assert np.isfinite(y).all()
    h = 1e-4
    for i in range(n):
        for j in range(k):
            xp, xm = x.copy(), x.copy()
            xp[i, j] += h
            xm[i, j] -= h
            delta = (logits([layer], lb.matrix(xp)).array - logits([layer], lb.matrix(xm)).array) / (2 * h)
            # only element (i, j) moves: no coupling across rows or columns
            assert np.count_nonzero(delta) == 1 and delta[i, j] != 0
            fd = float((dy * delta).sum())
            np.testing.assert_allclose(fd, dy[i, j] * gamma[j] / np.sqrt(rv[j] + 1e-4), rtol=1e-6)


@pytest.mark.parametrize("unbiased", [True, False])
def test_train_inference_gap_with_momentum_one(unbiased: bool) -> None:
    """Item 16: with momentum 1 the running stats ARE the last batch's. With the unbiased running
    variance (lazybn's default, torch's) inference on that batch differs from training by exactly
    sqrt(N/(N-1)) as eps -> 0 (1.1547 for N=4); with unbiased=False (Keras/Flax) they agree."""
    x = np.array([[1.0, -3.0], [2.0, 0.5], [3.0, 7.0], [4.0, 2.0]])
    layer = bn_layer(np.array([1.5, 0.5]), np.zeros(2), eps=EPS0, momentum=1.0, unbiased=unbiased)
    t = train(x, x, layer)
    after = update_running(layer, t.grads)
    np.testing.assert_array_equal(after.mu.array, t.mu)
    inferred = logits([after], lb.matrix(x)).array
    ratio = np.sqrt(4 / 3) if unbiased else 1.0
    np.testing.assert_allclose(t.y, inferred * ratio, rtol=1e-10)
    if unbiased:
        assert abs(ratio - 1.1547005) < 1e-7


# ---------------------------------------------------------------------------------------------
# Degenerate batches, validation (items 11, 24)


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.sampled_from([2, 3, 7, 100, 1000, 4099]),
       c=st.sampled_from([0.1, -0.3, 1.0 / 3.0, 100.0, 12345.678, 3e7, -2.5e9, 1e-30]), comp=st.sampled_from(list(lb.Comp)))
def test_a_constant_channel_comes_out_as_beta(dtype: type, n: int, c: float, comp: lb.Comp) -> None:
    """Bug class 4: a channel whose every value is the same normalises to beta. In float32 exactly
    (batch mean the constant, variance 0), whatever the constant and the batch size: the mean is
    the float64 sum times 1/n in float64, rounded once (rounding the sum, or 1/n, to float32
    first puts the mean an ulp off, and that ulp's square became the variance: a constant 3e7
    gave beta - 1). In float64 the sum of n copies rounds, so the mean may be an ulp off, and
    the output moves from beta by at most gamma * ulp(c) / sqrt(eps)."""
    x: F = np.full((n, 3), dtype(c), dtype)
    x[:, 1] = np.linspace(-1.0, 1.0, n, dtype=dtype)  # a varying neighbour
    gamma: F = np.array([2.0, 1.0, 0.5], dtype)
    beta: F = np.array([0.25, -1.0, 3.0], dtype)
    out, mu, var = bn_forward(lb.matrix(x, comp=comp), bn_layer(gamma, beta))
    ulp = float(np.spacing(abs(dtype(c))))
    off = 0.0 if dtype is np.float32 else ulp
    for j in (0, 2):
        assert abs(float(mu.array[j]) - float(dtype(c))) <= off
        assert float(var.array[j]) <= off * off
        assert np.abs(out.array[:, j] - beta[j]).max() <= 1.01 * gamma[j] * off / np.sqrt(1e-5) + (2 * float(np.spacing(beta[j])) if off else 0.0)


def test_constant_feature_and_batch_of_two_give_finite_gradients() -> None:
    """Item 24: zero variance in a feature, and N=2, train without NaN and match finite differences."""
    rng = np.random.default_rng(24)
    for x in (np.column_stack([np.full(6, 5.0), rng.standard_normal(6), np.full(6, -1e3)]),
              rng.standard_normal((2, 3))):
        dy = rng.standard_normal(x.shape)
        gamma, beta = rng.uniform(0.5, 2.0, 3), rng.standard_normal(3)
        layer = bn_layer(gamma, beta)
        got = train(x, dy, layer)
        for a in (got.y, got.dx, got.dgamma, got.dbeta):
            assert np.isfinite(a).all()
        sdx, sdg, sdb = _scales(x, dy, gamma, layer.eps)
        assert rel_err(got.dx, fd_dx_full(x, dy, layer, h=1e-7), sdx) < FD_RTOL
        assert rel_err(got.dgamma, fd_param(x, dy, layer, "gamma"), sdg + 1e-300) < FD_RTOL
        assert rel_err(got.dbeta, fd_param(x, dy, layer, "beta"), sdb) < FD_RTOL
    # through the whole training pass and the running update
    x = np.column_stack([np.full(4, 2.0), np.arange(4.0)])
    layer = bn_layer(np.ones(2), np.zeros(2))
    dx, pred, grads = _pass(lb.matrix(x), lb.matrix(np.eye(2)[[0, 1, 0, 1]]), [layer])
    g = grads[0]
    assert isinstance(g, BN1)
    for a in (dx.array, pred.array, g.dgamma.array, g.dbeta.array):
        assert np.isfinite(a).all()
    new = update_running(layer, g)
    np.testing.assert_allclose(new.var.array, [0.9, 0.9 + 0.1 * np.var(np.arange(4.0), ddof=1)])


def test_channel_count_mismatch_is_rejected_before_computing() -> None:
    """Item 11: 9 parameters for 10 features, in training and inference; mismatched parameters."""
    layer = bn_layer(np.ones(9), np.zeros(9))
    x = lb.matrix(np.random.default_rng(11).standard_normal((4, 10)))
    before = lazybn.fuse.stats().launches
    with pytest.raises(lb.ShapeError) as train_err:
        _pass(x, lb.matrix(np.eye(10)[:4]), [layer])
    with pytest.raises(lb.ShapeError) as infer_err:
        logits([layer], x)
    assert lazybn.fuse.stats().launches == before  # rejected when the expression is built
    for e, op in ((train_err.value, "training pass"), (infer_err.value, "logits")):
        assert e.op == op and e.left == (4, 10) and e.right == (9,)
        assert "layer 0 (Batchnorm1d) takes 9 features" in str(e) and "10 columns" in str(e)
    with pytest.raises(lb.ShapeError, match="one length"):
        Batchnorm1d(lb.zeros(10, np.float64), lb.ones(11, np.float64), lb.ones(10, np.float64),
                    lb.zeros(10, np.float64))
    with pytest.raises(lb.RankError, match="expected a vector"):
        Batchnorm1d(lb.zeros((2, 2), np.float64), lb.ones(2, np.float64), lb.ones(2, np.float64),  # type: ignore[arg-type]
                    lb.zeros(2, np.float64))
    with pytest.raises(lb.RankError, match="must be matrices"):
        _pass(lb.vector(np.ones(9)), lb.matrix(np.eye(9)[:1]), [layer])  # type: ignore[arg-type]
    with pytest.raises(lb.ValueRangeError, match="eps"):
        bn_layer(np.ones(2), np.zeros(2), eps=0.0)
    with pytest.raises(lb.ValueRangeError, match="momentum"):
        bn_layer(np.ones(2), np.zeros(2), momentum=1.5)
    with pytest.raises(lb.ValueRangeError, match="negative"):
        bn_layer(np.ones(2), np.zeros(2), var=np.array([1.0, -1e-9]))


# ---------------------------------------------------------------------------------------------
# Layouts (item 25)


def _layouts(x: F) -> dict[str, F]:
    """The same values as ``x`` in other memory layouts, none of them C-contiguous and owned."""
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), x.dtype)
    wide[:, ::2] = x
    flipped = np.ascontiguousarray(x[::-1])
    readonly = x.copy()
    readonly.setflags(write=False)
    return {"fortran": np.asfortranarray(x), "strided": wide[:, ::2], "reversed": flipped[::-1],
            "transposed": np.ascontiguousarray(x.T).T, "read-only view": readonly[:]}


@settings(max_examples=20, deadline=None)
@given(c=cases(max_n=24, max_c=12), dtype=st.sampled_from([F32, F64]))
def test_any_input_layout_gives_the_contiguous_results_and_is_left_alone(c: Case, dtype: np.dtype[Any]) -> None:
    x, dy = c.x.astype(dtype), c.dy.astype(dtype)
    layer = bn_layer(c.gamma.astype(dtype), c.beta.astype(dtype))
    want = train(x, dy, layer)
    for name, xl in _layouts(x).items():
        for dyl in (dy, _layouts(dy)[name]):
            before = (xl.copy(), dyl.copy())
            got = train(xl, dyl, layer)
            for field in ("y", "mu", "var", "dx", "dgamma", "dbeta"):
                assert np.array_equal(getattr(got, field), getattr(want, field)), (name, field)
            assert np.array_equal(xl, before[0]) and np.array_equal(dyl, before[1]), f"{name}: input changed"


# Determinism, Seq vs Par (item 27)


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@settings(max_examples=12)  # a parallel launch costs ~0.1 s on a loaded 2-core machine
@given(c=cases(max_n=48, max_c=16))
def test_seq_and_par_agree(dtype: np.dtype[Any], c: Case) -> None:
    x, dy = c.x.astype(dtype), c.dy.astype(dtype)
    layer = bn_layer(c.gamma.astype(dtype), c.beta.astype(dtype))
    seq = train(x, dy, layer)
    with par_everywhere():
        par = train(x, dy, layer, comp=lb.Comp.Par)
        par_running = update_running(layer, par.grads)
    assert par.grads.batch_mu.comp is lb.Comp.Par  # the strategy travelled with the arrays
    seq_running = update_running(layer, seq.grads)
    fields = ("y", "mu", "var", "dx", "dgamma", "dbeta")
    sdx, sdg, sdb = _scales(x, dy, c.gamma, layer.eps)
    tol = PAR_RTOL[dtype]
    sizes = {"y": float(np.abs(seq.y).max()), "mu": float(np.abs(x).max()), "var": float(seq.var.max()),
             "dx": sdx, "dgamma": sdg, "dbeta": sdb}
    for f in fields:
        assert rel_err(getattr(par, f), getattr(seq, f), sizes[f] + 1e-30) < tol, f
    assert rel_err(par_running.var.array, seq_running.var.array, float(seq_running.var.array.max())) < tol


@pytest.mark.parametrize("comp", [lb.Comp.Seq, lb.Comp.Par], ids=str)
def test_training_is_bitwise_repeatable(comp: lb.Comp) -> None:
    """Item 27: the same inputs and state give bit-identical outputs, gradients and new state."""
    rng = np.random.default_rng(27)
    x, dy = rng.standard_normal((40, 12)) * 2 + 1, rng.standard_normal((40, 12))
    layer = bn_layer(rng.uniform(0.5, 2.0, 12), rng.standard_normal(12))
    with par_everywhere():
        runs = [train(x, dy, layer, comp=comp) for _ in range(2)]
        states = [update_running(layer, r.grads) for r in runs]
    for f in ("y", "mu", "var", "dx", "dgamma", "dbeta"):
        np.testing.assert_array_equal(getattr(runs[0], f), getattr(runs[1], f))
    np.testing.assert_array_equal(states[0].mu.array, states[1].mu.array)
    np.testing.assert_array_equal(states[0].var.array, states[1].var.array)


# ---------------------------------------------------------------------------------------------
# PyTorch oracle (optional): float64, functional batch_norm in training mode


def torch_oracle() -> Any:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def torch_batch_norm(torch: Any, x: F, dy: F, gamma: F, beta: F, rm: F, rv: F, momentum: float,
                     eps: float) -> tuple[F, F, F, F, F, F]:
    """(y, dx, dgamma, dbeta, new running mean, new running var) from torch's autograd."""
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tg = torch.tensor(gamma, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    trm, trv = torch.tensor(rm, dtype=torch.float64), torch.tensor(rv, dtype=torch.float64)
    y = torch.nn.functional.batch_norm(tx, trm, trv, weight=tg, bias=tb, training=True, momentum=momentum, eps=eps)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return (y.detach().numpy(), tx.grad.numpy(), tg.grad.numpy(), tb.grad.numpy(), trm.numpy(), trv.numpy())


@given(c=cases(), momentum=st.sampled_from([0.1, 0.5, 1.0]), eps=st.sampled_from([1e-5, 1e-3]))
def test_matches_pytorch_float64(c: Case, momentum: float, eps: float) -> None:
    torch = torch_oracle()
    k = int(c.x.shape[1])
    rng = np.random.default_rng(k)
    rm, rv = rng.standard_normal(k), rng.uniform(0.1, 3.0, k)
    layer = bn_layer(c.gamma, c.beta, eps=eps, momentum=momentum, mu=rm, var=rv)
    got = train(c.x, c.dy, layer)
    new = update_running(layer, got.grads)
    y, dx, dgamma, dbeta, trm, trv = torch_batch_norm(torch, c.x, c.dy, c.gamma, c.beta, rm, rv, momentum, eps)
    sdx, sdg, sdb = _scales(c.x, c.dy, c.gamma, eps)
    assert rel_err(got.y, y, float(np.abs(y).max())) < TORCH_RTOL
    assert rel_err(got.dx, dx, sdx) < TORCH_RTOL
    assert rel_err(got.dgamma, dgamma, sdg) < TORCH_RTOL
    assert rel_err(got.dbeta, dbeta, sdb) < TORCH_RTOL
    assert rel_err(new.mu.array, trm, float(np.abs(trm).max() + np.abs(rm).max())) < TORCH_RTOL
    assert rel_err(new.var.array, trv, float(np.abs(trv).max())) < TORCH_RTOL


def test_matches_pytorch_known_running_update() -> None:
    """Item 12 again, against torch itself: running (0.25, 1.0666667) from (0, 1), momentum 0.1."""
    torch = torch_oracle()
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    *_, trm, trv = torch_batch_norm(torch, x, x, np.ones(1), np.zeros(1), np.zeros(1), np.ones(1), 0.1, 1e-5)
    layer = bn_layer(np.ones(1), np.zeros(1))
    new = update_running(layer, train(x, x, layer).grads)
    np.testing.assert_allclose(new.mu.array, trm, rtol=1e-15)
    np.testing.assert_allclose(new.var.array, trv, rtol=1e-15)


def test_a_vector_only_par_kernel_is_planned_serial_even_at_threshold_zero() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lazybn.fuse, "PAR_THRESHOLD_BYTES", 0)
        running = lb.scale(0.9, lb.vector(np.ones(3), comp=lb.Comp.Par)) + lb.scale(0.1, lb.vector(np.zeros(3)))
        kernel = lazybn.fuse.plan([running.node], running.dtype, True)
    assert not kernel.par or "in prange(" in kernel.source


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eps_must_be_a_normal_number_of_the_layers_dtype(dtype: type[np.floating[Any]]) -> None:
    """eps is added to the variance in the layer's dtype: one that rounds to 0 there would divide a
    constant feature by 0 (NaN in training, infinity at inference), a subnormal one overflows the
    backward, one beyond the dtype's range is infinity. At the smallest normal eps a constant
    feature still trains finitely: out is beta and dx is gamma/sqrt(eps) times dy less its mean."""
    info = np.finfo(dtype)
    gamma, beta = np.array([1.5, 1.0], dtype), np.array([0.25, 0.0], dtype)
    for eps in (float(info.tiny) / 2, float(info.tiny) * 1e-10, float(info.max) * 10):
        if np.isinf(eps):
            continue  # float64's max * 10: refused as not a finite number, for any dtype
        with pytest.raises(lb.ValueRangeError, match=f"Batchnorm1d.eps: must be a normal {np.dtype(dtype)} number"):
            bn_layer(gamma, beta, eps=eps)
    eps = float(info.tiny)
    layer = bn_layer(gamma, beta, eps=eps)
    x: F = np.column_stack([np.full(3, 2.0), [1.0, 2.0, 4.0]]).astype(dtype)
    dy: F = np.array([[0.5, 0.1], [-0.25, 0.2], [1.0, 0.3]], dtype)
    got = train(x, dy, layer)
    assert all(np.isfinite(a).all() for a in (got.y, got.dx, got.dgamma, got.dbeta))
    np.testing.assert_array_equal(got.y[:, 0], beta[0])
    want = 1.5 / np.sqrt(eps) * (dy[:, 0].astype(np.float64) - dy[:, 0].astype(np.float64).mean())
    np.testing.assert_allclose(got.dx[:, 0], want, rtol=1e-5)
    assert np.isfinite(lb.logits([replace(layer, var=lb.zeros(2, dtype))], lb.matrix(x)).array).all()
