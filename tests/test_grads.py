"""A network's gradient norm and its clipping (``lb.grad_norm``, ``lb.clip_grad_norm``) against
numpy (the norm of every parameter gradient concatenated, in float64) and PyTorch's
``clip_grad_norm_``; the batch statistics a ``BN1`` carries are not gradients and pass through."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import BN1, Gradients, LinearGradients, LinearNoBiasGradients, NoGrad

from .helpers import F

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]


@st.composite
def gradient_lists(draw: st.DrawFn) -> list[Gradients]:
    """One gradient per layer of a random network: every kind, empty ones (``trainable=False``),
    magnitudes from 1e-30 to 1e30, float32 and float64 (a network of one dtype, or mixed)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mixed = draw(st.booleans())
    dtype0: np.dtype[Any] = draw(st.sampled_from(DTYPES))
    out: list[Gradients] = []
    for _ in range(draw(st.integers(0, 5))):
        dtype: np.dtype[Any] = draw(st.sampled_from(DTYPES)) if mixed else dtype0
        size = 10.0 ** draw(st.integers(-30, 30))

        def a(*shape: int) -> F:
            return (rng.standard_normal(shape) * size).astype(dtype)

        n, m = draw(st.integers(0, 5)), draw(st.integers(1, 5))
        match draw(st.sampled_from(["Linear", "LinearNoBias", "BN1", "NoGrad"])):
            case "Linear":
                out.append(LinearGradients(lb.matrix(a(n, m)), lb.vector(a(m))))
            case "LinearNoBias":
                out.append(LinearNoBiasGradients(lb.matrix(a(n, m))))
            case "BN1":
                out.append(BN1(lb.vector(a(m)), lb.vector(np.abs(a(m))), lb.vector(a(n)), lb.vector(a(n)), 7))
            case _:
                out.append(NoGrad())
    return out


def _params(grads: list[Gradients]) -> list[F]:
    """The parameter gradients, written out independently of lazybn's own walk."""
    arrays: list[F] = []
    for g in grads:
        if isinstance(g, LinearGradients):
            arrays += [g.dw.array, g.db.array]
        elif isinstance(g, LinearNoBiasGradients):
            arrays.append(g.dw.array)
        elif isinstance(g, BN1):
            arrays += [g.dgamma.array, g.dbeta.array]
    return arrays


def _oracle_norm(grads: list[Gradients]) -> float:
    arrays = _params(grads)
    return float(np.linalg.norm(np.concatenate([a.astype(np.float64).ravel() for a in arrays]))) if arrays else 0.0


@settings(max_examples=80, deadline=None)
@given(gradient_lists(), st.sampled_from([0.5, 0.99, 1.01, 2.0]) | st.floats(1e-3, 1e3))
def test_norm_and_clip_match_numpy(grads: list[Gradients], fraction: float) -> None:
    want = _oracle_norm(grads)
    norm = lb.grad_norm(grads)
    assert norm == pytest.approx(want, rel=1e-12, abs=0.0)
    max_norm = want * fraction if want > 0 else fraction
    clipped, reported = lb.clip_grad_norm(grads, max_norm)
    assert reported == norm
    assert len(clipped) == len(grads)
    # the norm is the oracle's (checked above) up to rounding; a max_norm within that rounding of
    # it may go either way, so the reported norm decides, as the docs say
    if norm <= max_norm:  # nothing to clip: the very same gradients
        assert all(c is g for c, g in zip(clipped, grads))
        return
    c = max_norm / norm  # the norm as reported (equal to the oracle's within 1e-12, checked above)
    for got, old in zip(_params(clipped), _params(grads)):
        assert got.dtype == old.dtype and got.shape == old.shape
        tol = 4 * np.finfo(old.dtype).eps * np.abs(old.astype(np.float64) * c) + np.finfo(old.dtype).smallest_subnormal
        assert (np.abs(got - old.astype(np.float64) * c) <= tol).all()
    for new_g, old_g in zip(clipped, grads):
        assert type(new_g) is type(old_g)
        if isinstance(new_g, BN1) and isinstance(old_g, BN1):  # statistics are not gradients
            assert new_g.batch_mu is old_g.batch_mu and new_g.batch_var is old_g.batch_var and new_g.n == old_g.n
    tiny = min(np.finfo(a.dtype).tiny for a in _params(grads))
    if max_norm > 1e-30 and tiny < max_norm:  # far from underflow, the clipped norm is max_norm
        assert _oracle_norm(clipped) == pytest.approx(max_norm, rel=1e-5)


