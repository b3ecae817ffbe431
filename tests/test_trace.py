"""``@fused``: a replay must give exactly what running the body gives, or not replay at all.

The oracle is the undecorated body (``f.__wrapped__``, or the whole library with
``lazybn.trace.REPLAY`` off): replays call the same kernels, so results must be bit-identical.
The opaque cases are bodies a replay could not reproduce (values read in Python, arrays from
outside the arguments, fresh random masks): after a first call, they must still follow their
data. Dynamic arguments (per-step scalars) must reach the kernels on every replay, and any
Python use of them must fail loudly instead.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazybn as lb
from lazybn import fuse, trace
from lazybn.array import Delayed, Ix2, Matrix
from lazybn.layers import Batchnorm1d
from lazybn.network import bn_backward, bn_forward
from lazybn.optim import init_state
from lazybn.trace import fused

from .net_helpers import assert_bitwise, assert_same_network, assert_same_state

DTYPES: list[np.dtype[Any]] = [np.dtype(np.float32), np.dtype(np.float64)]


def _m(rng: np.random.Generator, shape: tuple[int, int], dtype: np.dtype[Any],
       comp: lb.Comp = lb.Comp.Seq) -> Matrix:
    return lb.matrix(rng.standard_normal(shape), dtype, comp)


def _v(rng: np.random.Generator, n: int, dtype: np.dtype[Any], low: float = -2.0) -> lb.Vector:
    return lb.vector(rng.uniform(low, 2.0, n), dtype)


def _replays() -> int:
    return fuse.stats().replays


@given(n=st.integers(2, 12), d=st.integers(1, 9), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       par=st.booleans())
def test_batchnorm_replay_is_bitwise_the_body(n: int, d: int, dtype: np.dtype[Any], seed: int, par: bool) -> None:
    rng = np.random.default_rng(seed)
    comp = lb.Comp.Par if par else lb.Comp.Seq
    for call in range(3):  # the first call may trace; later ones replay, with new data each time
        layer = Batchnorm1d(_v(rng, d, dtype), _v(rng, d, dtype, 0.1), _v(rng, d, dtype), _v(rng, d, dtype))
        x, dz = _m(rng, (n, d), dtype, comp), _m(rng, (n, d), dtype, comp)
        before = _replays()
        got_f = bn_forward(x, layer)
        got_b = bn_backward(dz, x, layer, got_f[1], got_f[2])
        if call:
            assert _replays() == before + 2
        want_f = bn_forward.__wrapped__(x, layer)  # type: ignore[attr-defined]
        want_b = bn_backward.__wrapped__(dz, x, layer, want_f[1], want_f[2])  # type: ignore[attr-defined]
        got: list[lb.Manifest[Any]] = [*got_f, *got_b]
        want: list[lb.Manifest[Any]] = [*want_f, *want_b]
        for what, g, w in zip(("out", "mu", "var", "dx", "dgamma", "dbeta"), got, want):
            assert_bitwise(g, w, what)
            assert g.comp is w.comp


def _train(layers: list[lb.Layer], opt: lb.Optimizer, xs: list[Matrix], ys: list[Matrix],
           dropout: bool) -> tuple[list[lb.Layer], lb.OptState, list[float], list[Matrix]]:
    state = init_state(opt, layers)
    losses, preds = [], []
    for k, (x, y) in enumerate(zip(xs, ys)):
        r = lb.train_step(layers, opt, state, x, y, key=k if dropout else None)
        layers, state = r.layers, r.opt_state
        losses.append(r.loss)
        preds.append(r.pred)
    return layers, state, losses, preds


@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), batchnorm=st.booleans(),
       dropout=st.sampled_from([0.0, 0.3]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       opt=st.sampled_from([lb.SGD(0.1), lb.Momentum(0.05), lb.Adam(0.01), lb.RMSProp(0.01)]),
       momentum=st.sampled_from([0.1, None]), renorm=st.sampled_from([None, lb.Renorm(), lb.Renorm(1.5, 0.5)]))
def test_training_with_replay_is_bitwise_training_without(sizes: list[int], batchnorm: bool, dropout: float,
                                                         dtype: np.dtype[Any], seed: int, opt: lb.Optimizer,
                                                         momentum: float | None, renorm: lb.Renorm | None) -> None:
    """Batch norm with a momentum or a cumulative average (whose count changes every step), with or
    without batch renormalisation."""
    rng = np.random.default_rng(seed)
    n = 5
    xs = [_m(rng, (n, sizes[0]), dtype) for _ in range(4)]
    ys = [lb.matrix(np.eye(sizes[-1])[rng.integers(0, sizes[-1], n)], dtype) for _ in range(4)]
    net = lb.mlp(sizes, batchnorm=batchnorm, seed=seed % 1000, dtype=dtype, dropout=dropout, momentum=momentum,
                 renorm=renorm if batchnorm else None)
    got = _train(net, opt, xs, ys, dropout > 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "REPLAY", False)
        want = _train(net, opt, xs, ys, dropout > 0)
    assert_same_network(got[0], want[0])
    assert_same_state(got[1], want[1])
    assert got[2] == want[2]
    for g, w in zip(got[3], want[3]):
        assert_bitwise(g, w, "pred")


def test_a_training_step_replays_after_the_first() -> None:
    rng = np.random.default_rng(0)
    net = lb.mlp((6, 5, 3), batchnorm=True, seed=0)
    opt = lb.SGD(0.1)
    state = init_state(opt, net)
    x, y = _m(rng, (8, 6), np.dtype(np.float32)), lb.matrix(np.eye(3)[rng.integers(0, 3, 8)], np.float32)
    for _ in range(2):
        r = lb.train_step(net, opt, state, x, y)
        net, state = r.layers, r.opt_state
    s0 = fuse.stats()
    lb.train_step(net, opt, state, x, y)
    s1 = fuse.stats()
    assert s1.traces == s0.traces, "a step with the same shapes traced again"
    assert s1.replays - s0.replays == 1  # pass, loss, optimizer and running statistics: one replay


# --- what a replay must not get wrong ----------------------------------------------------------

@fused
def _add(a: Matrix, b: Matrix) -> Matrix:
    return lb.compute(a + b)


def test_which_arguments_are_the_same_array_is_part_of_the_signature() -> None:
    rng = np.random.default_rng(1)
    x, y = _m(rng, (3, 4), np.dtype(np.float64)), _m(rng, (3, 4), np.dtype(np.float64))
    for a, b in [(x, x), (x, y), (y, y), (y, x), (x, x)]:
        np.testing.assert_array_equal(_add(a, b).array, a.array + b.array)


@fused
def _scaled(a: Matrix, s: float) -> Matrix:
    return lb.compute(lb.scale(s, a) + 1.0)


def test_plain_values_are_part_of_the_signature() -> None:
    x = lb.matrix(np.arange(6.0).reshape(2, 3))
    for s in (2.0, 3.0, 2.0, -1.0, 3.0):
        np.testing.assert_array_equal(_scaled(x, s).array, s * x.array + 1.0)


@dataclass(frozen=True)
class _Divisor:
    s: float


@fused
def _divided(a: Matrix, s: float, d: _Divisor) -> Matrix:
    return lb.compute(a / s + lb.delay(a) / d.s)


def test_floats_are_part_of_the_signature_bit_for_bit() -> None:
    x = lb.matrix(np.ones((2, 3)))
    for s, t in [(0.0, 1.0), (-0.0, 1.0), (0.0, 1.0), (1.0, 0.0), (1.0, -0.0), (1.0, 0.0), (-0.0, -0.0)]:
        with np.errstate(divide="ignore", invalid="ignore"):
            want = x.array / s + x.array / t
        np.testing.assert_array_equal(_divided(x, s, _Divisor(t)).array, want)  # 1/-0.0 is -inf, not inf


def _nan(bits: int) -> float:
    return float(np.array(bits, np.uint64).view(np.float64))


def test_nans_of_another_sign_or_payload_are_other_signatures() -> None:
    """A NaN's sign and payload reach the kernel (x * -nan is a NaN with the sign bit set): each
    NaN is its own signature, bit for bit, and none equals a float with its bits' value (the NaN
    0x7ff8000000000000 and the float 9221120237041090560.0)."""
    x = lb.matrix(np.ones((2, 3)))
    values = [math.nan, -math.nan, _nan(0x7FF8000000000123), _nan(0xFFF8000000000456), float(0x7FF8000000000000)]
    for s in values + values + values[::-1]:  # twice each: the second call replays (and writes a guard)
        got, want = _scaled(x, s), _scaled.__wrapped__(x, s)  # type: ignore[attr-defined]
        assert got.array.tobytes() == want.array.tobytes(), (s, got.array.view(np.uint64))
        assert got.array.view(np.uint64)[0, 0] == np.array(s).view(np.uint64), s  # s * 1.0 + 1.0 is s


def test_shapes_and_dtypes_are_part_of_the_signature() -> None:
    rng = np.random.default_rng(2)
    for shape, dtype in [((2, 3), DTYPES[0]), ((3, 2), DTYPES[0]), ((2, 3), DTYPES[1]), ((2, 3), DTYPES[0])]:
        a, b = _m(rng, shape, dtype), _m(rng, shape, dtype)
        got = _add(a, b)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.array, a.array + b.array)


@fused
def _peeks(a: Matrix) -> Matrix:
    s = float(a.array.sum())  # reads values in Python: no replay could repeat this
    return lb.compute(a + s)


_outside: dict[str, Matrix] = {}


@fused
def _reads_outside(a: Matrix) -> Matrix:
    return lb.compute(a + _outside["m"])


@fused
def _numpy_result(a: Matrix) -> Matrix:
    return lb.matrix(np.asarray(a) * 2.0, a.dtype)


@fused
def _delayed_arg(a: Delayed[Ix2]) -> Matrix:
    return lb.compute(a * 2.0)


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_bodies_a_replay_cannot_repeat_always_run() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        a = _m(rng, (2, 3), np.dtype(np.float64))
        before = _replays()
        np.testing.assert_array_equal(_peeks(a).array, a.array + a.array.sum())
        _outside["m"] = _m(rng, (2, 3), np.dtype(np.float64))
        np.testing.assert_array_equal(_reads_outside(a).array, a.array + _outside["m"].array)
        np.testing.assert_array_equal(_numpy_result(a).array, a.array * 2.0)
        np.testing.assert_array_equal(_delayed_arg(a + 1.0).array, (a.array + 1.0) * 2.0)
        assert _replays() == before
    assert all(p is None for p in _peeks.programs.values())  # type: ignore[attr-defined]


@fused
def _outer(a: Matrix, b: Matrix) -> Matrix:
    return lb.compute(_add(a, b) * 2.0)


def test_a_fused_call_inside_a_trace_is_part_of_it() -> None:
    rng = np.random.default_rng(4)
    a, b = _m(rng, (2, 2), np.dtype(np.float64)), _m(rng, (2, 2), np.dtype(np.float64))
    _add(a, b)  # the inner function has its own program already
    for _ in range(3):
        a, b = _m(rng, (2, 2), np.dtype(np.float64)), _m(rng, (2, 2), np.dtype(np.float64))
        np.testing.assert_array_equal(_outer(a, b).array, (a.array + b.array) * 2.0)


@fused
def _transposed_product(a: Matrix, b: Matrix) -> tuple[Matrix, Matrix]:
    p = lb.matmul(lb.transpose(a), b)
    return p, lb.compute(p + 1.0)


def test_matmul_and_transpose_are_replayed() -> None:
    rng = np.random.default_rng(5)
    for _ in range(3):
        a, b = _m(rng, (4, 3), np.dtype(np.float64)), _m(rng, (4, 2), np.dtype(np.float64))
        p, q = _transposed_product(a, b)
        np.testing.assert_array_equal(p.array, a.array.T @ b.array)
        np.testing.assert_array_equal(q.array, a.array.T @ b.array + 1.0)
        assert not p.array.flags.writeable and not q.array.flags.writeable
    assert any(p is not None for p in _transposed_product.programs.values())  # type: ignore[attr-defined]


@fused
def _views(a: Matrix) -> tuple[Matrix, Matrix, lb.Vector]:
    t = lb.transpose(a)
    return t, lb.compute(lb.delay(t) * 2.0), lb.reshape(t, a.shape[0] * a.shape[1])


def test_replayed_transposes_and_reshapes_are_views_of_the_argument() -> None:
    """As in the body, a replay's ``transpose`` and ``reshape`` are views of the call's array (no
    copy). A (1, 3) matrix's transpose is contiguous, so it can be reshaped."""
    rng = np.random.default_rng(6)
    for _ in range(3):
        a = _m(rng, (1, 3), np.dtype(np.float64))
        t, doubled, flat = _views(a)
        np.testing.assert_array_equal(t.array, a.array.T)
        np.testing.assert_array_equal(doubled.array, 2.0 * a.array.T)
        np.testing.assert_array_equal(flat.array, a.array.reshape(-1))
        assert np.shares_memory(t.array, a.array) and np.shares_memory(flat.array, a.array)
    assert any(p is not None for p in _views.programs.values())  # type: ignore[attr-defined]


