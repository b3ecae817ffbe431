"""Optimizers against plain numpy implementations of the textbook update rules."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazybn as lb
from lazybn import fuse
from lazybn.errors import DTypeError, LazybnError, ShapeError, ValueRangeError
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
from lazybn.optim import SGD, Adam, Momentum, Optimizer, OptState, RMSProp, UpdateMismatchError, init_state, update

from .helpers import DTYPES
from .net_helpers import assert_same_network, assert_same_state, assert_torch_steps_agree

F64 = np.ndarray[Any, np.dtype[np.float64]]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _net(rng: np.random.Generator, n0: int, n1: int, n2: int, dtype: np.dtype[Any],
         trainable: tuple[bool, bool, bool] = (True, True, True)) -> list[Layer]:
    def u(*shape: int) -> F64:
        return rng.uniform(-1.0, 1.0, shape)

    return [Linear(lb.matrix(u(n0, n1), dtype), lb.vector(u(n1), dtype), trainable[0]), Activation(Act.relu),
            Batchnorm1d(lb.vector(u(n1), dtype), lb.vector(u(n1) + 1.5, dtype), lb.vector(u(n1), dtype),
                        lb.vector(u(n1), dtype), trainable=trainable[1]),
            LinearNoBias(lb.matrix(u(n1, n2), dtype), trainable[2]), Dropout(0.5)]


def _grads(rng: np.random.Generator, layers: list[Layer], dtype: np.dtype[Any]) -> list[Gradients]:
    def g(shape: tuple[int, ...]) -> Any:
        x = rng.uniform(-1.0, 1.0, shape) * 10.0 ** rng.integers(-3, 2)
        return lb.matrix(x, dtype) if len(shape) == 2 else lb.vector(x, dtype)

    out: list[Gradients] = []
    for layer in layers:
        match layer:
            case Linear(w=w, b=b):
                out.append(LinearGradients(g(w.shape), g(b.shape)))
            case LinearNoBias(w=w):
                out.append(LinearNoBiasGradients(g(w.shape)))
            case Batchnorm1d(mu=mu):
                out.append(BN1(g(mu.shape), lb.vector(np.ones(mu.shape), dtype), g(mu.shape), g(mu.shape), 7))
            case _:
                out.append(NoGrad())
    return out


def _oracle(opt: Optimizer, p: F64, g: F64, slots: list[F64], lr: float, wd: float, t: int,
            sign: float = -1.0) -> tuple[F64, list[F64]]:
    """The textbook rule, in float64 numpy: ``p + sign * lr * direction``, with weight decay
    ``wd`` added to the gradient (L2) or, for AdamW, to the direction.

    Called with ``sign=+1`` on absolute values (|p|, |g|, the magnitude slots) it gives the
    magnitude each result's rounding error is relative to.
    """
    if isinstance(opt, Adam) and opt.decoupled_weight_decay:
        m = opt.beta1 * slots[0] + (1 - opt.beta1) * g
        v = opt.beta2 * slots[1] + (1 - opt.beta2) * g**2
        m_hat, v_hat = m / (1 - opt.beta1**t), v / (1 - opt.beta2**t)
        return p + sign * lr * (m_hat / (np.sqrt(v_hat) + opt.eps) + wd * p), [m, v]
    g = g + wd * p
    if isinstance(opt, SGD):
        return p + sign * lr * g, []
    if isinstance(opt, Momentum):
        v = opt.beta * slots[0] + g
        return p + sign * lr * v, [v]
    if isinstance(opt, Adam):
        m = opt.beta1 * slots[0] + (1 - opt.beta1) * g
        v = opt.beta2 * slots[1] + (1 - opt.beta2) * g**2
        m_hat, v_hat = m / (1 - opt.beta1**t), v / (1 - opt.beta2**t)
        return p + sign * lr * m_hat / (np.sqrt(v_hat) + opt.eps), [m, v]
    s = opt.rho * slots[0] + (1 - opt.rho) * g**2
    return p + sign * lr * g / (np.sqrt(s) + opt.eps), [s]


MOMENTS = {SGD: 0, Momentum: 1, RMSProp: 1, Adam: 2}


def _trainable(layer: Layer) -> list[str]:
    return {Linear: ["w", "b"], LinearNoBias: ["w"], Batchnorm1d: ["gamma", "beta"]}.get(type(layer), [])


def optimizers() -> st.SearchStrategy[Optimizer]:
    lr, mult = st.floats(1e-3, 0.5), st.floats(0.5, 20.0)
    beta = st.floats(0.0, 0.99)
    wd = st.just(0.0) | st.floats(1e-4, 0.5)
    decay = {"weight_decay": wd, "bn_weight_decay": wd}
    return st.one_of(
        st.builds(SGD, lr=lr, bn_lr_multiplier=mult, **decay),
        st.builds(Momentum, lr=lr, beta=beta, bn_lr_multiplier=mult, **decay),
        st.builds(Adam, lr=lr, beta1=beta, beta2=st.floats(0.5, 0.9999), eps=st.floats(1e-8, 1e-3),
                  bn_lr_multiplier=mult, decoupled_weight_decay=st.booleans(), **decay),
        st.builds(RMSProp, lr=lr, rho=beta, eps=st.floats(1e-8, 1e-3), bn_lr_multiplier=mult, **decay),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(opt=optimizers(), data=st.data())
def test_updates_match_numpy_over_several_steps(dtype: np.dtype[Any], opt: Optimizer, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n0, n1, n2 = (data.draw(st.integers(1, 5)) for _ in range(3))
    trainable = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    layers = _net(rng, n0, n1, n2, dtype, trainable)
    state = init_state(opt, layers)
    k = MOMENTS[type(opt)]
    # the oracle's state, per layer and trainable field: (param, moments) for the values and,
    # with sign=+1 on absolute values, for the magnitudes the rounding errors scale with
    want: list[dict[str, tuple[F64, list[F64]]]] = []
    mags: list[dict[str, tuple[F64, list[F64]]]] = []
    for layer in layers:
        arrays = {f: getattr(layer, f).array.astype(np.float64) for f in _trainable(layer)}
        want.append({f: (a, [np.zeros(a.shape)] * k) for f, a in arrays.items()})
        mags.append({f: (np.abs(a), [np.zeros(a.shape)] * k) for f, a in arrays.items()})
    for t in range(1, data.draw(st.integers(1, 4)) + 1):
        lr_scale = data.draw(st.floats(0.0, 2.0))
        grads = _grads(rng, layers, dtype)
        layers, state = update(opt, state, layers, grads, lr_scale=lr_scale)
        assert state.step == t
        for i, g in enumerate(grads):
            if not getattr(layers[i], "trainable", True):
                continue  # the oracle's parameter and moments stay as they are
            gs = [getattr(g, n) for n in {LinearGradients: ["dw", "db"], LinearNoBiasGradients: ["dw"],
                                          BN1: ["dgamma", "dbeta"]}.get(type(g), [])]
            bn = isinstance(layers[i], Batchnorm1d)
            lr = opt.lr * lr_scale * (opt.bn_lr_multiplier if bn else 1.0)
            wd = opt.bn_weight_decay if bn else opt.weight_decay
            for f, dp in zip(_trainable(layers[i]), gs):
                d = dp.array.astype(np.float64)
                want[i][f] = _oracle(opt, want[i][f][0], d, want[i][f][1], lr, wd, t)
                mags[i][f] = _oracle(opt, mags[i][f][0], np.abs(d), mags[i][f][1], lr, wd, t, sign=1.0)
    tol = TOL[dtype]
    for i, layer in enumerate(layers):
        for j, f in enumerate(_trainable(layer)):
            got = [getattr(layer, f), *state.slots[i][j * k:(j + 1) * k]]
            for what, a, w, mag in zip(["param", "moment", "moment"], got, [want[i][f][0], *want[i][f][1]],
                                       [mags[i][f][0], *mags[i][f][1]]):
                assert a.dtype == dtype
                err = np.abs(a.array.astype(np.float64) - w)
                assert (err <= tol * (mag + 1e-30)).all(), f"layer {i}.{f} {what}: got {a.array}, want {w}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_first_step_moves_each_parameter_by_lr(dtype: np.dtype[Any]) -> None:
    # m_hat = g and v_hat = g^2 at t = 1, so the step is lr * g / (|g| + eps) = lr * sign(g) (1 - O(eps/|g|))
    layers: list[Layer] = [LinearNoBias(lb.matrix([[1.0, 2.0], [3.0, 4.0]], dtype))]
    g = np.array([[0.5, -3.0], [1e-2, -1e3]])
    new, _ = update(Adam(lr=0.01), init_state(Adam(lr=0.01), layers), layers,
                    [LinearNoBiasGradients(lb.matrix(g, dtype))])
    assert isinstance(new[0], LinearNoBias)
    np.testing.assert_allclose(new[0].w.array, [[0.99, 2.01], [2.99, 4.01]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [lambda m: SGD(0.1, bn_lr_multiplier=m), lambda m: Momentum(0.1, bn_lr_multiplier=m)])
def test_bn_lr_multiplier_scales_only_gamma_and_beta(make: Any) -> None:
    rng = np.random.default_rng(1)
    dt = np.dtype(np.float64)
    layers = _net(rng, 3, 4, 2, dt)
    grads = _grads(rng, layers, dt)
    (one, _), (thousand, _) = (update(make(m), init_state(make(m), layers), layers, grads) for m in (1.0, 1000.0))
    for i, (a, b, old) in enumerate(zip(one, thousand, layers)):
        if isinstance(old, Batchnorm1d):
            assert isinstance(a, Batchnorm1d) and isinstance(b, Batchnorm1d)
            for f in ("gamma", "beta"):
                step_1 = getattr(a, f).array - getattr(old, f).array
                step_1000 = getattr(b, f).array - getattr(old, f).array
                np.testing.assert_allclose(step_1000, 1000 * step_1, rtol=1e-9)
        else:
            assert_same_network([b], [a])  # weights step the same, bit for bit


@pytest.mark.parametrize("make", [SGD, Momentum, Adam, RMSProp])
def test_a_zero_bn_lr_multiplier_keeps_gamma_and_beta(make: Any) -> None:
    """Three training steps: gamma and beta bit for bit as they were, the weights move, and (with
    a frozen layer) the batch-norm layer is as it was, whole."""
    rng = np.random.default_rng(4)
    for frozen in (False, True):
        layers = [dataclasses.replace(layer, frozen=frozen) if isinstance(layer, Batchnorm1d) else layer
                  for layer in lb.mlp((4, 3, 2), batchnorm=True, dtype=np.float64, seed=1)]
        opt = make(0.1, bn_lr_multiplier=0.0)
        state = init_state(opt, layers)
        first = layers
        for _ in range(3):
            x = lb.matrix(rng.normal(size=(8, 4)))
            step = lb.train_step(layers, opt, state, x, lb.matrix(np.eye(2)[rng.integers(0, 2, 8)]))
            layers, state = step.layers, step.opt_state
        bn_before, bn_after = first[1], layers[1]
        assert isinstance(bn_before, Batchnorm1d) and isinstance(bn_after, Batchnorm1d)
        for f in ("gamma", "beta") + (("mu", "var") if frozen else ()):
            assert getattr(bn_after, f).array.tobytes() == getattr(bn_before, f).array.tobytes(), (frozen, f)
        w_before, w_after = first[0], layers[0]
        assert isinstance(w_before, LinearNoBias) and isinstance(w_after, LinearNoBias)
        assert not np.array_equal(w_after.w.array, w_before.w.array)


@pytest.mark.parametrize("opt", [SGD(0.5), Momentum(0.5), Adam(0.5), RMSProp(0.5)])
def test_running_statistics_and_settings_are_untouched(opt: Optimizer) -> None:
    rng = np.random.default_rng(2)
    dt = np.dtype(np.float32)
    bn = Batchnorm1d(lb.vector([1.0, -2.0], dt), lb.vector([3.0, 0.5], dt), lb.ones(2, dt), lb.zeros(2, dt),
                     eps=1e-3, momentum=0.3, unbiased=False)
    layers: list[Layer] = [bn]
    new, _ = update(opt, init_state(opt, layers), layers, _grads(rng, layers, dt))
    nb = new[0]
    assert isinstance(nb, Batchnorm1d)
    assert nb.mu is bn.mu and nb.var is bn.var
    assert (nb.eps, nb.momentum, nb.unbiased) == (1e-3, 0.3, False)
    assert not np.array_equal(nb.gamma.array, bn.gamma.array)
    assert not np.array_equal(nb.beta.array, bn.beta.array)


@pytest.mark.parametrize("opt", [SGD(0.1), Momentum(0.1), Adam(), RMSProp()])
def test_update_does_not_mutate_its_arguments(opt: Optimizer) -> None:
    rng = np.random.default_rng(3)
    dt = np.dtype(np.float64)
    layers = _net(rng, 2, 3, 2, dt)
    state = init_state(opt, layers)
    layers2, state2 = update(opt, state, layers, _grads(rng, layers, dt))  # a state with non-zero moments
    snapshot_layers = [dataclasses.replace(x) for x in layers2]
    snapshot_state = OptState(state2.step, tuple(tuple(lb.Manifest(a.array.copy()) for a in s) for s in state2.slots))
    layers3, state3 = update(opt, state2, layers2, _grads(rng, layers2, dt))
    assert_same_network(layers2, snapshot_layers)
    assert_same_state(state2, snapshot_state)
    assert state3.step == state2.step + 1 and layers3 is not layers2
    with pytest.raises(dataclasses.FrozenInstanceError):
        state2.step = 7  # type: ignore[misc]


@pytest.mark.parametrize("opt", [SGD(0.1), Adam()])
def test_the_whole_update_is_one_kernel(opt: Optimizer) -> None:
    rng = np.random.default_rng(4)
    dt = np.dtype(np.float64)
    layers = _net(rng, 2, 3, 2, dt)
    grads = _grads(rng, layers, dt)
    state = init_state(opt, layers)
    update(opt, state, layers, grads)  # compile
    before = fuse.stats().launches
    update(opt, state, layers, grads)
    assert fuse.stats().launches - before == 1  # w, b, gamma, beta, w and their moments together


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", [Momentum(0.1, beta=0.9), Adam(1e-3, beta1=0.9, beta2=0.999), RMSProp(1e-3, rho=0.9)])
def test_moments_that_decay_below_the_smallest_normal_number_are_stored_as_zeros(dtype: np.dtype[Any],
                                                                                  opt: Optimizer) -> None:
    """A dead unit's moments decay geometrically (zero gradient); once a decayed moment is
    subnormal it is stored as a zero of its sign, and a normal one is the textbook decay."""
    tiny = np.finfo(dtype).tiny
    start = np.array([[1.0005, -1.05, 1.2], [2.0, -40.0, 1e6]], dtype) * tiny  # each a normal number
    layer = Linear(lb.matrix(np.ones((2, 3), dtype)), lb.vector(np.zeros(3, dtype)))
    # per parameter (w, then b), its moments: a first moment of either sign, a second one >= 0
    olds = {Momentum: [start], Adam: [start, np.abs(start)], RMSProp: [np.abs(start)]}[type(opt)]
    olds = olds + [o[0] for o in olds]
    state = OptState(3, (tuple(lb.matrix(o) if o.ndim == 2 else lb.vector(o) for o in olds),),
                     type(opt).__name__)  # type: ignore[arg-type]
    zero = LinearGradients(lb.matrix(np.zeros((2, 3), dtype)), lb.vector(np.zeros(3, dtype)))
    _, new = update(opt, state, [layer], [zero])
    decays = {Momentum: [0.9], Adam: [0.9, 0.999], RMSProp: [0.9]}[type(opt)]
    for got, decay, old in zip(new.slots[0], decays * 2, olds, strict=True):
        decayed = dtype.type(decay) * old  # the textbook moment, in the dtype: subnormal below tiny
        want = np.where(np.abs(decayed) < tiny, np.copysign(np.zeros_like(old), old), decayed)
        assert np.array_equal(np.signbit(got.array), np.signbit(want)), (got.array, want)
        np.testing.assert_allclose(got.array, want, rtol=4 * np.finfo(dtype).eps, atol=0)
        assert (np.abs(decayed) < tiny).any() and not ((got.array != 0) & (np.abs(got.array) < tiny)).any()


@pytest.mark.parametrize("make", [Adam, RMSProp])
def test_a_second_moment_is_kept_subnormal_when_eps_would_not_hide_its_root(make: Any) -> None:
    """float32, eps 1e-30 and a gradient of 1e-20 (its square, 1e-40, is subnormal): torch steps
    by about lr (Adam) or 3 lr (RMSProp); with v or s flushed to 0 the step would be g / eps."""
    torch = pytest.importorskip("torch")
    opt = make(1e-3, eps=1e-30)
    layers: list[Layer] = [Linear(lb.matrix(np.ones((2, 3), np.float32)), lb.vector(np.zeros(3, np.float32)))]
    grad = LinearGradients(lb.matrix(np.full((2, 3), 1e-20, np.float32)), lb.vector(np.full(3, 1e-20, np.float32)))
    p = torch.nn.Parameter(torch.ones(2, 3))
    theirs = (torch.optim.Adam([p], lr=1e-3, betas=(opt.beta1, opt.beta2), eps=1e-30) if isinstance(opt, Adam)
              else torch.optim.RMSprop([p], lr=1e-3, alpha=opt.rho, eps=1e-30))
    state = init_state(opt, layers)
    for _ in range(3):
        layers, state = update(opt, state, layers, [grad])
        p.grad = torch.full((2, 3), 1e-20)
        theirs.step()
    assert isinstance(layers[0], Linear)
    np.testing.assert_allclose(layers[0].w.array, p.detach().numpy(), rtol=1e-6)
    assert 0.99 < float(p.detach()[0, 0]) < 1.0  # the oracle's own step: small
    second = state.slots[0][1 if make is Adam else 0].array
    assert (second > 0).all() and (second < np.finfo(np.float32).tiny).all()  # stored as it is: subnormal


@pytest.mark.parametrize("beta1", [0.9, 0.99])
def test_a_flushed_first_moment_moves_its_parameter_by_less_than_the_documented_bound(beta1: float) -> None:
    """float32 Adam, eps 1e-30, first step, gradients that make m = (1 - beta1) g subnormal (stored
    as 0; v = (1 - beta2) g^2 underflows to 0 in torch too): lazybn leaves the weights where torch
    moves them by lr * g / eps, less than lr * tiny / ((1 - beta1^t) * eps), the bound the module
    states, and for most of them more than lr * tiny / eps (the bias correction counts)."""
    torch = pytest.importorskip("torch")
    lr, eps, tiny = 1.0, 1e-30, float(np.finfo(np.float32).tiny)
    g = np.linspace(0.05, 0.999, 6, dtype=np.float32).reshape(2, 3) * np.float32(tiny / (1 - beta1))
    opt = Adam(lr, beta1=beta1, eps=eps)
    layers: list[Layer] = [LinearNoBias(lb.matrix(np.zeros((2, 3), np.float32)))]  # 0: steps are exact
    new, state = update(opt, init_state(opt, layers), layers, [LinearNoBiasGradients(lb.matrix(g))])
    assert not state.slots[0][0].array.any()  # m flushed
    p = torch.nn.Parameter(torch.zeros(2, 3))
    p.grad = torch.from_numpy(g)
    torch.optim.Adam([p], lr=lr, betas=(beta1, 0.999), eps=eps).step()
    assert isinstance(new[0], LinearNoBias)
    lost = np.abs(new[0].w.array.astype(np.float64) - p.detach().numpy())
    bound = lr * tiny / ((1 - beta1) * eps)
    assert (lost < bound).all() and (lost > lr * tiny / eps).sum() >= 5, (lost, bound)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_negligible_root_says_whether_eps_hides_the_root_of_every_subnormal(dtype: np.dtype[Any],
                                                                           data: st.DataObject) -> None:
    """Around the bound (eps from 1/16 to 16 times it): where it says so, sqrt(c v) + eps is eps in
    the dtype for every subnormal v and correction c up to ``most``; 8 times below it, the largest
    subnormal's root shows."""
    from lazybn.optimizers import negligible_root

    info = np.finfo(dtype)
    most = data.draw(st.floats(1.0, 1e4))
    bound = 4 * np.sqrt(float(info.tiny) * most) / float(info.eps)
    eps = bound * data.draw(st.floats(1 / 16, 16))
    v = data.draw(st.floats(0.0, float(info.tiny), exclude_max=True, width=32 if info.bits == 32 else 64))  # subnormal
    c = data.draw(st.floats(1.0, most))

    def hidden(v: float, c: float) -> bool:  # as the step computes it, v kept
        return bool(np.sqrt(dtype.type(c) * dtype.type(v)) + dtype.type(eps) == dtype.type(eps))

    if negligible_root(dtype, eps, most):
        assert hidden(v, c) and hidden(np.nextafter(dtype.type(info.tiny), dtype.type(0)), most), (eps, most, v, c)
    if eps < bound / 8:
        assert not negligible_root(dtype, eps, most)
        assert not hidden(np.nextafter(dtype.type(info.tiny), dtype.type(0)), most)


