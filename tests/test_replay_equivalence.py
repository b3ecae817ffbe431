"""``@fused``: a replayed call returns what the body returns, or the body runs.

Each test calls a fused function several times and compares every result with the undecorated
body (``f.__wrapped__``) on the same arguments: values bit for bit, types, shapes, dtypes and
``Comp``. The bodies here either keep the contract (and must replay exactly) or break it in a way
the replay must notice (and then run the body every time).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn import fuse
from lazybn.array import Vector
from lazybn.network import bn_forward
from lazybn.trace import fused


def _same(got: object, want: object) -> None:
    """``got`` is ``want``: same types and structure, arrays equal bit for bit with one Comp."""
    assert type(got) is type(want), (got, want)
    if isinstance(got, lb.Manifest):
        assert isinstance(want, lb.Manifest)
        assert got.shape == want.shape and got.dtype == want.dtype and got.comp is want.comp
        assert got.array.tobytes() == want.array.tobytes()
    elif isinstance(got, (tuple, list)):
        assert isinstance(want, (tuple, list)) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
    elif hasattr(got, "__dataclass_fields__"):
        assert vars(got).keys() == vars(want).keys()
        for name in vars(got):
            _same(getattr(got, name), getattr(want, name))
    else:
        assert repr(got) == repr(want)


def _body(f: Callable[..., Any]) -> Callable[..., Any]:
    """The undecorated function."""
    body: Callable[..., Any] = f.__wrapped__  # type: ignore[attr-defined]
    return body


def _vec(seed: int, dtype: Any = np.float64) -> Vector:
    return lb.vector(np.random.default_rng(seed).standard_normal(3), dtype)


def _code(v: object) -> float:
    """A number that differs for values a body can tell apart (type, sign of zero, NaN, ...)."""
    return float(sum(map(ord, f"{type(v).__name__}:{v!r}")))


@fused
def _by_value(x: Vector, v: object) -> Vector:
    return lb.compute(lb.scale(_code(v), x))


plain_values = st.one_of(
    st.sampled_from([0, 1, True, False, 1.0, 0.0, -0.0, math.nan, 0j, complex(0.0, -0.0), complex(-0.0, 0.0),
                     1 + 0j, "1", b"1", None, 2**70, -(2**70)]),
    st.floats(allow_nan=True, width=64), st.complex_numbers(allow_nan=True), st.integers())


@settings(max_examples=20)
@given(values=st.lists(plain_values, min_size=2, max_size=6))
@example(values=[0j, complex(0.0, -0.0)])  # equal, one hash: only the signature tells them apart
@example(values=[1, True, 1.0, -0.0, 0.0, math.nan])
def test_every_plain_value_a_body_can_tell_apart_has_its_own_signature(values: list[object]) -> None:
    x = _vec(0)
    for v in values + values[::-1]:
        _same(_by_value(x, v), _body(_by_value)(x, v))


@dataclass
class _Field:
    v: object


@fused
def _by_field(x: Vector, h: _Field) -> Vector:
    return lb.compute(lb.scale(_code(h.v), x))


@fused
def _by_container(x: Vector, box: object) -> Vector:
    return lb.compute(lb.scale(_code(box), x))


numpy_scalars = st.one_of(
    st.floats(allow_nan=True, width=32).map(np.float32), st.floats(allow_nan=True).map(np.float64),
    st.floats(allow_nan=True, width=16).map(np.float16), st.integers(-(2**31), 2**31 - 1).map(np.int32),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.sampled_from([np.float32(0.0), np.float32(-0.0), np.float64(-0.0), np.float32(1.0), np.int64(1), 1.0, 1]))


def _scaled_by(x: Vector, v: Any) -> Vector:
    return lb.compute(lb.scale(v, x) + lb.scale(_code(v), x))


@settings(max_examples=30)
@given(values=st.lists(numpy_scalars, min_size=1, max_size=5))
@example(values=[np.float32(0.1), np.float32(0.2), np.float64(0.1), 0.1])
@example(values=[np.float32(0.0), np.float32(-0.0), np.float32(np.nan), np.float32(-np.nan)])
def test_numpy_scalars_replay_by_type_and_value(values: list[Any]) -> None:
    """A numpy scalar argument (np.float32(0.1)) is a plain value: keyed by its type and bits, so a
    call with another value (or type, or sign of zero) runs with its own value, never an old one,
    and a call repeating one replays."""
    x, f = _vec(2), fused(_scaled_by)  # traced afresh for each example
    seen: set[tuple[type, bytes]] = set()
    for v in values + values[::-1] + values:
        key = (type(v), np.asarray(v).tobytes())
        before = fuse.stats().replays
        with np.errstate(all="ignore"):  # scale by NaN or inf
            got, want = f(x, v), _scaled_by(x, v)
        _same(got, want)
        assert fuse.stats().replays - before == (key in seen), v
        seen.add(key)


DTYPE_LIKES = [np.float32, np.float64, np.int64, float, int, bool, complex, np.dtype("f4"), np.dtype("f8"),
               np.dtype(">f8"), np.dtype("i4"), "float32"]


def _by_dtype(x: Vector, dtype: Any) -> tuple[Vector, Any]:
    return lb.compute(lb.scale(_code(dtype), x)), dtype


@settings(max_examples=20)
@given(values=st.lists(st.sampled_from(DTYPE_LIKES), min_size=1, max_size=6))
@example(values=[np.float32, np.dtype("f4"), "float32", np.dtype("f8"), np.dtype(">f8"), float, np.float64])
def test_dtype_arguments_replay_by_value(values: list[Any]) -> None:
    """A dtype or a number type among the arguments (``dtype=np.float32``) is a plain value: each
    one its own signature (np.float32, np.dtype("f4") and "float32" are three), repeated ones
    replay, and the result holds the caller's value."""
    f, x = fused(_by_dtype), _vec(4)
    seen: list[Any] = []
    for v in values + values[::-1]:
        before = fuse.stats().replays
        got = f(x, v)
        _same(got, _by_dtype(x, v))
        assert got[1] is v or (type(got[1]) is type(v) and got[1] == v)
        assert fuse.stats().replays - before == any(type(s) is type(v) and s == v for s in seen), v
        seen.append(v)