@fused
def _asked_twice(a: Matrix) -> tuple[Matrix, ...]:
    doubled = lb.delay(a) * 2.0
    return lb.compute_all(doubled, lb.delay(a) + 1.0, doubled, lb.delay(a) * 2.0)


def test_a_replay_answers_an_expression_asked_for_twice_from_one_output() -> None:
    """compute_all computes an expression asked for twice once (the kernel writes fewer outputs
    than it answers): its replays hand each answer the output that holds it."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        a = _m(rng, (2, 3), np.dtype(np.float64))
        got = _asked_twice(a)
        for g, want in zip(got, (2.0 * a.array, a.array + 1.0, 2.0 * a.array, 2.0 * a.array)):
            np.testing.assert_array_equal(g.array, want)
    assert any(p is not None for p in _asked_twice.programs.values())  # type: ignore[attr-defined]


@fused
def _with_an_empty_result(a: Matrix) -> tuple[Matrix, Matrix]:
    return lb.compute(lb.delay(a) * 2.0), lb.matrix(np.zeros((0, 3)), comp=lb.Comp.Par)


def test_an_empty_result_is_replayed_with_its_shape_dtype_and_comp() -> None:
    """An empty array holds no values, so a replay may return a fresh one: of the traced shape,
    dtype and computation strategy."""
    rng = np.random.default_rng(8)
    for _ in range(3):
        a = _m(rng, (2, 3), np.dtype(np.float64))
        doubled, empty = _with_an_empty_result(a)
        np.testing.assert_array_equal(doubled.array, 2.0 * a.array)
        assert empty.shape == (0, 3) and empty.dtype == np.float64 and empty.comp is lb.Comp.Par
    assert any(p is not None for p in _with_an_empty_result.programs.values())  # type: ignore[attr-defined]


def test_errors_are_not_cached() -> None:
    rng = np.random.default_rng(6)
    a, b = _m(rng, (2, 3), np.dtype(np.float64)), _m(rng, (3, 2), np.dtype(np.float64))
    for _ in range(2):
        with pytest.raises(lb.ShapeError):
            _add(a, b)


def test_constructors_in_the_result_still_validate_on_replay() -> None:
    rng = np.random.default_rng(7)
    d = 3
    layer = Batchnorm1d(_v(rng, d, DTYPES[1]), _v(rng, d, DTYPES[1], 0.1), _v(rng, d, DTYPES[1]), _v(rng, d, DTYPES[1]))
    grads = lb.BN1(_v(rng, d, DTYPES[1]), _v(rng, d, DTYPES[1], 0.1), _v(rng, d, DTYPES[1]), _v(rng, d, DTYPES[1]), 4)
    opt = lb.SGD(0.1)
    state = init_state(opt, [layer])
    lb.optim.update(opt, state, [layer], [grads])
    lb.optim.update(opt, state, [layer], [grads])  # replayed
    bad = lb.BN1(grads.batch_mu, grads.batch_var, lb.vector([np.nan] * d, DTYPES[1]), grads.dbeta, 4)
    with pytest.raises(lb.NumericalError, match="gamma") as info:  # update names the layer
        lb.optim.update(opt, state, [layer], [bad])
    assert isinstance(info.value.__cause__, lb.ValueRangeError)  # the replayed constructor refused it


def test_parallel_programs_replay() -> None:
    rng = np.random.default_rng(8)
    n, d = 1024, 1024  # 4 MiB of float32: at the Par threshold
    for _ in range(2):
        a, b = _m(rng, (n, d), np.dtype(np.float32), lb.Comp.Par), _m(rng, (n, d), np.dtype(np.float32))
        assert fuse.plan([(a + b).node], a.dtype, True).par  # the parallel kernel
        got = _add(a, b)
        assert got.comp is lb.Comp.Par
        np.testing.assert_array_equal(got.array, a.array + b.array)


def test_signatures_are_bounded_and_the_least_recently_used_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound a new signature evicts the least recently used one that no guard checks:
    the guarded signatures (the first replayed) and the latest ones still replay, the earliest
    unguarded ones trace again, and a replay makes a signature the most recently used."""
    monkeypatch.setattr(trace, "REGUARD", 10**9)  # the first signatures keep their guards
    _scaled.programs.clear()  # type: ignore[attr-defined]  # this test's signatures only
    _scaled.guards.clear()  # type: ignore[attr-defined]
    x = lb.matrix(np.ones((1, 1)))
    n, g = trace.MAX_SIGNATURES, trace.MAX_GUARDS

    def traced(k: int) -> int:
        before = fuse.stats().traces
        assert float(_scaled(x, float(k)).array[0, 0]) == k + 1.0
        return fuse.stats().traces - before

    for k in range(n + 10):
        assert (traced(k), traced(k)) == (1, 0)  # the second call replays (the first g write a guard)
    assert len(_scaled.programs) == n and len(_scaled.guards) == g  # type: ignore[attr-defined]
    kept = [*range(g), *range(g + 10, n + 10)]
    assert [k for k in kept if traced(k)] == [], "a guarded or a recent signature was forgotten"
    assert traced(g) == 1, "an early unguarded signature was not forgotten"  # evicts g + 10, now the least recent
    assert (traced(g + 11), traced(g + 10)) == (0, 1)  # g + 11 replayed: g + 12 goes next
    assert (traced(g + 13), traced(g + 12)) == (0, 1)
    held = {id(p) for p in _scaled.programs.values()}  # type: ignore[attr-defined]
    assert all(id(p) in held for _, p in _scaled.guards)  # type: ignore[attr-defined]