def test_init_state_shapes() -> None:
    layers = _net(np.random.default_rng(5), 2, 3, 4, np.dtype(np.float32))
    for opt, k in ((SGD(0.1), 0), (Momentum(0.1), 1), (RMSProp(), 1), (Adam(), 2)):
        state = init_state(opt, layers)
        assert state.step == 0
        assert [len(s) for s in state.slots] == [2 * k, 0, 2 * k, k, 0]
        for s in state.slots:
            for a in s:
                assert a.dtype == np.float32 and not a.array.any()
        if k:
            assert state.slots[0][0].shape == (2, 3) and state.slots[0][k].shape == (3,)


def test_mismatched_layers_and_gradients_name_the_layer() -> None:
    rng = np.random.default_rng(6)
    dt = np.dtype(np.float32)
    layers = _net(rng, 2, 3, 2, dt)
    grads = _grads(rng, layers, dt)
    state = init_state(Adam(), layers)
    swapped = [grads[0], grads[1], grads[3], grads[2], grads[4]]
    with pytest.raises(UpdateMismatchError, match=r"layer 2 is a Batchnorm1d but its gradient is a "
                                                  r"LinearNoBiasGradients") as info:
        update(Adam(), state, layers, swapped)
    assert info.value.index == 2 and isinstance(info.value, LazybnError)
    with pytest.raises(UpdateMismatchError, match="layer 1 is an Activation but its gradient is a BN1"):
        update(Adam(), state, layers, [grads[0], grads[2], grads[2], grads[3], grads[4]])
    with pytest.raises(UpdateMismatchError, match="5 layers, 4 gradients"):
        update(Adam(), state, layers, grads[:4])
    with pytest.raises(UpdateMismatchError, match=r"layer 0 \(Linear\) but SGD needs 0"):
        update(SGD(0.1), OptState(0, state.slots), layers, grads)  # a state that does not say who made it
    bad = [LinearGradients(lb.matrix(np.ones((3, 2)), dt), lb.vector(np.ones(3), dt)), *grads[1:]]
    with pytest.raises(ShapeError, match=re.escape("update: layer 0 (Linear.w): shapes (2, 3) and (3, 2)")):
        update(Adam(), state, layers, bad)
    bad = [grads[0], grads[1], grads[2], LinearNoBiasGradients(lb.matrix(np.ones((3, 2)), np.float64)), grads[4]]
    with pytest.raises(DTypeError, match=re.escape("layer 3 (LinearNoBias.w): the gradient is float64")):
        update(Adam(), state, layers, bad)