@fused
def _with_scalar(x: Vector, v: Any) -> tuple[Vector, Any]:
    return lb.compute(lb.scale(_code(v), x)), v


def test_a_numpy_scalar_in_the_result_is_returned_as_given() -> None:
    x = _vec(3)
    for v in (np.float32(0.5), np.float32(0.5), np.int32(3), np.int32(3), np.bool_(True), np.bool_(True)):
        got = _with_scalar(x, v)
        _same(got, _body(_with_scalar)(x, v))
        assert type(got[1]) is type(v) and got[1] == v
    assert all(p is not None for p in _with_scalar.programs.values())  # type: ignore[attr-defined]


def _named(x: Vector, keys: tuple[Any, ...], s: float) -> dict[Any, Any]:
    """A dict whose keys come from the arguments, with arrays, a nested dict and plain values."""
    out: dict[Any, Any] = {k: lb.compute(lb.scale(s * (i + 1), x)) for i, k in enumerate(keys)}
    out["inner"] = {"sum": lb.compute(x + x), "s": s}
    return out


def _same_dict(got: object, want: object) -> None:
    assert type(got) is dict and type(want) is dict and list(got) == list(want), (got, want)
    assert [type(k) for k in got] == [type(k) for k in want]
    for k in got:
        if type(got[k]) is dict:
            _same_dict(got[k], want[k])
        else:
            _same(got[k], want[k])


@settings(max_examples=20)
@given(calls=st.lists(st.tuples(st.lists(st.sampled_from([0, 1, True, "a", "b", 2.5, None]), max_size=3, unique=True)
                                .map(tuple), st.floats(-4.0, 4.0), st.integers(0, 3)), min_size=1, max_size=6))
def test_dict_results_replay_with_their_keys_and_values(calls: list[tuple[tuple[Any, ...], float, int]]) -> None:
    """A body returning a dict replays: the keys as traced, in order, the arrays of this call, and
    a fresh dict each time (one the caller changes is not what the next replay returns)."""
    f = fused(_named)
    seen = set()
    for keys, s, seed in calls + calls:
        keys = tuple(dict.fromkeys(keys))  # 1 and True are one key
        x = _vec(seed)
        before = fuse.stats().replays
        got = f(x, keys, s)
        _same_dict(got, _named(x, keys, s))
        sig = (tuple(map(type, keys)), keys, repr(s))
        assert fuse.stats().replays - before == (sig in seen)
        seen.add(sig)
        got.clear()
        got["x"] = x


@fused
def _ordered(x: Vector) -> dict[object, Any]:
    from collections import OrderedDict

    return OrderedDict(a=lb.compute(x + x))