def test_guards_go_to_the_signatures_in_use() -> None:
    """The most recently used guard is checked first; with every slot taken, REGUARD replays by
    key give the signature replayed a guard in place of the least recently used one, so a
    working set that comes after MAX_GUARDS other signatures is served by guards again."""
    @fused
    def plus(a: Matrix, s: float) -> Matrix:
        return lb.compute(a + s)

    x = lb.matrix(np.zeros((1, 1)))
    g, r = trace.MAX_GUARDS, trace.REGUARD

    def order() -> list[float]:  # the signature each guard accepts, in the order they are checked
        return [next(s for s in (*map(float, range(g)), 100.0) if guard((x, s), {}) is not None)
                for guard, _ in plus.guards]  # type: ignore[attr-defined]

    for k in range(g):
        for _ in range(2):  # the replay writes a guard
            assert float(plus(x, float(k)).array[0, 0]) == k
    assert order() == [float(k) for k in reversed(range(g))]
    assert float(plus(x, 0.0).array[0, 0]) == 0.0  # the last guard matched: now the first
    assert order() == [0.0, *(float(k) for k in reversed(range(1, g)))]
    replays = fuse.stats().replays
    for k in range(r + 1):  # a trace, then r replays by key
        assert float(plus(x, 100.0).array[0, 0]) == 100.0
        assert (100.0 in order()) == (k == r), k
    assert fuse.stats().replays == replays + r
    assert order() == [100.0, 0.0, *(float(k) for k in reversed(range(2, g)))]  # 1's guard went
    assert len(plus.guards) == g  # type: ignore[attr-defined]


