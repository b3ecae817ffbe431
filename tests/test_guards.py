"""A replay's guard (``lazybn.guards.write_guard``) against the signature it stands for.

``@fused`` checks a call against the guards of the signatures it has replayed before building
the call's signature. A guard must accept a call exactly when the call's signature is the one it
was written from, and hand over the same arrays (the same objects, in the same order) and dynamic
values as the signature would: a guard that accepted too much would replay another signature's
program on the call's arrays."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn import guards, trace
from lazybn.replay import Opaque


class _Colour(enum.Enum):
    red = 1
    blue = 2


@dataclass(frozen=True, slots=True)
class _Pair:
    a: object
    b: object


@dataclass
class _Open:  # a dataclass with a __dict__: an attribute besides its fields makes it opaque
    x: object


_SHAPES = [(2,), (3,), (2, 2)]
_PLAIN = st.sampled_from([0.0, -0.0, 1.0, 0.1, math.inf, -math.inf, math.nan, 0, 1, 2, True, False, None, "a", "b",
                          b"a", _Colour.red, _Colour.blue, 1 + 2j, np.float32(0.0), np.float32(-0.0), np.float64(0.1),
                          np.int32(1), np.bool_(True), np.float32, float, np.dtype("f4")])
_ARRAY = st.builds(lambda shape, dtype, par: lb.Manifest(np.zeros(shape, dtype), lb.Comp.Par if par else lb.Comp.Seq),
                   st.sampled_from(_SHAPES), st.sampled_from([np.float32, np.float64]), st.booleans())
_TREE = st.recursive(_PLAIN | _ARRAY, lambda inner: st.one_of(
    st.lists(inner, max_size=2).map(tuple), st.lists(inner, max_size=2),
    st.builds(_Pair, inner, inner), st.builds(_Open, inner),
    st.dictionaries(st.sampled_from(["a", "b", 0, 1, True, None, 0.0, -0.0]), inner, max_size=2)), max_leaves=6)
_DYNAMIC = st.sampled_from([1.0, 2.5, 3, None, (1.0, 2.0), (1.0, None), np.float32(1.0), "x"])
_WHERE = ((1, "s"),)  # argument 1 is dynamic


def _signature(args: tuple[object, ...]) -> tuple[tuple[object, ...], list[Any], list[Any]] | None:
    try:
        return trace._signature(_WHERE, args, {})
    except Opaque:
        return None


def _fresh(x: object) -> object:
    """``x`` with every array replaced by a new one of the same shape, dtype and ``Comp`` (shared
    arrays stay shared)."""
    memo: dict[int, object] = {}

    def go(y: object) -> object:
        if isinstance(y, lb.Manifest):
            if id(y) not in memo:
                memo[id(y)] = lb.Manifest(np.ones(y.shape, y.dtype), y.comp)
            return memo[id(y)]
        if type(y) in (tuple, list):
            return type(y)(go(z) for z in y)  # type: ignore[call-arg, attr-defined]
        if isinstance(y, _Pair):
            return _Pair(go(y.a), go(y.b))
        if isinstance(y, _Open):
            return _Open(go(y.x))
        if type(y) is dict:
            return {k: go(z) for k, z in y.items()}
        return y

    return go(x)


_OTHER: list[tuple[object, list[object]]] = [  # what a plain value may become: another type, value or bits
    (0.0, [-0.0, 0, False]), (1.0, [1, True, 1.0000000000000002]), (math.nan, [-math.nan, math.inf]),
    (0, [0.0, False, None]), (1, [True, 1.0, 2]), (True, [1, "a", False]), (None, [0, False, "a"]),
    ("a", [b"a", "b", 0]), (_Colour.red, [1, _Colour.blue, None]),
    (np.float32(0.0), [np.float32(-0.0), np.float64(0.0), 0.0]), (np.int32(1), [np.int64(1), 1, np.int32(2)]),
    (np.float32, [np.float64, np.dtype("f4"), float]), (np.dtype("f4"), [np.dtype("f8"), np.float32, "float32"])]


def _mutate(x: object, pick: int, how: int = 0) -> tuple[object, int]:
    """``x`` with its leaf number ``pick`` (depth first) changed: an array to another dtype, Comp or
    shape, a plain value to a value of another type or bits; returns the rest of ``pick``."""
    if isinstance(x, lb.Manifest):
        if pick == 0:
            kind = [lambda: lb.Manifest(np.zeros(x.shape, np.float64 if x.dtype == np.float32 else np.float32), x.comp),
                    lambda: lb.Manifest(np.zeros(x.shape, x.dtype), lb.Comp.Seq if x.comp is lb.Comp.Par else lb.Comp.Par),
                    lambda: lb.Manifest(np.zeros((4,) + x.shape[1:], x.dtype), x.comp)]
            return kind[how % 3](), -1
        return x, pick - 1
    if type(x) in (tuple, list):
        out = []
        for y in x:  # type: ignore[attr-defined]
            y, pick = _mutate(y, pick, how)
            out.append(y)
        return type(x)(out), pick  # type: ignore[call-arg]
    if isinstance(x, _Pair):
        a, pick = _mutate(x.a, pick, how)
        b, pick = _mutate(x.b, pick, how)
        return _Pair(a, b), pick
    if isinstance(x, _Open):
        y, pick = _mutate(x.x, pick, how)
        return _Open(y), pick
    if type(x) is dict:  # each key, then its value
        items = {}
        for k, y in x.items():
            key, pick = _mutate(k, pick, how)
            items[key], pick = _mutate(y, pick, how)
        return items, pick
    if pick == 0:
        others = next((o for k, o in _OTHER if type(k) is type(x) and repr(k) == repr(x)), [None])
        return others[how % len(others)], -1
    return x, pick - 1


def _check(first: tuple[object, ...], call: tuple[object, ...]) -> None:
    known = _signature(first)
    if known is None:
        return
    guard = guards.write_guard(_WHERE, first, {}, known[1])
    if guard is None:  # an argument type without a guard, or the same array twice
        return
    got = guard(call, {})
    want = _signature(call)
    same = want is not None and want[0] == known[0]
    if got is None:
        assert not same, "the guard refused a call of its own signature"
        return
    assert same, "the guard accepted a call of another signature"
    assert want is not None and len(got[0]) == len(want[1]) and all(a is b for a, b in zip(got[0], want[1]))
    assert [repr(v) for v in got[1]] == [repr(v) for v in want[2]] and [type(v) for v in got[1]] == [type(v) for v in want[2]]


@settings(max_examples=200, deadline=None)
@given(a=_TREE, b=_TREE, s=_DYNAMIC, t=_DYNAMIC, k=st.integers(0, 2))
def test_a_guard_accepts_exactly_the_calls_of_its_signature(a: object, b: object, s: object, t: object,
                                                            k: int) -> None:
    first = (a, s, b)
    _check(first, (b, t, a))  # mostly another signature
    _check(first, (_fresh(a), t, _fresh(b)))  # the same structure, new arrays and dynamic values
    _check(first, (a, s, b, a)[:2 + k])  # another number of arguments
    for pick in range(8):  # one leaf changed, in each of three ways
        for how in range(3):
            _check(first, (_mutate(a, pick, how)[0], s, _mutate(b, pick - 4, how)[0]))


def test_a_guard_follows_aliasing_and_extra_attributes() -> None:
    x, y = lb.vector([1.0, 2.0]), lb.vector([3.0, 4.0])
    known = _signature((x, 1.0, y))
    assert known is not None
    guard = guards.write_guard(_WHERE, (x, 1.0, y), {}, known[1])
    assert guard is not None
    assert guard((x, 2.0, x), {}) is None  # the same array twice: another signature
    assert guard((y, 2.0, x), {}) is not None
    o = _Open(x)
    known = _signature((o, 1.0, y))
    assert known is not None
    guard = guards.write_guard(_WHERE, (o, 1.0, y), {}, known[1])
    assert guard is not None
    extra = _Open(x)
    extra.note = 1  # type: ignore[attr-defined]
    assert guard((extra, 1.0, y), {}) is None and _signature((extra, 1.0, y)) is None
    assert guards.write_guard(_WHERE, (x, 1.0, x), {}, [x, x]) is None  # no guard for an aliased call


@pytest.mark.parametrize("calls", [2, 40])
def test_replays_through_guards_equal_the_body(calls: int) -> None:
    """Alternating signatures (shapes, plain values, dynamic values), each checked against numpy."""
    @lb.fused(dynamic=("s",))
    def f(a: lb.Matrix, b: lb.Matrix, s: float, c: float) -> lb.Matrix:
        return lb.compute(lb.scale(s, a) + lb.add_c(b, c))

    rng = np.random.default_rng(3)
    for k in range(calls):
        shape = [(2, 3), (3, 2), (2, 3)][k % 3]
        a, b = (lb.matrix(rng.standard_normal(shape)) for _ in range(2))
        s, c = float(k), [0.5, -0.0, 0.0][k % 3]
        np.testing.assert_array_equal(f(a, b, s, c).array, s * a.array + (b.array + c))
    assert len(f.guards) == (3 if calls > 3 else 0)  # type: ignore[attr-defined]  # one per signature replayed


def test_a_function_keeps_at_most_max_guards_guards() -> None:
    """Each replayed signature writes a guard until the function has MAX_GUARDS of them; later
    signatures still replay (through their signature), correctly."""
    @lb.fused
    def f(a: lb.Matrix, c: float) -> lb.Matrix:
        return lb.compute(lb.add_c(a, c))

    x = lb.matrix(np.ones((1, 2)))
    for k in range(trace.MAX_GUARDS + 4):
        for _ in range(2):  # the second call of a signature replays it
            np.testing.assert_array_equal(f(x, float(k)).array, x.array + k)
    assert len(f.guards) == trace.MAX_GUARDS  # type: ignore[attr-defined]