def test_a_state_made_by_another_optimizer_is_refused_even_when_its_arrays_fit() -> None:
    rng = np.random.default_rng(8)
    dt = np.dtype(np.float32)
    layers = _net(rng, 2, 3, 2, dt)
    grads = _grads(rng, layers, dt)
    for made, used in ((RMSProp(), Momentum(0.1)), (Momentum(0.1), RMSProp()), (SGD(0.1), Momentum(0.1))):
        state = init_state(made, layers)
        assert state.optimizer == type(made).__name__
        with pytest.raises(UpdateMismatchError, match=f"made by {type(made).__name__}, not {type(used).__name__}"):
            update(used, state, layers, grads)
        _, later = update(made, state, layers, grads)
        assert later.optimizer == type(made).__name__  # a step keeps the record
    adam, adamw = init_state(Adam(), layers), Adam(weight_decay=1e-2, decoupled_weight_decay=True)
    assert update(adamw, adam, layers, grads)[1].optimizer == "Adam"  # AdamW keeps Adam's moments
    unrecorded = OptState(0, init_state(RMSProp(), layers).slots)  # built by hand: nothing to compare
    assert update(Momentum(0.1), unrecorded, layers, grads)[1].optimizer == "Momentum"
    with pytest.raises(lb.ArgumentError, match="OptState.optimizer: one of SGD, Momentum, RMSProp, Adam or None"):
        OptState(0, (), "Nadam")  # type: ignore[arg-type]