def test_matches_torchs_clip_grad_norm() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    dw, db, dg = rng.normal(0, 3, (6, 4)), rng.normal(0, 3, 4), rng.normal(0, 3, 4)
    grads: list[Gradients] = [LinearGradients(lb.matrix(dw), lb.vector(db)), NoGrad(),
                              BN1(lb.vector(dg), lb.vector(dg**2), lb.vector(dg), lb.vector(db), 3)]
    params = [torch.zeros(a.shape, dtype=torch.float64, requires_grad=True) for a in (dw, db, dg, db)]
    for p, a in zip(params, (dw, db, dg, db)):
        p.grad = torch.from_numpy(a.copy())
    total = float(torch.nn.utils.clip_grad_norm_(params, 2.5))
    clipped, norm = lb.clip_grad_norm(grads, 2.5)
    assert norm == pytest.approx(total, rel=1e-14)
    for got, p in zip(_params(clipped), params):
        assert p.grad is not None
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-6)  # torch divides by norm + 1e-6


def test_a_loop_of_your_own_clips_before_the_update() -> None:
    """Clipped gradients go into ``lb.update``; with SGD that is the step at lr · max_norm / norm."""
    rng = np.random.default_rng(0)
    layers = lb.mlp((5, 8, 3), batchnorm=True, seed=0, dtype=np.float64)
    x = lb.matrix(rng.normal(0, 1, (16, 5)))
    y = lb.matrix(np.eye(3)[rng.integers(0, 3, 16)])
    opt = lb.SGD(0.5)
    state = lb.init_state(opt, layers)
    p = lb.gradients(layers, x, y)
    clipped, norm = lb.clip_grad_norm(p.grads, 0.01)
    assert norm > 0.01
    new, _ = lb.update(opt, state, layers, clipped)
    scaled, _ = lb.update(lb.SGD(0.5 * 0.01 / norm), state, layers, p.grads)
    for a, b in zip(new, scaled):
        for name in ("w", "gamma", "beta"):
            if hasattr(a, name):
                np.testing.assert_allclose(getattr(a, name).array, getattr(b, name).array, rtol=1e-13, atol=1e-15)


def test_bad_arguments_are_named() -> None:
    g: list[Gradients] = [LinearNoBiasGradients(lb.matrix(np.ones((2, 2))))]
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(lb.ValueRangeError, match="max_norm: must be a finite number > 0"):
            lb.clip_grad_norm(g, bad)
    bad_type: Any = True
    with pytest.raises(lb.ValueRangeError, match="max_norm: expected a number"):
        lb.clip_grad_norm(g, bad_type)
    nan: list[Gradients] = [LinearNoBiasGradients(lb.matrix(np.array([[1.0, np.nan]])))]
    assert np.isnan(lb.grad_norm(nan))
    with pytest.raises(lb.NumericalError, match="norm is nan"):
        lb.clip_grad_norm(nan, 1.0)
    not_a_list: Any = lb.gradients(lb.mlp((2, 3), batchnorm=False, dtype=np.float64), lb.matrix(np.ones((2, 2))),
                                   lb.matrix(np.eye(3)[:2]))
    with pytest.raises(lb.ArgumentError, match="a PassResult's .grads"):
        lb.grad_norm(not_a_list)
    with pytest.raises(lb.ArgumentError, match=r"grads\[1\] is a Manifest"):
        lb.clip_grad_norm([NoGrad(), lb.vector([1.0])], 1.0)  # type: ignore[list-item]


def test_every_kind_of_gradient_counts_and_keeps_its_comp() -> None:
    """Each gradient kind contributes a comparable share of the norm (a skipped array shows), the
    arrays mix ``Comp.Seq`` and ``Comp.Par``, and each clipped array keeps its own ``Comp``."""
    rng = np.random.default_rng(9)
    seq, par = lb.Comp.Seq, lb.Comp.Par
    grads: list[Gradients] = [LinearGradients(lb.matrix(rng.normal(size=(3, 2)), None, par), lb.vector([0.7, -0.2])),
                              NoGrad(), BN1(lb.vector([5.0]), lb.vector([2.0]), lb.vector([-0.9], None, par),
                                            lb.vector([0.4]), 4),
                              LinearNoBiasGradients(lb.matrix(rng.normal(size=(1, 2)).astype(np.float32), None, par))]
    want = _oracle_norm(grads)
    for k in range(len(_params(grads))):  # leaving out any one array changes the norm by more than rounding
        rest = [a for j, a in enumerate(_params(grads)) if j != k]
        assert abs(float(np.linalg.norm(np.concatenate([a.astype(np.float64).ravel() for a in rest]))) - want) > 1e-3
    assert lb.grad_norm(grads) == pytest.approx(want, rel=1e-12)
    same, _ = lb.clip_grad_norm(grads, lb.grad_norm(grads))  # a norm of exactly max_norm is not clipped
    assert all(a is b for a, b in zip(same, grads))
    clipped, _ = lb.clip_grad_norm(grads, want / 2)
    comps = [a.comp for g in grads for a in _manifests(g)]
    assert comps == [par, seq, par, seq, par]
    assert [a.comp for g in clipped for a in _manifests(g)] == comps
    assert _oracle_norm(clipped) == pytest.approx(want / 2, rel=1e-6)