def test_with_every_signature_guarded_the_least_recently_used_goes_with_its_guard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bound no larger than MAX_GUARDS: every signature replayed has a guard, so the one
    forgotten is the least recently used of all, guard and all; a bound lowered at run time
    holds from the next trace on."""
    monkeypatch.setattr(trace, "MAX_SIGNATURES", 3)
    assert trace.MAX_SIGNATURES <= trace.MAX_GUARDS

    @fused
    def plus(a: Matrix, s: float) -> Matrix:
        return lb.compute(a + s)

    x = lb.matrix(np.zeros((1, 1)))

    def traced(k: int) -> int:
        before = fuse.stats().traces
        assert float(plus(x, float(k)).array[0, 0]) == k
        return fuse.stats().traces - before

    def consistent() -> None:  # every guard serves a signature the function still holds
        held = {id(p) for p in plus.programs.values()}  # type: ignore[attr-defined]
        assert all(id(p) in held for _, p in plus.guards)  # type: ignore[attr-defined]

    for k in range(3):
        assert (traced(k), traced(k)) == (1, 0)  # the replay writes a guard
    assert len(plus.guards) == 3  # type: ignore[attr-defined]
    assert traced(3) == 1  # 0, the least recently used, goes with its guard
    assert len(plus.programs) == 3 and len(plus.guards) == 2  # type: ignore[attr-defined]
    consistent()
    assert (traced(1), traced(2), traced(0)) == (0, 0, 1), "0 was not forgotten"  # 3 goes
    assert traced(3) == 1
    consistent()
    monkeypatch.setattr(trace, "MAX_SIGNATURES", 1)
    assert traced(9) == 1
    assert len(plus.programs) == 1  # type: ignore[attr-defined]
    consistent()
    assert traced(9) == 0


@fused
def _peeks_if_negative(a: Matrix, s: float) -> Matrix:
    if s < 0:  # reads values in Python: this signature is opaque, the others replay
        return lb.compute(a + float(a.array.sum()))
    return lb.compute(lb.scale(s, a) + 1.0)


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_an_opaque_signature_in_use_is_not_forgotten() -> None:
    """A signature the replay cannot serve is used too: called between new signatures, it is
    never the least recently used, and its body is not traced again however many come."""
    _peeks_if_negative.programs.clear()  # type: ignore[attr-defined]  # this test's signatures only
    _peeks_if_negative.guards.clear()  # type: ignore[attr-defined]
    a = np.arange(4.0).reshape(2, 2)
    x = lb.matrix(a)

    def traced(s: float) -> int:
        before = fuse.stats().traces
        want = a + a.sum() if s < 0 else s * a + 1.0
        np.testing.assert_array_equal(_peeks_if_negative(x, s).array, want)
        return fuse.stats().traces - before

    assert traced(-1.0) == 1
    for k in range(trace.MAX_SIGNATURES + 10):
        assert (traced(float(k)), traced(-1.0)) == (1, 0), k
    assert list(_peeks_if_negative.programs.values())[-1] is None  # type: ignore[attr-defined]  # the opaque one, used last


def test_threads_trace_and_replay_independently() -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for k in range(40):
                shape = (2 + (k + seed) % 3, 3)
                a, b = _m(rng, shape, np.dtype(np.float64)), _m(rng, shape, np.dtype(np.float64))
                np.testing.assert_array_equal(_outer(a, b).array, (a.array + b.array) * 2.0)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# --- dynamic arguments: per-step scalars that are not part of the signature ---------------------

@fused(dynamic=("s",))
def _dyn_scaled(a: Matrix, s: float) -> Matrix:
    return lb.compute(lb.scale(s, a) + 1.0)


@fused(dynamic=("c",))
def _dyn_pair(a: Matrix, c: tuple[float, float]) -> tuple[Matrix, Matrix]:
    return lb.compute_all(a * c[0], lb.add_c(a, c[1]))


def test_dynamic_values_reach_the_kernel_without_a_new_trace() -> None:
    x = lb.matrix(np.arange(6.0).reshape(2, 3))
    _dyn_scaled(x, 5.0)
    s0 = fuse.stats()
    for s in (2.0, 3.0, -1.5, 0.0, 1e-3):
        np.testing.assert_array_equal(_dyn_scaled(x, s).array, s * x.array + 1.0)
    for c in ((2.0, 3.0), (-1.0, 0.5), (0.25, -7.0)):
        p, q = _dyn_pair(x, c)
        np.testing.assert_array_equal(p.array, x.array * c[0])
        np.testing.assert_array_equal(q.array, x.array + c[1])
    assert fuse.stats().traces - s0.traces == 1  # _dyn_pair's first call only


def test_a_dynamic_value_of_any_number_type_reaches_the_kernel_as_a_float64() -> None:
    """Each number type is its own signature; a replay passes the call's value as the float64 the
    body's kernel takes (a Python int beyond 64 bits too)."""
    x = lb.matrix(np.linspace(-3.0, 5.0, 6).reshape(2, 3))
    values: list[Any] = [2**70, 2**70 + 2**20, -(2**64) - 1, np.int64(-3), np.int64(5), np.float32(0.1),
                         np.float32(0.7), 7, 9]
    for s in values:
        np.testing.assert_array_equal(_dyn_scaled(x, s).array, np.float64(s) * x.array + 1.0)