def test_a_state_made_for_another_network_is_refused_where_a_layer_does_not_train() -> None:
    """The moments of a layer that does not train are kept for when it trains again (and saved
    with the network): they too must have its parameters' shapes and dtype."""
    rng = np.random.default_rng(9)
    f64 = np.dtype(np.float64)
    net = _net(rng, 2, 3, 2, f64, trainable=(False, False, True))
    x, y = lb.matrix(rng.normal(size=(6, 2))), lb.matrix(np.eye(2)[rng.integers(0, 2, 6)])
    opt = Adam(0.01)
    state = init_state(opt, net)
    grads = lb.gradients(net, x, y, key=1).grads
    moved, _ = update(opt, state, net, grads)  # the state of this network fits
    assert_same_network(moved[:3], net[:3])
    wide = init_state(opt, _net(rng, 4, 5, 2, f64)).slots  # Linear(4, 5) and a batch norm of 5 features
    as32 = tuple(lb.Manifest(a.array.astype(np.float32)) for a in state.slots[0])
    for slots, error, match in (
            ((wide[0], *state.slots[1:]), ShapeError, "layer 0 (Linear.w): shapes (2, 3) and (4, 5)"),
            ((*state.slots[:2], wide[2], *state.slots[3:]), ShapeError,
             "layer 2 (Batchnorm1d.gamma): shapes (3,) and (5,)"),
            ((as32, *state.slots[1:]), DTypeError, "layer 0 (Linear.w): the optimizer state is float32")):
        bad = OptState(0, slots, "Adam")
        with pytest.raises(error, match=re.escape(match)):
            update(opt, bad, net, grads)
        with pytest.raises(error, match=re.escape(match)):
            lb.train_step(net, opt, bad, x, y, key=1)