@fused
def _array_keyed(x: Vector) -> dict[object, Any]:
    return {x: lb.compute(x + x)}


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_dicts_that_would_not_rebuild_run_the_body() -> None:
    """A dict subclass, or a dict keyed by something other than plain values, is not rebuilt."""
    for seed in range(3):
        x = _vec(seed)
        got = _ordered(x)
        assert type(got).__name__ == "OrderedDict"
        _same(got["a"], _body(_ordered)(x)["a"])
        k, v = next(iter(_array_keyed(x).items()))
        assert k is x
        _same(v, lb.compute(x + x))
    assert list(_ordered.programs.values()) == [None]  # type: ignore[attr-defined]
    assert list(_array_keyed.programs.values()) == [None]  # type: ignore[attr-defined]


@settings(max_examples=20)
@given(values=st.lists(plain_values, min_size=2, max_size=6))
@example(values=[1, True, 1.0, -0.0, 0.0, math.nan])
def test_plain_values_in_fields_and_containers_have_their_own_signatures(values: list[object]) -> None:
    """As for a plain argument: a dataclass field holding 1 or True, a tuple or a list holding the
    same values, are calls a body can tell apart, and each gets its own signature and guard."""
    x = _vec(0)
    for v in values + values[::-1] + values:
        _same(_by_field(x, _Field(v)), _body(_by_field)(x, _Field(v)))
        for box in ((v,), [v]):
            _same(_by_container(x, box), _body(_by_container)(x, box))


@dataclass
class _Config:
    scale: float


@fused
def _scaled_by_attribute(x: Vector, c: _Config) -> Vector:
    return lb.compute(lb.scale(getattr(c, "extra", c.scale), x))


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_a_dataclass_argument_with_attributes_besides_its_fields_runs_the_body() -> None:
    x = _vec(1)
    for extra in (2.0, 3.0, 2.0):
        c = _Config(1.0)
        c.extra = extra  # type: ignore[attr-defined]
        _same(_scaled_by_attribute(x, c), _body(_scaled_by_attribute)(x, c))


@fused
def _appending(x: Vector, log: list[Vector]) -> Vector:
    out = lb.compute(x * 2.0)
    log.append(out)
    return out


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_a_body_changing_its_arguments_runs_every_call() -> None:
    for seed in range(3):
        x, log = _vec(seed), list[Vector]()
        got = _appending(x, log)
        assert len(log) == 1 and log[0] is got  # the body ran: a replay would leave the list empty
        _same(got, _body(_appending)(x, []))


calls: list[int] = []


@fused(dynamic=("s",))
def _appending_scaled(x: Vector, s: float, log: list[Vector]) -> Vector:
    calls.append(1)
    out = lb.compute(lb.scale(s, x))
    log.append(out)
    return out


@fused(dynamic=("s",))
def _peeking_scaled(x: Vector, s: float) -> Vector:
    calls.append(1)
    return lb.compute(lb.scale(s, x) + float(x.array.sum()))  # reads values: no replay


@dataclass
class _Box:
    s: object = None


@fused(dynamic=("s",))
def _keeping(x: Vector, s: float, box: _Box) -> Vector:
    calls.append(1)
    box.s = s  # a stand-in, while the trace runs: the caller must be left the value
    return lb.compute(lb.scale(s, x))


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_a_body_a_replay_cannot_repeat_runs_once_per_call_with_dynamic_values() -> None:
    """The first call of a signature runs the body with stand-ins for the dynamic values; when the
    signature turns out opaque, the body runs again only if a stand-in was left in the result or in
    an argument (so a body that appends to a list appends once per call)."""
    for seed, s in enumerate((2.0, 3.0, 2.0)):
        x, log = _vec(seed), list[Vector]()
        calls.clear()
        got = _appending_scaled(x, s, log)
        assert len(calls) == 1 and len(log) == 1 and log[0] is got
        _same(got, _body(_appending_scaled)(x, s, []))
        calls.clear()
        got = _peeking_scaled(x, s)
        assert len(calls) == 1
        _same(got, _body(_peeking_scaled)(x, s))
        box = _Box()
        got = _keeping(x, s, box)
        assert type(box.s) is float and box.s == s
        _same(got, _body(_keeping)(x, s, _Box()))


@dataclass
class _Holder:  # mutable: a body may replace its array
    v: Vector