@fused(dynamic=("s",))
def _dyn_arithmetic(a: Matrix, s: float) -> Matrix:
    return lb.compute(lb.scale(2.0 * s, a))  # Python arithmetic on a dynamic value: refused


@fused(dynamic=("s",))
def _dyn_derived(a: Matrix, s: float) -> tuple[Matrix, Matrix, Matrix]:
    return lb.compute_all(lb.add_c(a, -s), lb.scale(1.0 / s, a), lb.add_c(a, -(2 / -s)))


@given(st.lists(st.floats(0.01, 1e6) | st.floats(-1e6, -0.01) | st.integers(1, 1000), min_size=1, max_size=4))
def test_negation_and_division_by_a_dynamic_value_are_repeated_by_the_replay(ss: list[float]) -> None:
    x = lb.matrix(np.linspace(-3.0, 5.0, 6).reshape(2, 3))
    _dyn_derived(x, 7.0)
    s0 = fuse.stats()
    for s in ss:  # the values Python computes, as a body without the replay would
        p, q, r = _dyn_derived(x, s)
        np.testing.assert_array_equal(p.array, x.array + -s)
        np.testing.assert_array_equal(q.array, x.array * (1.0 / s))
        np.testing.assert_array_equal(r.array, x.array + -(2 / -s))
    assert fuse.stats().traces - s0.traces <= 1  # an int value is another signature; nothing per value