@pytest.mark.parametrize("make,field,value", [
    (lambda: SGD(0.0), "SGD.lr", "0.0"),
    (lambda: SGD(-1.0), "SGD.lr", "-1.0"),
    (lambda: SGD(float("nan")), "SGD.lr", "nan"),
    (lambda: SGD(float("inf")), "SGD.lr", "inf"),
    (lambda: SGD(0.1, bn_lr_multiplier=-1.0), "SGD.bn_lr_multiplier", "-1.0"),
    (lambda: Adam(bn_lr_multiplier=float("inf")), "Adam.bn_lr_multiplier", "inf"),
    (lambda: Momentum(0.1, beta=1.0), "Momentum.beta", "1.0"),
    (lambda: Momentum(0.1, beta=-0.1), "Momentum.beta", "-0.1"),
    (lambda: Adam(beta1=1.0), "Adam.beta1", "1.0"),
    (lambda: Adam(beta2=1.5), "Adam.beta2", "1.5"),
    (lambda: Adam(eps=0.0), "Adam.eps", "0.0"),
    (lambda: Adam(lr=-1e-3), "Adam.lr", "-0.001"),
    (lambda: RMSProp(rho=1.0), "RMSProp.rho", "1.0"),
    (lambda: RMSProp(eps=-1e-8), "RMSProp.eps", "-1e-08"),
    (lambda: RMSProp(bn_lr_multiplier=float("nan")), "RMSProp.bn_lr_multiplier", "nan"),
    (lambda: SGD(True), "SGD.lr", "True"),
    (lambda: SGD(0.1, weight_decay=-1e-4), "SGD.weight_decay", "-0.0001"),
    (lambda: Momentum(0.1, weight_decay=float("inf")), "Momentum.weight_decay", "inf"),
    (lambda: RMSProp(bn_weight_decay=float("nan")), "RMSProp.bn_weight_decay", "nan"),
    (lambda: Adam(bn_weight_decay=-0.5), "Adam.bn_weight_decay", "-0.5"),
    (lambda: Adam(decoupled_weight_decay=1), "Adam.decoupled_weight_decay", "1"),  # type: ignore[arg-type]
    (lambda: SGD(10**400), "SGD.lr", "beyond the float range"),  # float() would raise OverflowError
    (lambda: Adam(weight_decay=-10**400), "Adam.weight_decay", "beyond the float range"),
])
def test_invalid_hyperparameters_are_rejected(make: Any, field: str, value: str) -> None:
    with pytest.raises(ValueRangeError, match=re.escape(field) + ".*" + re.escape(value)):
        make()


@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf"), pytest.param(10**400, id="int-1e400")])
def test_invalid_lr_scale_is_rejected(scale: float | int) -> None:
    layers: list[Layer] = [Activation(Act.relu)]
    with pytest.raises(ValueRangeError, match="lr_scale"):
        update(SGD(0.1), init_state(SGD(0.1), layers), layers, [NoGrad()], lr_scale=scale)


def _torch_twin(torch: Any, seed: int, trainable: bool = True) -> tuple[list[Layer], Any]:
    """Linear, ReLU, batch norm, Linear in float64, and the torch Sequential holding the same state
    (batch norm after the ReLU: a bias right in front of it gets a zero gradient, whose rounding
    noise Adam would magnify). ``trainable`` applies to the first Linear and the batch norm."""
    nn = torch.nn
    rng = np.random.default_rng(seed)
    f64 = np.float64
    layers: list[Layer] = [
        Linear(lb.matrix(rng.normal(size=(5, 4)), f64), lb.vector(rng.normal(size=4), f64), trainable),
        Activation(Act.relu),
        Batchnorm1d(lb.vector(rng.normal(size=4), f64), lb.vector(rng.uniform(0.5, 2.0, 4), f64),
                    lb.vector(rng.uniform(0.5, 2.0, 4), f64), lb.vector(rng.normal(size=4), f64), trainable=trainable),
        Linear(lb.matrix(rng.normal(size=(4, 3)), f64), lb.vector(rng.normal(size=3), f64))]
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in lb.to_torch(layers).items()}, strict=True)
    model[0].requires_grad_(trainable)
    model[2].requires_grad_(trainable)
    return layers, model


@pytest.mark.parametrize("opt", [
    SGD(0.1, bn_lr_multiplier=2.0, weight_decay=0.05, bn_weight_decay=0.02),
    Momentum(0.1, beta=0.8, weight_decay=0.05),
    Adam(0.01, weight_decay=0.1, bn_weight_decay=0.03),
    Adam(0.01, bn_lr_multiplier=0.5, weight_decay=0.1, bn_weight_decay=0.03, decoupled_weight_decay=True),
    RMSProp(0.01, weight_decay=0.05, bn_weight_decay=0.05),
])
def test_steps_with_weight_decay_equal_torchs_with_two_parameter_groups(opt: Optimizer) -> None:
    # torch's optimizers as the oracle: the linear layers' weights and biases in one parameter
    # group, batch norm's gamma and beta in another (its own lr and weight decay)
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    layers, model = _torch_twin(torch, 3)
    rng = np.random.default_rng(30)
    assert_torch_steps_agree(torch, model, layers, rng.normal(size=(8, 5)), rng.integers(0, 3, 8), opt, steps=3)