@fused
def _doubling_in_place(h: _Holder) -> Vector:
    h.v = lb.compute(h.v * 2.0)
    return h.v


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_a_body_replacing_an_argument_array_runs_every_call() -> None:
    """The body swaps the array a (mutable) argument holds for a new one of the same shape and
    dtype: the signature after the call is the same, yet a replay would not swap it."""
    h = _Holder(_vec(6))
    start = h.v.array.copy()
    for k in range(1, 4):
        got = _doubling_in_place(h)
        np.testing.assert_array_equal(h.v.array, start * 2.0**k)  # each call replaced the caller's array
        assert got is h.v


def _total(a: lb.Matrix) -> Vector:
    return lb.compute(lb.sum_rows(a))


def test_a_parallel_replay_runs_with_the_current_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Comp.Par kernel splits its rows into one chunk per thread and adds the chunks' float64
    sums in order, so its last bits depend on the thread count: a replay launched after the count
    changed gives what the body gives with the new count."""
    import numba

    monkeypatch.setattr(fuse, "PAR_THRESHOLD_BYTES", 0)
    f = fused(_total)
    col = np.array([1.0, 1e16, -1e16, 1.0])  # in one chunk 1.0, in two halves 0.0 (each 1 is lost to 1e16)
    x = lb.matrix(np.stack([col, col[::-1], col * 3.0], axis=1), comp=lb.Comp.Par)
    before = numba.get_num_threads()
    try:
        try:
            numba.set_num_threads(2)
        except ValueError:
            pytest.skip("numba has one thread: the count cannot change")
        two = _total(x)
        _same(f(x), two)  # traced with two threads
        numba.set_num_threads(1)
        one = _total(x)
        if one.array.tobytes() == two.array.tobytes():
            pytest.skip("these sums do not depend on the thread count")
        replays = fuse.stats().replays
        for _ in range(2):
            _same(f(x), one)
        assert fuse.stats().replays == replays + 2
    finally:
        numba.set_num_threads(before)


def _filled(n: int, v: object) -> Any:
    return np.full(n, v)  # np.float32(0.5) makes float32 values, 0.5 float64 ones


@fused(dynamic=("v",))
def _times_filled(x: Vector, v: float) -> Vector:
    return lb.compute(x * lb.Manifest(fuse.host_call(_filled, x.shape[0], v)))


@settings(max_examples=10)
@given(values=st.lists(st.sampled_from([np.float32(0.5), np.float32(0.1), np.float64(0.1), 0.1, 2]),
                       min_size=2, max_size=5))
def test_dynamic_values_reach_host_calls_with_their_type(values: list[Any]) -> None:
    for v in values:
        for dtype in (np.float32, np.float64):
            x = _vec(2, dtype)
            try:
                want = _body(_times_filled)(x, v)
            except lb.DTypeError:  # the body refuses a float64 mask on float32 data: so must the replay
                try:
                    _times_filled(x, v)
                except lb.DTypeError:
                    continue
                raise AssertionError(f"the fused call accepted {v!r} for {np.dtype(dtype)} data") from None
            _same(_times_filled(x, v), want)


def _first_of(n: int, values: list[float]) -> Any:
    return np.full(n, values[0])


@fused
def _host_from_list(x: Vector, values: list[float]) -> Vector:
    return lb.compute(x * lb.Manifest(fuse.host_call(_first_of, x.shape[0], values)))


@fused
def _host_from_closure(x: Vector, values: list[float]) -> Vector:
    return lb.compute(x * lb.Manifest(fuse.host_call(lambda n: np.full(n, values[0]), x.shape[0])))


@fused
def _host_from_partial(x: Vector, values: list[float]) -> Vector:
    return lb.compute(x * lb.Manifest(fuse.host_call(functools.partial(_first_of, values=values), x.shape[0])))


@fused
def _host_from_default(x: Vector, values: list[float]) -> Vector:
    return lb.compute(x * lb.Manifest(fuse.host_call(lambda n, held=values: np.full(n, held[0]), x.shape[0])))


@fused
def _host_from_keyword_default(x: Vector, values: list[float]) -> Vector:
    return lb.compute(x * lb.Manifest(fuse.host_call(lambda n, *, held=values: np.full(n, held[0]), x.shape[0])))


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_a_host_call_never_keeps_what_the_caller_may_change() -> None:
    for f in (_host_from_list, _host_from_closure, _host_from_partial, _host_from_default,
              _host_from_keyword_default):
        x = _vec(3)
        held = [2.0]
        f(x, held)
        held[0] = 5.0  # the list the first call held changes afterwards
        _same(f(x, [2.0]), _body(f)(x, [2.0]))


@dataclass(init=False)
class _OwnInit:
    a: Vector
    k: float

    def __init__(self, a: Vector) -> None:
        self.a, self.k = a, 2.0


@dataclass(kw_only=True)
class _KeywordOnly:
    a: Vector
    k: float = 1.0


@dataclass
class _WithInitVar:
    a: Vector
    k: InitVar[int]
    total: int = 0

    def __post_init__(self, k: int) -> None:
        self.total = 2 * k


@dataclass
class _Counting:
    a: Vector
    n: int = field(default=0)

    def __post_init__(self) -> None:
        self.n += 1


@fused
def _own_init(x: Vector) -> _OwnInit:
    return _OwnInit(lb.compute(x * 2.0))


@fused
def _keyword_only(x: Vector) -> _KeywordOnly:
    return _KeywordOnly(a=lb.compute(x * 2.0), k=3.0)


@fused
def _init_var(x: Vector) -> _WithInitVar:
    return _WithInitVar(lb.compute(x * 2.0), 5)


@fused
def _counting(x: Vector) -> _Counting:
    return _Counting(lb.compute(x * 2.0))


@dataclass
class _Negating:
    a: Vector
    k: float = 0.0

    def __post_init__(self) -> None:
        self.k = -self.k  # rebuilt from the traced -0.0, it would hold 0.0


@fused
def _negating(x: Vector) -> _Negating:
    return _Negating(lb.compute(x * 2.0))


@fused
def _extra_attribute(x: Vector) -> _Config:
    c = _Config(2.0)
    c.made = lb.compute(x * 2.0)  # type: ignore[attr-defined]
    return c


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # these bodies cannot replay: they warn
def test_results_the_constructor_would_rebuild_differently_come_from_the_body() -> None:
    for f in (_own_init, _keyword_only, _init_var, _counting, _extra_attribute, _negating):
        for seed in range(3):
            x = _vec(seed)
            _same(f(x), _body(f)(x))


def test_keyword_only_dataclass_results_replay() -> None:
    x = _vec(4)
    _keyword_only(x)
    before = fuse.stats().replays
    _same(_keyword_only(_vec(5)), _body(_keyword_only)(_vec(5)))
    assert fuse.stats().replays == before + 1


def test_the_library_steps_still_replay() -> None:
    x = lb.matrix(np.ones((4, 3)))
    layer = lb.Batchnorm1d(lb.zeros(3, np.float64), lb.ones(3, np.float64), lb.ones(3, np.float64),
                           lb.zeros(3, np.float64))
    bn_forward(x, layer)
    before = fuse.stats().replays
    _same(bn_forward(x, layer), _body(bn_forward)(x, layer))
    assert fuse.stats().replays == before + 1



@fused(dynamic=("s",))
def _scaled_sum(x: Vector, *rest: Vector, s: float) -> Vector:
    total = lb.delay(x)
    for r in rest:
        total = total + r
    return lb.compute(lb.scale(s, total))


def test_a_keyword_only_dynamic_parameter_after_star_args_is_found_by_name() -> None:
    x, y, z = _vec(1), _vec(2), _vec(3)
    _scaled_sum(x, y, z, s=2.0)
    before = fuse.stats().replays
    for s in (3.0, -0.5):
        _same(_scaled_sum(x, y, z, s=s), _body(_scaled_sum)(x, y, z, s=s))
    assert fuse.stats().replays == before + 2


def test_star_args_cannot_be_dynamic() -> None:
    def f(x: Vector, *rest: float) -> Vector:
        return x

    with pytest.raises(lb.ArgumentError, match="no parameter 'rest'"):
        fused(dynamic=("rest",))(f)


def test_lazybn_debug_prints_each_replay_function(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    @fused
    def doubled(x: Vector) -> Vector:
        return lb.compute(lb.scale(2.0, x))

    monkeypatch.setenv("LAZYBN_DEBUG", "1")
    doubled(_vec(1))
    err = capsys.readouterr().err
    assert "lazybn: replay of" in err and "doubled" in err and "def replay(arrays, values):" in err
    doubled(_vec(2))  # a replay writes nothing new
    assert "lazybn: replay of" not in capsys.readouterr().err


def _padded(x: Vector, v: float, dtype: Any) -> tuple[Vector, Vector]:
    """Constant arrays the body makes itself: a filled vector in a kernel, zeros returned as they are."""
    return lb.compute(x + lb.replicate(x.shape[0], v, dtype) + lb.ones(x.shape[0], dtype)), lb.zeros(2, dtype)


@settings(max_examples=20)
@given(calls=st.lists(st.tuples(st.sampled_from([-1.5, 0.0, 2.0, 1e30]), st.integers(1, 4),
                                st.sampled_from([np.float32, np.float64])), min_size=1, max_size=6))
def test_replicate_zeros_and_ones_in_the_body_replay_with_the_calls_values(
        calls: list[tuple[float, int, Any]]) -> None:
    """An array the body fills with ``replicate``, ``zeros`` or ``ones`` is remade by each replay
    (a host call) with the value and shape of the call's signature, never the first call's."""
    f = fused(_padded)
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", lb.ReplayWarning)
        for v, n, dtype in calls + calls[::-1]:
            x = lb.vector(np.arange(n, dtype=np.float64), dtype)
            before = fuse.stats().replays
            got = f(x, v, dtype)
            assert fuse.stats().replays - before == ((v, n, dtype) in seen)
            seen.add((v, n, dtype))
            np.testing.assert_array_equal(got[0].array, np.arange(n, dtype=dtype) + dtype(v) + dtype(1.0))
            assert got[0].dtype == dtype and got[1].dtype == dtype and got[1].array.tolist() == [0.0, 0.0]
            _same(got, _padded(x, v, dtype))
    first, again = f(x, v, dtype)[1], f(x, v, dtype)[1]
    assert first.array is not again.array  # a new array each call


def _by_dict(x: Vector, d: dict[Any, Any]) -> Vector:
    """Reads a dict argument in order: its plain values (by type and value) and its arrays."""
    plain = tuple((k, v) for k, v in d.items() if not isinstance(v, lb.Manifest))
    out = lb.scale(_code(plain), x)
    for v in d.values():
        if isinstance(v, lb.Manifest):
            out = out * 0.5 + v
    return lb.compute(out)


dict_keys = st.sampled_from(["a", "b", "lr", 0, 1, True, 2.5, -0.0, 0.0, None])
dict_values = st.one_of(st.sampled_from([0.1, -0.0, 0.0, 1, True, "x", None, np.float32(0.1)]),
                        st.integers(0, 3).map(lambda seed: _vec(seed)))


@settings(max_examples=30)
@given(dicts=st.lists(st.dictionaries(dict_keys, dict_values, max_size=3), min_size=1, max_size=4))
@example(dicts=[{"a": 0.1}, {"b": 0.1}])
@example(dicts=[{"a": 0.1, "b": 0.1}, {"b": 0.1, "a": 0.1}])
@example(dicts=[{1: 0.1}, {True: 0.1}, {1.0: 0.1}, {-0.0: 0.1}, {0.0: 0.1}])
def test_dict_arguments_replay_by_their_keys_and_values(dicts: list[dict[Any, Any]]) -> None:
    """A dict argument keyed by plain values is part of the signature as a tuple of its items is:
    keys and plain values by type and value, in order, and its arrays' shapes; a call with
    another key, order or value runs the body, one repeating a signature replays (by key, then
    through a guard) with this call's arrays."""
    f = fused(_by_dict)
    seen: set[tuple[Any, ...]] = set()
    for d in dicts + dicts[::-1] + dicts:
        d = {k: lb.Manifest(v.array.copy()) if isinstance(v, lb.Manifest) else v for k, v in d.items()}  # new arrays
        sig = tuple((type(k), repr(k), type(v), "M" if isinstance(v, lb.Manifest) else repr(v)) for k, v in d.items())
        before = fuse.stats().replays
        x = _vec(len(seen))
        _same(f(x, d), _by_dict(x, d))
        assert fuse.stats().replays - before == (sig in seen), d
        seen.add(sig)


@fused
def _dict_changing(x: Vector, d: dict[str, Any]) -> Vector:
    out = d["out"] = lb.compute(x * 2.0)
    return out


@pytest.mark.filterwarnings("ignore::lazybn.ReplayWarning")  # this body cannot replay: it warns
def test_a_body_changing_a_dict_argument_runs_every_call() -> None:
    for seed in range(3):
        d: dict[str, Any] = {}
        got = _dict_changing(_vec(seed), d)
        assert d["out"] is got
        _same(got, lb.compute(_vec(seed) * 2.0))
