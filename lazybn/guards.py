"""Guards: straight-line Python, written for one signature of a ``@fused`` function, that accepts
exactly the calls with that signature and hands their arrays and dynamic values to its replay
(see :mod:`lazybn.trace`), several times faster than building the call's signature."""

from __future__ import annotations

import enum
import math
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .array import Comp, Manifest
from .replay import FIELDS, NUMPY_SCALARS, Opaque, dtype_like

_PAR = Comp.Par


def float_key(x: float) -> str:
    """The key of a float whose value does not say its bits (±0.0, a NaN of either sign or any
    payload): its bits, as text, which no float key (the float itself) equals."""
    return struct.pack("<d", x).hex()


def numbers(v: object, values: list[Any]) -> object:
    """Append the numbers of a dynamic argument (a number, None, or a tuple of them); returns its
    shape. Each number keeps its type, which is part of the shape (ints stay ints: a seed must not
    round; a host call given ``np.float32(0.5)`` makes a float32 array, given 0.5 a float64 one)."""
    if type(v) is tuple:
        return tuple(numbers(y, values) for y in v)
    if v is None:
        return None
    if isinstance(v, (int, np.integer, float, np.floating)) and not isinstance(v, bool):
        values.append(v)
        return type(v)
    raise Opaque(f"a dynamic argument must be a number or a tuple of numbers, not {type(v).__name__}")


def dynamic_places(where: tuple[tuple[int, str], ...], args: list[object],
                    kwargs: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Where each dynamic parameter's value is in a call: (args, position) or (kwargs, name).
    A parameter left to its default is absent (its default is a plain value of the body)."""
    return [(args, pos) if pos < len(args) else (kwargs, name)
            for pos, name in where if pos < len(args) or name in kwargs]


class _Guard:
    """Writes a *guard*: straight-line Python that accepts exactly the calls whose signature is
    that of the call it is written from, and returns their arrays and dynamic values as the
    signature would (or None). It walks the arguments as ``lazybn.trace``'s flattening does, so
    the arrays come in the same order; a type it does not know ends the writing (no guard)."""

    def __init__(self) -> None:
        self.names: dict[str, object] = {"Manifest": Manifest, "PAR": _PAR, "numbers": numbers, "Opaque": Opaque,
                                         "float_key": float_key}
        self.lines: list[str] = []
        self.arrays: list[str] = []
        self.tmp = 0

    def const(self, v: object) -> str:
        name = f"k{len(self.names)}"
        self.names[name] = v
        return name

    def fail_unless(self, cond: str) -> None:
        self.lines.append(f"if not ({cond}): return None")

    def value(self, expr: str, x: object) -> None:
        t = type(x)
        v = f"t{self.tmp}"
        self.tmp += 1
        self.lines.append(f"{v} = {expr}")
        if t is Manifest:
            leaf, par = x._leaf, x._comp is _PAR  # type: ignore[attr-defined]
            self.fail_unless(f"type({v}) is Manifest")
            self.lines.append(f"{v}l = {v}._leaf")
            self.fail_unless(f"{v}l.shape == {leaf.shape!r} and {v}l.dtype is {self.const(leaf.dtype)} and "
                             f"{v}._comp is {'' if par else 'not '}PAR")
            self.arrays.append(f"{v}l.array")
        elif isinstance(x, (tuple, list)) and (t is tuple or t is list):
            self.fail_unless(f"type({v}) is {self.const(t)} and len({v}) == {len(x)}")
            for k, y in enumerate(x):
                self.value(f"{v}[{k}]", y)
        elif isinstance(x, dict) and t is dict:  # its keys in order, each followed by its value
            self.fail_unless(f"type({v}) is dict and len({v}) == {len(x)}")
            self.lines.append(f"{v}k = list({v})")
            for k, (key, y) in enumerate(x.items()):
                self.value(f"{v}k[{k}]", key)
                self.value(f"{v}[{v}k[{k}]]", y)
        elif isinstance(x, float) and t is float:  # bit for bit where equal values can differ (±0.0, NaN)
            same = f"{v} == {x!r}" if math.isfinite(x) and x != 0.0 else f"float_key({v}) == {float_key(x)!r}"
            self.fail_unless(f"type({v}) is float and {same}")
        elif x is None or t is bool:
            self.fail_unless(f"{v} is {x!r}")
        elif isinstance(x, enum.Enum):
            self.fail_unless(f"{v} is {self.const(x)}")
        elif t is int or t is str or t is bytes:
            self.fail_unless(f"type({v}) is {t.__name__} and {v} == {x!r}")
        elif isinstance(x, NUMPY_SCALARS):  # by type and bits, as the signature keys it
            self.fail_unless(f"type({v}) is {self.const(t)} and {v}.tobytes() == {x.tobytes()!r}")
        elif isinstance(x, type) and dtype_like(x):
            self.fail_unless(f"{v} is {self.const(x)}")
        elif dtype_like(x):
            self.fail_unless(f"type({v}) is {self.const(t)} and {v} == {self.const(x)}")
        elif t in FIELDS:  # a dataclass that _flatten has seen
            names = FIELDS[t]
            self.fail_unless(f"type({v}) is {self.const(t)}")
            if t.__dictoffset__:
                self.fail_unless(f"len({v}.__dict__) == {len(names)}")
            for name in names:
                self.value(f"{v}.{name}", getattr(x, name))
        else:
            raise Opaque(t.__name__)


Guard = Callable[[tuple[object, ...], dict[str, Any]], "tuple[list[Any], list[Any]] | None"]


def write_guard(where: tuple[tuple[int, str], ...], args: tuple[object, ...], kwargs: dict[str, Any],
                 arrays: list[Any]) -> Guard | None:
    """The guard of this call's signature (see :class:`_Guard`), or None if it cannot have one: a
    call in which the same array is two arguments has none (its guard accepts distinct arrays only)."""
    if len({id(a) for a in arrays}) < len(arrays):
        return None
    g = _Guard()
    held_args, held_kwargs = list(args), dict(kwargs)
    places = dynamic_places(where, held_args, held_kwargs)
    shapes = [numbers(held[at], []) for held, at in places]
    g.fail_unless(f"len(args) == {len(args)} and " + (f"kwargs.keys() == {g.const(set(kwargs))}" if kwargs else
                                                      "not kwargs"))
    g.lines.append("values = []")
    dynamic = set()
    for (held, at), shape in zip(places, shapes):
        where_ = f"args[{at}]" if held is held_args else f"kwargs[{at!r}]"
        g.lines.append(f"try:\n        shape = numbers({where_}, values)\n    except Opaque:\n        return None")
        g.fail_unless(f"shape == {g.const(shape)}")
        dynamic.add((held is held_args, at))
    try:
        for k, x in enumerate(args):
            if (True, k) not in dynamic:
                g.value(f"args[{k}]", x)
        for name in sorted(kwargs):
            if (False, name) not in dynamic:
                g.value(f"kwargs[{name!r}]", kwargs[name])
    except Opaque:
        return None
    n = len(g.arrays)
    g.lines.append(f"arrays = [{', '.join(g.arrays)}]")
    if n > 1:
        g.fail_unless(f"len(set(map(id, arrays))) == {n}")  # which arguments are the same array
    g.lines.append("return arrays, values")
    source = "def guard(args, kwargs):\n" + "".join(f"    {ln}\n" for ln in g.lines)
    exec(compile(source, "<lazybn guard>", "exec"), g.names)
    if os.environ.get("LAZYBN_DEBUG"):
        print(f"lazybn: guard\n{source}", file=sys.stderr)
    return g.names["guard"]  # type: ignore[return-value]