@pytest.mark.parametrize("make", [SGD, Momentum, Adam, RMSProp])
def test_weight_decay_alone_shrinks_each_group_by_its_own_factor(make: Any) -> None:
    # zero gradients: only the decay moves a parameter. SGD and Momentum's first step scale p by
    # 1 - lr * wd exactly; Adam with decoupled decay does the same (its moments stay 0, so its
    # Adam step is 0 / eps). Coupled Adam and RMSProp normalise wd * p: their first steps move
    # each nonzero entry by lr / sqrt(1 - beta2) (Adam: lr) towards 0, whatever wd.
    opt = make(0.1, weight_decay=0.5, bn_weight_decay=0.25)
    f64 = np.float64
    layers: list[Layer] = [LinearNoBias(lb.matrix([[1.0, -2.0], [4.0, 0.0]], f64)),
                           Batchnorm1d(lb.vector([0.0, 0.0], f64), lb.vector([1.0, 1.0], f64),
                                       lb.vector([2.0, -1.0], f64), lb.vector([0.5, 0.0], f64))]
    zero: list[Gradients] = [LinearNoBiasGradients(lb.matrix(np.zeros((2, 2)), f64)),
            BN1(lb.vector(np.zeros(2), f64), lb.vector(np.ones(2), f64), lb.vector(np.zeros(2), f64),
                lb.vector(np.zeros(2), f64), 4)]
    new, _ = update(opt, init_state(opt, layers), layers, zero)
    assert isinstance(new[0], LinearNoBias) and isinstance(new[1], Batchnorm1d)
    w, gamma, beta = layers[0].w.array, layers[1].gamma.array, layers[1].beta.array  # type: ignore[union-attr]
    if isinstance(opt, (SGD, Momentum)):
        np.testing.assert_allclose(new[0].w.array, w * (1 - 0.1 * 0.5), rtol=1e-15)
        np.testing.assert_allclose(new[1].gamma.array, gamma * (1 - 0.1 * 0.25), rtol=1e-15)
        np.testing.assert_allclose(new[1].beta.array, beta * (1 - 0.1 * 0.25), rtol=1e-15)
    else:
        step = 0.1 if isinstance(opt, Adam) else 0.1 / np.sqrt(1 - opt.rho)
        for got, p in ((new[0].w, w), (new[1].gamma, gamma), (new[1].beta, beta)):
            np.testing.assert_allclose(got.array, p - step * np.sign(p), rtol=1e-6)
        decoupled = Adam(0.1, weight_decay=0.5, bn_weight_decay=0.25, decoupled_weight_decay=True)
        new, _ = update(decoupled, init_state(decoupled, layers), layers, zero)
        assert isinstance(new[0], LinearNoBias) and isinstance(new[1], Batchnorm1d)
        np.testing.assert_allclose(new[0].w.array, w * (1 - 0.1 * 0.5), rtol=1e-15)
        np.testing.assert_allclose(new[1].gamma.array, gamma * (1 - 0.1 * 0.25), rtol=1e-15)