@fused(dynamic=("s",))
def _dyn_numpy_numerator(a: Matrix, s: float) -> tuple[Matrix, Matrix]:
    return lb.compute_all(lb.scale(np.float32(1.0) / s, a), lb.scale(np.float64(2.0) / -s, a))


def test_a_numpy_number_divided_by_a_dynamic_value_keeps_numpys_types() -> None:
    """``np.float32(1.0) / s`` is a float32 for a Python float s, in the body as in numpy: the trace
    and its replays divide the numpy number itself, not the Python float it converts to."""
    x = lb.matrix(np.linspace(-3.0, 5.0, 6).reshape(2, 3))  # float64: a float32 factor shows
    values: list[Any] = [3.0, 7.0, np.float32(3.0), 0.1, 3.0]
    for s in values:
        got = _dyn_numpy_numerator(x, s)
        want = _dyn_numpy_numerator.__wrapped__(x, s)  # type: ignore[attr-defined]
        factors: list[Any] = [np.float32(1.0) / s, np.float64(2.0) / -s]
        for g, w, c in zip(got, want, factors):
            assert_bitwise(g, w, "scaled")
            np.testing.assert_array_equal(g.array, np.float64(c) * x.array)


@fused(dynamic=("s",))
def _dyn_branch(a: Matrix, s: float) -> Matrix:
    return lb.compute(a * 2.0 if s > 0 else a * 1.0)  # a test on a dynamic value: refused


def test_python_use_of_a_dynamic_value_is_an_error_not_a_wrong_replay() -> None:
    x = lb.matrix(np.ones((2, 2)))
    for f in (_dyn_arithmetic, _dyn_branch):
        with pytest.raises(lb.ArgumentError, match="dynamic argument"):
            f(x, 3.0)


def test_dynamic_names_must_be_parameters() -> None:
    with pytest.raises(lb.ArgumentError, match="no parameter 'rate'"):
        fused(dynamic=("rate",))(_add.__wrapped__)  # type: ignore[attr-defined]


@fused(dynamic=("s",))
def _dyn_optional(a: Matrix, s: float | None) -> Matrix:
    return lb.compute(a * 2.0 if s is None else lb.scale(s, a))


def test_a_dynamic_argument_that_is_not_a_number_runs_the_body() -> None:
    x = lb.matrix(np.ones((2, 2)))
    for s in (None, 3.0, None, 4.0):
        np.testing.assert_array_equal(_dyn_optional(x, s).array, x.array * (2.0 if s is None else s))


def test_scale_refuses_what_is_not_a_number() -> None:
    with pytest.raises(lb.ArgumentError, match="scale: expected a number"):
        lb.scale(lb.vector([1.0]), lb.vector([1.0]))  # type: ignore[arg-type]