def _manifests(g: Gradients) -> list[lb.Manifest[Any]]:
    match g:
        case LinearGradients(dw=dw, db=db):
            return [dw, db]
        case LinearNoBiasGradients(dw=dw):
            return [dw]
        case BN1(dgamma=dgamma, dbeta=dbeta):
            return [dgamma, dbeta]
        case NoGrad():
            return []


def test_huge_finite_gradients_have_a_finite_norm_and_infinite_ones_are_refused() -> None:
    """float64 gradients whose squares overflow or underflow: the norm is still their norm, and
    clipping works (also where the norm itself is beyond float64); an infinite gradient is a
    NumericalError, like NaN."""
    big = np.array([[3e160, -4e160], [0.0, 1e150]])
    grads: list[Gradients] = [LinearNoBiasGradients(lb.matrix(big))]
    want = 1e160 * float(np.linalg.norm(big / 1e160))
    assert lb.grad_norm(grads) == pytest.approx(want, rel=1e-14)
    clipped, norm = lb.clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(want, rel=1e-14) and _oracle_norm(clipped) == pytest.approx(1.0, rel=1e-12)
    beyond: list[Gradients] = [LinearNoBiasGradients(lb.matrix(np.full((2, 2), 1e308)))]  # norm 2e308
    assert lb.grad_norm(beyond) == np.inf  # the norm itself is beyond float64, but it clips
    clipped, norm = lb.clip_grad_norm(beyond, 3.0)
    assert norm == np.inf
    np.testing.assert_allclose(np.concatenate(_params(clipped)).ravel(), np.full(4, 1.5), rtol=1e-14)
    tiny = np.array([[3e-170, -4e-170], [0.0, 1e-180]])  # squares below float64's range
    assert lb.grad_norm([LinearNoBiasGradients(lb.matrix(tiny))]) == pytest.approx(
        1e-170 * float(np.linalg.norm(tiny / 1e-170)), rel=1e-14, abs=0.0)  # approx's default abs=1e-12 passes 0
    assert lb.grad_norm([LinearNoBiasGradients(lb.matrix(np.zeros((2, 2))))]) == 0.0
    inf: list[Gradients] = [LinearNoBiasGradients(lb.matrix(np.array([[1.0, np.inf]])))]
    assert lb.grad_norm(inf) == np.inf
    with pytest.raises(lb.NumericalError, match="norm is inf"):
        lb.clip_grad_norm(inf, 1.0)


def test_a_numpy_max_norm_and_uncomputed_gradients() -> None:
    """``max_norm`` as a numpy float32 clips float64 gradients to it as exactly as a Python float;
    a gradient that is not a computed lazybn array is named, as ``update`` names it."""
    g: list[Gradients] = [LinearNoBiasGradients(lb.matrix(np.full((3, 3), 0.7)))]  # norm 2.1
    for max_norm in (np.float32(0.1), 0.1):
        clipped, _ = lb.clip_grad_norm(g, max_norm)  # type: ignore[arg-type]
        assert _oracle_norm(clipped) == pytest.approx(float(max_norm), rel=1e-14)
    m = lb.matrix(np.ones((2, 2)))
    for bad in (m * 2.0, np.ones((2, 2))):
        with pytest.raises(lb.ArgumentError, match=r"grads\[0\]\.dw must be a computed lazybn array"):
            lb.grad_norm([LinearNoBiasGradients(bad)])  # type: ignore[arg-type]


def test_a_sum_of_squares_in_float64s_subnormal_range_keeps_every_digit() -> None:
    """Squares of about 1e-320 are subnormal float64 numbers, with few significant digits left:
    the norm of such gradients is still their norm to 1e-14 (the exact decimal answer, 5e-160)."""
    for a in (np.array([[3e-160, 4e-160]]), np.array([[3e-160], [-4e-160]])):
        assert lb.grad_norm([LinearNoBiasGradients(lb.matrix(a))]) == pytest.approx(5e-160, rel=1e-14, abs=0.0)


def test_huge_gradients_of_one_sign_either_sign_have_their_norm() -> None:
    """The norm of gradients whose squares overflow does not depend on their signs: all-negative
    gradients have the norm of their magnitudes (5e160, from 3-4-5), and clip to max_norm."""
    for sign in (1.0, -1.0):
        a = sign * np.array([[3e160, 4e160]])
        grads: list[Gradients] = [LinearNoBiasGradients(lb.matrix(a))]
        assert lb.grad_norm(grads) == pytest.approx(5e160, rel=1e-14)
        clipped, norm = lb.clip_grad_norm(grads, 10.0)
        assert norm == pytest.approx(5e160, rel=1e-14)
        np.testing.assert_allclose(_params(clipped)[0], sign * np.array([[6.0, 8.0]]), rtol=1e-14)