@given(seed=st.integers(0, 2**32 - 1), c=st.floats(0.1, 10.0))
def test_weights_in_front_of_batch_norm_are_scale_invariant(seed: int, c: float) -> None:
    # why bn_weight_decay is separate: batch norm after LinearNoBias makes the loss a function of
    # w's direction only. Scaling w by c leaves the predictions as they are, divides dw by c, and
    # dw is orthogonal to each column of w, so L2 decay there shrinks |w| without changing what
    # the network computes (the effective learning rate grows instead)
    from lazybn.network import _pass

    rng = np.random.default_rng(seed)
    f64 = np.float64
    w = rng.normal(size=(4, 3))
    x, tgt = lb.matrix(rng.normal(size=(8, 4)), f64), lb.matrix(np.eye(2)[rng.integers(0, 2, 8)], f64)
    rest: list[Layer] = [Batchnorm1d(lb.vector(np.zeros(3), f64), lb.vector(np.ones(3), f64),
                                     lb.vector(rng.uniform(0.5, 2.0, 3), f64), lb.vector(rng.normal(size=3), f64),
                                     eps=1e-12),
                         Activation(Act.relu),
                         Linear(lb.matrix(rng.normal(size=(3, 2)), f64), lb.vector(np.zeros(2), f64))]
    runs = [_pass(x, tgt, [LinearNoBias(lb.matrix(s * w, f64)), *rest]) for s in (1.0, c)]
    (_, pred1, g1), (_, pred_c, g_c) = runs
    dw1, dw_c = (g[0].dw.array for g in (g1, g_c))  # type: ignore[union-attr]
    np.testing.assert_allclose(pred_c.array, pred1.array, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(c * dw_c, dw1, rtol=1e-6, atol=1e-12 * np.abs(dw1).max())
    np.testing.assert_allclose((w * dw1).sum(axis=0), 0.0, atol=1e-9 * (np.abs(w) * np.abs(dw1)).sum())


@pytest.mark.parametrize("opt", [SGD(0.1, weight_decay=0.1, bn_weight_decay=0.1), Momentum(0.1, weight_decay=0.1),
                                 Adam(0.1, weight_decay=0.1, decoupled_weight_decay=True), RMSProp(0.1)])
def test_a_layer_that_is_not_trainable_keeps_its_parameters_and_moments(opt: Optimizer) -> None:
    rng = np.random.default_rng(4)
    f64 = np.dtype(np.float64)
    layers = _net(rng, 3, 4, 2, f64)
    layers, state = update(opt, init_state(opt, layers), layers, _grads(rng, layers, f64))  # moments not 0
    net = [dataclasses.replace(layer, trainable=False) if isinstance(layer, (Linear, Batchnorm1d)) else layer
           for layer in layers]
    before, layers = state, net
    for _ in range(3):
        layers, state = update(opt, state, layers, _grads(rng, layers, f64))
    for i in (0, 2):  # the Linear and batch norm's gamma and beta: bit for bit, and their moments
        assert_same_network([layers[i]], [net[i]])
        assert_same_state(OptState(0, state.slots[i:i + 1]), OptState(0, before.slots[i:i + 1]))
    new_w, old_w = (n.w.array for n in (layers[3], net[3]) if isinstance(n, LinearNoBias))
    assert not np.array_equal(new_w, old_w)  # the trainable layer moved
    if MOMENTS[type(opt)]:  # and so did its moments
        assert state.slots[3][0].array.tobytes() != before.slots[3][0].array.tobytes()
    # the flag may change between steps: the state still fits, and the layer trains again
    thawed = [dataclasses.replace(layer, trainable=True) if isinstance(layer, (Linear, Batchnorm1d)) else layer
              for layer in layers]
    moved, _ = update(opt, state, thawed, _grads(rng, thawed, f64))
    assert isinstance(moved[0], Linear) and isinstance(net[0], Linear)
    assert not np.array_equal(moved[0].w.array, net[0].w.array)


@pytest.mark.parametrize("opt", [SGD(0.1, weight_decay=0.05, bn_weight_decay=0.05),
                                 Adam(0.01, weight_decay=0.1, bn_weight_decay=0.1, decoupled_weight_decay=True)])
def test_parameters_that_are_not_trainable_match_torchs_requires_grad_false(opt: Optimizer) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    layers, model = _torch_twin(torch, 5, trainable=False)
    rng = np.random.default_rng(50)
    assert_torch_steps_agree(torch, model, layers, rng.normal(size=(8, 5)), rng.integers(0, 3, 8), opt, steps=3)


@pytest.mark.parametrize("make,theirs", [
    (lambda: Adam(), lambda torch, ps: torch.optim.Adam(ps)),  # torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8
    (lambda: RMSProp(), lambda torch, ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-8)),
    (lambda: Momentum(0.1), lambda torch, ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
], ids=["Adam", "RMSProp", "Momentum"])
def test_default_hyperparameters_step_as_the_documented_torch_optimizers(make: Any, theirs: Any) -> None:
    """The defaults the docs state (Adam: torch's; RMSProp: lr 1e-3, decay 0.9, eps 1e-8;
    Momentum: beta 0.9), through steps whose moments and bias corrections show every one of them."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    w0 = rng.normal(size=(3, 4))
    opt = make()
    layers: list[Layer] = [LinearNoBias(lb.matrix(w0, np.float64))]
    state = init_state(opt, layers)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    reference = theirs(torch, [p])
    for t in range(4):
        g = rng.normal(size=(3, 4)) * 10.0 ** rng.uniform(-9, 0, size=(3, 4))  # some near eps's scale
        layers, state = update(opt, state, layers, [LinearNoBiasGradients(lb.matrix(g, np.float64))])
        p.grad = torch.from_numpy(g)
        reference.step()
        assert isinstance(layers[0], LinearNoBias)
        np.testing.assert_allclose(layers[0].w.array, p.detach().numpy(), rtol=1e-13, atol=0, err_msg=f"step {t + 1}")


@pytest.mark.parametrize("step", [-1, -2**40, 1.0, True, "3", None])
def test_an_opt_state_refuses_a_step_that_is_not_a_count_of_updates(step: Any) -> None:
    with pytest.raises(ValueRangeError, match=re.escape(f"OptState.step: must be an integer >= 0, got {step!r}")):
        OptState(step, ())
    assert OptState(0, ()).step == 0 and OptState(2**40, ()).step == 2**40  # counts are accepted, however large


def test_an_opt_state_refuses_slots_that_are_not_tuples_of_lazybn_arrays() -> None:
    v = lb.vector(np.zeros(3))
    for bad in (((np.zeros(3),),), ([v],), ((v, np.zeros(3)),), ((v,), (lb.vector(np.zeros(2)) + 1.0,))):
        at = next(i for i, s in enumerate(bad) if not isinstance(s, tuple) or not all(isinstance(a, lb.Manifest) for a in s))
        with pytest.raises(lb.ArgumentError, match=re.escape(f"OptState.slots[{at}]: expected a tuple of lazybn Manifest")):
            OptState(0, bad)  # type: ignore[arg-type]
    assert OptState(1, ((v, v), ())).slots[0][1] is v


@pytest.mark.parametrize("make", [Adam, RMSProp])
@pytest.mark.parametrize("where", ["Linear.w", "Linear.b", "Batchnorm1d.gamma", "Batchnorm1d.beta"])
def test_a_second_moment_that_overflows_is_named_though_its_parameter_stays_finite(make: Any, where: str) -> None:
    """float32, one gradient entry of 1e30: its square overflows, so the average of squared
    gradients is inf while the parameter steps by g / inf = 0 and stays finite. The update refuses
    it, naming the layer, whether the moment belongs to a matrix or a vector."""
    f32 = np.dtype(np.float32)
    big = np.float32(1e30)
    decay = 0.999 if make is Adam else 0.9
    with np.errstate(over="ignore"):  # numpy's float32: the new moment is inf, the step is 0
        v = np.float32(1 - decay) * (big * big)
        assert np.isinf(v) and big / (np.sqrt(v) + np.float32(1e-8)) == 0
    layers: list[Layer] = [Linear(lb.matrix(np.ones((2, 3)), f32), lb.vector(np.ones(3), f32)), Activation(Act.relu),
                           Batchnorm1d(lb.zeros(3, f32), lb.ones(3, f32), lb.ones(3, f32), lb.zeros(3, f32))]
    arrays = {"Linear.w": np.zeros((2, 3), f32), "Linear.b": np.zeros(3, f32), "Batchnorm1d.gamma": np.zeros(3, f32),
              "Batchnorm1d.beta": np.zeros(3, f32)}
    arrays[where].flat[1] = big
    grads: list[Gradients] = [LinearGradients(lb.matrix(arrays["Linear.w"]), lb.vector(arrays["Linear.b"])), NoGrad(),
                              BN1(lb.zeros(3, f32), lb.ones(3, f32), lb.vector(arrays["Batchnorm1d.gamma"]),
                                  lb.vector(arrays["Batchnorm1d.beta"]), 4)]
    opt = make(1e-3)
    layer = 0 if where.startswith("Linear") else 2
    kind = where.split(".")[0]
    with pytest.raises(lb.NumericalError, match=re.escape(
            f"update at step 0: the update makes the optimizer state of layer {layer} ({kind}) non-finite "
            "(an average of squared gradients overflowed)")):
        update(opt, init_state(opt, layers), layers, grads)
    arrays[where].flat[1] = np.float32(1e15)  # its square, 1e30, fits: the step goes through
    grads = [LinearGradients(lb.matrix(arrays["Linear.w"]), lb.vector(arrays["Linear.b"])), NoGrad(),
             BN1(lb.zeros(3, f32), lb.ones(3, f32), lb.vector(arrays["Batchnorm1d.gamma"]),
                 lb.vector(arrays["Batchnorm1d.beta"]), 4)]
    _, state = update(opt, init_state(opt, layers), layers, grads)
    assert all(np.isfinite(a.array).all() for s in state.slots for a in s)


def test_adams_second_moment_is_kept_where_only_the_bias_correction_makes_its_root_show() -> None:
    """float32 Adam, eps 1e-11, gradients of 1e-18: v = (1 - beta2) g^2 = 1e-39 is subnormal. Its
    root is hidden by eps (sqrt(v) + eps == eps) but not once the bias correction, up to
    1 / (1 - beta2), multiplies it: so v is stored as torch stores it, not flushed to 0."""
    torch = pytest.importorskip("torch")
    eps, f32 = 1e-11, np.float32
    opt = Adam(1e-3, eps=eps)
    layers: list[Layer] = [LinearNoBias(lb.matrix(np.ones((2, 3)), np.float32))]
    p = torch.nn.Parameter(torch.ones(2, 3))
    theirs = torch.optim.Adam([p], lr=1e-3, betas=(opt.beta1, opt.beta2), eps=eps)
    state = init_state(opt, layers)
    g = np.full((2, 3), 1e-18, np.float32)
    for _ in range(3):
        layers, state = update(opt, state, layers, [LinearNoBiasGradients(lb.matrix(g))])
        p.grad = torch.from_numpy(g.copy())
        theirs.step()
    v = state.slots[0][1].array
    want = theirs.state[p]["exp_avg_sq"].numpy()
    assert (want > 0).all() and (want < np.finfo(np.float32).tiny).all()  # the oracle's v: subnormal
    np.testing.assert_allclose(v, want, rtol=1e-6)
    most = f32(1.0 / (1.0 - opt.beta2))
    assert (np.sqrt(v) + f32(eps) == f32(eps)).all()  # hidden by eps alone
    assert (np.sqrt(most * v) + f32(eps) != f32(eps)).all()  # but not at the largest bias correction
    assert isinstance(layers[0], LinearNoBias)
    np.testing.assert_allclose(layers[0].w.array, p.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_step_that_overflows_only_a_bias_is_refused_naming_it(dtype: np.dtype[Any]) -> None:
    """SGD with the dtype's largest learning rate and a zero weight gradient: numpy's b - lr * db
    overflows in the bias alone, w stays as it is. The update refuses the step, naming the bias."""
    lr = float(np.finfo(dtype).max)
    w, b, db = np.ones((2, 3), dtype), np.zeros(3, dtype), np.array([0.0, -4.0, 0.5], dtype)
    with np.errstate(over="ignore"):
        assert np.isfinite(w - dtype.type(lr) * np.zeros_like(w)).all()
        assert not np.isfinite(b - dtype.type(lr) * db).all()
    layers: list[Layer] = [Activation(Act.relu), Linear(lb.matrix(w), lb.vector(b))]
    grads: list[Gradients] = [NoGrad(), LinearGradients(lb.matrix(np.zeros_like(w)), lb.vector(db))]
    opt = SGD(lr)
    with pytest.raises(lb.NumericalError, match=re.escape("update at step 0: the update makes layer 1 (Linear) b "
                                                          "non-finite")):
        update(opt, init_state(opt, layers), layers, grads)


def test_a_state_with_another_number_of_layers_is_refused_by_update_and_train_step() -> None:
    rng = np.random.default_rng(12)
    f64 = np.dtype(np.float64)
    layers = _net(rng, 2, 3, 2, f64)
    grads = _grads(rng, layers, f64)
    x, y = lb.matrix(rng.normal(size=(4, 2))), lb.matrix(np.eye(2)[[0, 1, 1, 0]])
    state = init_state(Momentum(0.1), layers)
    for slots in (state.slots[:4], state.slots + ((),)):
        short = OptState(3, slots, "Momentum")
        with pytest.raises(UpdateMismatchError, match=f"5 layers, optimizer state for {len(slots)} layers"):
            update(Momentum(0.1), short, layers, grads)
        with pytest.raises(UpdateMismatchError, match=f"5 layers, optimizer state for {len(slots)} layers"):
            lb.train_step(layers, Momentum(0.1), short, x, y, key=1)


@pytest.mark.parametrize("opt", [SGD(0.1), Momentum(0.1, beta=0.5), Adam(0.1), RMSProp(0.1)])
def test_a_zero_lr_scale_keeps_the_parameters_and_still_counts_the_step_and_its_moments(opt: Optimizer) -> None:
    rng = np.random.default_rng(13)
    f64 = np.dtype(np.float64)
    layers = _net(rng, 2, 3, 2, f64)
    grads = _grads(rng, layers, f64)
    new, state = update(opt, init_state(opt, layers), layers, grads, lr_scale=0.0)
    assert_same_network(new, layers)
    assert state.step == 1
    g = grads[0].dw.array  # type: ignore[union-attr]
    match opt:  # the moments of w after one step from zero, in float64 numpy
        case Adam():
            want = [(1 - opt.beta1) * g, (1 - opt.beta2) * g * g]
        case RMSProp():
            want = [(1 - opt.rho) * g * g]
        case Momentum():
            want = [g]
        case SGD():
            want = []
    for got, w in zip(state.slots[0], want, strict=False):
        np.testing.assert_allclose(got.array, w, rtol=1e-14)
    assert len(state.slots[0]) == 2 * len(want)


@pytest.mark.parametrize("dtype", DTYPES)
@given(most=st.floats(1.0, 1e4), mantissa=st.floats(1.0, 2.0, exclude_max=True), above=st.booleans())
def test_negligible_root_is_never_wrong_in_the_binades_where_the_roots_reach_half_an_ulp(
        dtype: np.dtype[Any], most: float, mantissa: float, above: bool) -> None:
    """2^k is the largest power of two whose half ulp, 2^k * machine eps / 2, is at most the
    largest root sqrt(most * tiny). Across the binade [2^k, 2^(k+1)) half an ulp stays that size
    while eps doubles: the roots show, so negligible_root must say no. In the binade above, half
    an ulp exceeds every root: the dtype's arithmetic hides them, and negligible_root may say so."""
    from lazybn.optimizers import negligible_root

    info = np.finfo(dtype)
    k = math.floor(math.log2(2 * np.sqrt(float(info.tiny) * most) / float(info.eps)))
    eps = mantissa * 2.0 ** (k + above)
    if not above:
        assert not negligible_root(dtype, eps, most), (eps, most)
    else:
        largest = np.nextafter(dtype.type(info.tiny), dtype.type(0))
        assert np.sqrt(dtype.type(most) * largest) + dtype.type(eps) == dtype.type(eps), (eps, most)


def test_train_step_and_train_epoch_keep_the_record_of_the_optimizer_that_made_the_state() -> None:
    rng = np.random.default_rng(14)
    layers = lb.mlp((3, 4, 2), batchnorm=True, dtype=np.float64, seed=1)
    x, y = rng.normal(size=(6, 3)), np.eye(2)[rng.integers(0, 2, 6)]
    for made, other in ((RMSProp(), Momentum(0.1)), (Momentum(0.1), RMSProp()), (SGD(0.1), Momentum(0.1))):
        step = lb.train_step(layers, made, init_state(made, layers), lb.matrix(x), lb.matrix(y))
        assert step.opt_state.optimizer == type(made).__name__ and step.opt_state.step == 1
        with pytest.raises(UpdateMismatchError, match=f"made by {type(made).__name__}, not {type(other).__name__}"):
            lb.train_step(step.layers, other, step.opt_state, lb.matrix(x), lb.matrix(y))
        _, state, _ = lb.train_epoch(layers, made, init_state(made, layers), x, y, 3, None)
        assert state.optimizer == type(made).__name__ and state.step == 2