@pytest.mark.parametrize("opt", [lb.SGD(0.1), lb.Adam(0.01)])
def test_a_learning_rate_schedule_and_adam_replay_every_step(opt: lb.Optimizer) -> None:
    rng = np.random.default_rng(9)
    net = lb.mlp((4, 3, 2), batchnorm=True, seed=1, dtype=np.float64)
    x = _m(rng, (6, 4), np.dtype(np.float64))
    y = lb.matrix(np.eye(2)[rng.integers(0, 2, 6)], np.float64)
    schedule = [1.0, 0.5, 0.25, 0.125, 0.1]

    def run() -> tuple[list[lb.Layer], lb.OptState]:
        layers, state = net, init_state(opt, net)
        for s in schedule:
            r = lb.train_step(layers, opt, state, x, y, lr_scale=s)
            layers, state = r.layers, r.opt_state
        return layers, state

    s0 = fuse.stats()
    got = run()
    s1 = fuse.stats()
    assert s1.traces - s0.traces <= 2  # the first step only (the pass and the update), not one per step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "REPLAY", False)
        want = run()
    assert_same_network(got[0], want[0])
    assert_same_state(got[1], want[1])


def test_dropout_masks_are_redrawn_by_the_replay() -> None:
    rng = np.random.default_rng(10)
    net = lb.mlp((5, 4, 3), batchnorm=False, seed=2, dtype=np.float64, dropout=0.5)
    x = _m(rng, (6, 5), np.dtype(np.float64))
    y = lb.matrix(np.eye(3)[rng.integers(0, 3, 6)], np.float64)
    lb.train_step(net, lb.SGD(0.1), init_state(lb.SGD(0.1), net), x, y, key=100)
    s0 = fuse.stats()
    preds = [lb.train_step(net, lb.SGD(0.1), init_state(lb.SGD(0.1), net), x, y, key=k).pred for k in range(4)]
    assert fuse.stats().traces == s0.traces  # new keys, no new trace
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "REPLAY", False)
        wants = [lb.train_step(net, lb.SGD(0.1), init_state(lb.SGD(0.1), net), x, y, key=k).pred for k in range(4)]
    for got, want in zip(preds, wants):
        assert_bitwise(got, want, "pred")
    assert not np.array_equal(preds[0].array, preds[1].array)  # the masks differ from key to key


@fused(dynamic=("s",))
def _dyn_returned(a: Matrix, s: float) -> tuple[Matrix, float]:
    return lb.compute(lb.scale(s, a)), s  # a dynamic value in the result: no replay


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_a_dynamic_value_in_the_result_is_the_callers_value() -> None:
    x = lb.matrix(np.ones((2, 2)))
    for s in (2.0, 3.0):
        m, got = _dyn_returned(x, s)
        assert got == s and type(got) is float
        np.testing.assert_array_equal(m.array, x.array * s)


@dataclass
class _Note:  # mutable: a replay must hand out a new one every call
    text: str


@fused
def _with_values(x: Matrix) -> tuple[Matrix, lb.layers.NoGrad, lb.layers.Activation, _Note]:
    return lb.compute(x * 2.0), lb.layers.NoGrad(), lb.layers.Activation(lb.Act.tanh), _Note("made")


def test_frozen_plain_results_are_returned_as_traced_mutable_ones_rebuilt() -> None:
    x = lb.matrix(np.ones((2, 3)))
    first = _with_values(x)
    before = fuse.stats().replays
    again = [_with_values(x) for _ in range(2)]
    assert fuse.stats().replays == before + 2
    for got in again:
        np.testing.assert_array_equal(got[0].array, 2 * x.array)
        assert got[1] == first[1] and got[2] == first[2] and got[3] == first[3]
    assert again[0][2] is again[1][2]  # frozen, no arrays: one immutable value
    assert again[0][3] is not again[1][3]  # a mutable dataclass is rebuilt on every call
    again[0][3].text = "changed"
    assert again[1][3].text == "made"


ARGS = ("float", "np.float32", "ndarray", "set")
BODIES = ("kernels", "host_call", "reads values", "makes a vector")
RESULTS = ("Manifest", "dict", "OrderedDict", "ndarray")


def _const(n: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.arange(1.0, n + 1.0)


def _body_of(arg: str, body: str, result: str) -> Any:
    """A body with one feature of each kind; each ``replays`` below says independently whether a
    replay can repeat it (a plain or numpy-scalar argument, array values reached through lazybn
    operations or a host call only, a result rebuilt from the logged arrays)."""
    def f(x: Matrix, v: Any) -> object:
        s = float(next(iter(v))) if arg == "set" else float(np.asarray(v).sum())
        y = lb.compute(lb.scale(s, x))
        if body == "host_call":
            y = lb.compute(y + lb.br(x.shape[0], lb.Manifest(fuse.host_call(_const, x.shape[1]))))
        elif body == "reads values":
            y = lb.compute(y + float(y.array[0, 0]))
        elif body == "makes a vector":
            y = lb.compute(y + lb.br(x.shape[0], lb.vector(_const(x.shape[1]), np.float64)))
        if result == "dict":
            return {"y": y}
        if result == "OrderedDict":
            from collections import OrderedDict

            return OrderedDict(y=y)
        return y.array.copy() if result == "ndarray" else y
    return f


def _values_of(out: object) -> np.ndarray[Any, Any]:
    y = out["y"] if isinstance(out, dict) else out
    return np.asarray(y.array if isinstance(y, lb.Manifest) else y)


@given(arg=st.sampled_from(ARGS), body=st.sampled_from(BODIES), result=st.sampled_from(RESULTS),
       v=st.floats(-3.0, 3.0, width=32))
def test_a_function_that_cannot_replay_warns_once_and_one_that_can_never_warns(
        arg: str, body: str, result: str, v: float) -> None:
    replays = (arg in ("float", "np.float32") and body in ("kernels", "host_call")
               and result in ("Manifest", "dict"))
    value: Any = {"float": v, "np.float32": np.float32(v), "ndarray": np.array([v]), "set": {v}}[arg]
    body_fn = _body_of(arg, body, result)
    f = fused(body_fn)
    x = lb.matrix(np.arange(6.0).reshape(2, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = fuse.stats().replays
        outs = [f(x, value) for _ in range(4)]
        replayed = fuse.stats().replays - before
    assert replayed == (3 if replays else 0)
    ours = [w for w in caught if issubclass(w.category, lb.ReplayWarning)]
    assert len(ours) == (0 if replays else 1), [str(w.message) for w in ours]
    if ours:
        assert "_body_of.<locals>.f is not replayed" in str(ours[0].message)
        assert ours[0].filename == __file__  # it points at the call
    want = _values_of(body_fn(x, value))
    for out in outs:
        assert type(out) is type(body_fn(x, value))
        np.testing.assert_array_equal(_values_of(out), want)


@pytest.mark.parametrize(("body", "reason"), [
    (lambda x: lb.compute(x + lb.br(2, lb.vector([1.0, 2.0, 3.0], np.float64))), "read an array the arguments do not"),
    (lambda x: {"y": lb.compute(x * 2.0), "s": {1}}, "a result of type set"),
    (lambda x: lb.matrix(np.zeros((2, 3))), "a result array that no kernel"),
    (lambda x: lb.compute(x + float(x.array.sum())), "read array values in Python"),
])
def test_the_replay_warning_names_the_function_and_the_reason(body: Any, reason: str) -> None:
    f = fused(body)
    x = lb.matrix(np.ones((2, 3)))
    with pytest.warns(lb.ReplayWarning, match=reason) as caught:
        f(x)
    assert "<lambda> is not replayed" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(x)  # once per function
        f(lb.matrix(np.ones((2, 3)), comp=lb.Comp.Par))  # another signature, opaque too: still once


def test_numpy_arrays_and_unknown_types_among_the_arguments_are_named() -> None:
    f = fused(lambda x, extra: lb.compute(x * 2.0))
    x = lb.matrix(np.ones((2, 3)))
    with pytest.warns(lb.ReplayWarning, match="an argument of type ndarray"):
        f(x, np.ones(3))
    g = fused(lambda x, extra: lb.compute(x * 2.0))
    with pytest.warns(lb.ReplayWarning, match="an argument of type Delayed"):
        g(x, x + 1.0)


def test_replays_switched_off_or_inside_a_trace_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    @fused
    def f(x: Matrix) -> Matrix:
        return lb.compute(x + lb.br(2, lb.vector([1.0, 2.0, 3.0], np.float64)))

    @fused
    def outer(x: Matrix) -> Matrix:
        return lb.compute(f(x) * 2.0)  # f's read is outer's too: outer warns, f is part of its trace

    x = lb.matrix(np.ones((2, 3)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outer(x)
        monkeypatch.setattr(trace, "REPLAY", False)
        f(x)
    assert [str(w.message).split(" is not")[0] for w in caught] == [f"@fused {__name__}.{outer.__qualname__}"]


def test_a_dynamic_value_returned_by_the_body_is_named() -> None:
    f = fused(dynamic=("s",))(lambda x, s: (lb.compute(lb.scale(s, x)), s))
    x = lb.matrix(np.ones((2, 3)))
    with pytest.warns(lb.ReplayWarning, match="a dynamic argument in the result"):
        m, s = f(x, 2.0)
    assert s == 2.0 and type(s) is float
    np.testing.assert_array_equal(m.array, 2.0 * x.array)


def test_a_call_the_body_refuses_gets_its_error_without_a_warning() -> None:
    f = fused(lambda x, extra: lb.compute(x * float(len(extra))))
    x = lb.matrix(np.ones((2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError):
            f(x, np.ones(3).sum)  # opaque (a method), and len() of it fails: the error, no warning
    with pytest.warns(lb.ReplayWarning, match="an argument of type set"):
        got = f(x, {1, 2})
    np.testing.assert_array_equal(got.array, 2 * x.array)
