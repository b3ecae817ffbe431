"""Replay programs: what ``@fused`` (:mod:`lazybn.trace`) runs instead of a traced body.

A :class:`Program` is a trace's log (kernel launches, matmuls, transposes, host calls) written
as a straight-line Python function. Every array is named by a *value slot* (the argument
arrays, then each operation's results, in order); the function repeats the operations on a
call's arrays and rebuilds the result from the slots through the constructors of its types.
:func:`compile_program` writes one from a log, or raises :class:`Opaque` when the log touches
an array that no slot names or the result would not rebuild as traced.
"""

from __future__ import annotations

import enum
import functools
import types
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, assert_never, final

import numpy as np

from . import fuse
from .array import Comp, Manifest
from .fuse import cache
from .fuse.graph import Derived, Scalar, derive
from .ops import view

STATIC = (int, float, bool, str, bytes, type(None), complex)  # plain values: kept as they are
NUMPY_SCALARS = (np.number, np.bool_)  # numpy's plain values (np.float32(0.1)): keyed by type and bits
NUMBER_TYPES = frozenset({int, float, bool, complex})


def dtype_like(x: object) -> bool:
    """A dtype (``np.dtype("float32")``) or a number type (``np.float32``, ``float``): immutable
    plain values, as a ``dtype`` argument gives them."""
    return isinstance(x, np.dtype) or isinstance(x, type) and (x in NUMBER_TYPES or issubclass(x, np.generic))


class Opaque(Exception):
    """The value cannot take part in a replay (see :mod:`lazybn.trace`)."""


FIELDS: dict[type, tuple[str, ...]] = {}  # the dataclass types seen, with their fields (see field_names)


def field_names(t: type) -> tuple[str, ...]:
    """A dataclass's fields, in order; opaque if its constructor does not take them all."""
    got = FIELDS.get(t)
    if got is None:
        fs = fields(t)
        if not all(f.init for f in fs):
            raise Opaque(f"{t.__name__} has fields its constructor does not take")
        got = FIELDS[t] = tuple(f.name for f in fs)
    return got


# A result template: how to rebuild the function's result from the replay's arrays.
#   ("M", slot, comp)           a Manifest over value slot ``slot``
#   ("E", shape, dtype, comp)   a Manifest over an empty array (it holds no values)
#   ("S", value)                a plain value or a frozen dataclass of plain values, returned as traced
#   ("T", type, [templates])    a tuple or list
#   ("K", [(key, template)])    a dict with plain keys, in their order
#   ("D", type, [(name, template)])  a dataclass, rebuilt by its constructor
Template = tuple[Any, ...]


def _template(x: object, slot_of: dict[int, int]) -> Template:
    t = type(x)
    if t is Manifest:
        a = x._leaf.array  # type: ignore[attr-defined]
        slot = slot_of.get(id(a))
        if slot is not None:
            return ("M", slot, x.comp)  # type: ignore[attr-defined]
        if a.size == 0:  # holds no values: the same on every call
            return ("E", a.shape, a.dtype, x.comp)  # type: ignore[attr-defined]
        raise Opaque("a result array that no kernel, matmul or host call made (lb.matrix or lb.vector in the body, "
                     "say)")
    if t is tuple or t is list:
        return ("T", t, [_template(y, slot_of) for y in x])  # type: ignore[attr-defined]
    if t is dict:
        if not all(type(k) in STATIC or isinstance(k, (enum.Enum, *NUMPY_SCALARS)) for k in x):  # type: ignore[attr-defined]
            raise Opaque("a result dict with a key that is not a plain value")
        return ("K", [(k, _template(y, slot_of)) for k, y in x.items()])  # type: ignore[attr-defined]
    if t in STATIC or isinstance(x, (enum.Enum, *NUMPY_SCALARS)) or dtype_like(x):
        return ("S", x)
    if is_dataclass(x) and not isinstance(x, type):
        named = [(name, _template(getattr(x, name), slot_of)) for name in field_names(t)]
        if t.__dataclass_params__.frozen and all(y[0] == "S" for _, y in named):  # type: ignore[attr-defined]
            return ("S", x)  # immutable and holds no arrays (NoGrad(), Activation(relu)): the same value
        return ("D", t, named)
    raise Opaque("a dynamic argument in the result" if t is Scalar else f"a result of type {t.__name__}")


def _same(a: object, b: object) -> bool:
    """Whether a rebuilt result ``a`` is the traced result ``b``: the same arrays (by identity),
    types, plain values and attributes."""
    if a is b:
        return True
    t = type(a)
    if t is not type(b):
        return False
    if t is Manifest:
        x, y = a._leaf.array, b._leaf.array  # type: ignore[attr-defined]
        same = x is y or (x.size == 0 and x.shape == y.shape and x.dtype == y.dtype)
        return same and a._comp is b._comp  # type: ignore[attr-defined]
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):  # the same keys in the same order
        return _same(list(a), list(b)) and all(_same(a[k], b[k]) for k in a)
    if t is float or t is complex:
        return repr(a) == repr(b)  # -0.0 is not 0.0, NaN is NaN
    if isinstance(a, NUMPY_SCALARS):
        return bool(a.tobytes() == b.tobytes())  # type: ignore[attr-defined]
    if t in STATIC or isinstance(a, (enum.Enum, np.dtype)):
        return a == b
    if is_dataclass(a):
        names = getattr(a, "__dict__", None) or {n: None for n in field_names(t)}
        attrs = getattr(b, "__dict__", None) or names
        return names.keys() == attrs.keys() and all(_same(getattr(a, n), getattr(b, n)) for n in names)
    return False


def _plain(x: object) -> bool:
    """An immutable plain value (or a tuple of them): what a logged host call may keep for its replays."""
    if type(x) is tuple:
        return all(_plain(y) for y in x)
    return type(x) in STATIC or isinstance(x, (enum.Enum, np.dtype, np.generic))


def _stateless(fn: object) -> bool:
    """Whether calling ``fn`` again needs nothing of the call that made it: no closure or default
    holding a mutable value, no bound object (an argument of the traced call, say)."""
    if isinstance(fn, functools.partial):
        return _stateless(fn.func) and _plain(fn.args) and _plain(tuple(fn.keywords.values()))
    if isinstance(fn, types.FunctionType):
        try:
            cells = tuple(c.cell_contents for c in fn.__closure__ or ())
        except ValueError:  # an empty cell: a name bound after the function was made
            return False
        return _plain(cells) and _plain(fn.__defaults__ or ()) and _plain(tuple((fn.__kwdefaults__ or {}).values()))
    return not isinstance(fn, types.MethodType)


def _threads() -> np.uint64:
    """The thread count a ``Comp.Par`` kernel is launched with (numba is imported with the kernels)."""
    import numba

    return np.uint64(numba.get_num_threads())


def _empty(shape: tuple[int, ...], dtype: np.dtype[Any], comp: Comp) -> Manifest[Any]:
    a = np.empty(shape, dtype)
    a.setflags(write=False)
    return Manifest._of(a, comp)


Run = Callable[[list[Any], list[Any]], Any]


@final
@dataclass(frozen=True, slots=True)
class Program:
    """What a replay runs: ``run(arrays, values)`` repeats the logged operations on the argument
    arrays and the dynamic values, then rebuilds the result.

    ``run`` is straight-line Python written from the log (``source``): a line per array it
    allocates, per call and per read-only flag, then the result's constructor calls, so a replay
    pays no interpretation of the log. Value slots are the argument arrays (in flattening order)
    followed by every operation's results, in order; slot ``k`` is the local ``v<k>``.
    """

    run: Run
    source: str
    launches: int


class _Source:
    """The lines of a replay function, and the objects its global names stand for."""

    def __init__(self, n_args: int) -> None:
        self.names: dict[str, object] = {"empty": np.empty, "matmul": np.matmul, "of": Manifest._of, "view": view,
                                         "threads": _threads, "empty_manifest": _empty,
                                         "count": functools.partial(cache.count, "launches")}
        self.slots = n_args  # value slots named so far

    def const(self, value: object, kind: str = "c") -> str:
        """A global name for ``value`` (``kind`` makes the source readable)."""
        name = f"{kind}{len(self.names)}"
        self.names[name] = value
        return name

    def result(self, tpl: Template) -> str:
        """The expression that rebuilds the result of template ``tpl`` from the slots."""
        tag = tpl[0]
        if tag == "M":
            return f"of(v{tpl[1]}, {self.const(tpl[2], 'comp')})"
        if tag == "S":
            return self.const(tpl[1])
        if tag == "E":
            return f"empty_manifest({tpl[1]!r}, {self.const(tpl[2])}, {self.const(tpl[3])})"
        if tag == "T":
            parts = "".join(f"{self.result(y)}, " for y in tpl[2])
            return f"({parts})" if tpl[1] is tuple else f"[{parts}]"
        if tag == "K":
            return "{" + "".join(f"{self.const(k, 'key')}: {self.result(y)}, " for k, y in tpl[1]) + "}"
        keyword = {f.name for f in fields(tpl[1]) if f.kw_only}  # every field, in order (field_names)
        args = [f"{name}={self.result(y)}" if name in keyword else self.result(y) for name, y in tpl[2]]
        return f"{self.const(tpl[1], tpl[1].__name__)}({', '.join(args)})"  # the constructor validates


def compile_program(arrays: list[Any], log: list[fuse.Logged], result: object) -> Program:
    """Name every array the log touches by its value slot (opaque if one has no slot), then
    write the replay function."""
    slot_of: dict[int, int] = {id(a): k for k, a in reversed(list(enumerate(arrays)))}
    slots = list(arrays)  # the traced values of the slots
    src = _Source(len(arrays))

    def slot(a: object) -> str:
        k = slot_of.get(id(a))
        if k is None:
            raise Opaque("an operation read an array the arguments do not provide (one the body made with lb.vector, "
                         "lb.matrix, ..., or read from elsewhere: pass it as an argument, or make it with "
                         "lazybn.fuse.host_call)")
        return f"v{k}"

    def produced(r: object) -> str:
        slot_of.setdefault(id(r), len(slots))
        slots.append(r)
        return f"v{len(slots) - 1}"

    def argument(x: object, dynamic: dict[int, tuple[int, Derived]], k: int, convert: str = "") -> str:
        """A plain argument, or what this call's dynamic value makes of it (through ``convert``)."""
        if k not in dynamic:
            return src.const(x)
        index, ops = dynamic[k]
        return f"{convert}({derive(f'values[{index}]', ops, src.const)})"

    lines: list[str] = []
    launches = 0
    for entry in log:
        match entry:
            case fuse.Launch():
                launches += 1
                outs = [f"o{launches}_{k}" for k in range(len(entry.out_shapes))]
                dtype, dyn = src.const(entry.dtype, "dtype"), {k: (i, ops) for k, i, ops in entry.dynamic}
                convert = src.const(np.float64, "as")  # a dynamic value becomes a kernel's constant, float64
                lines += [f"{o} = empty({shape!r}, {dtype})" for o, shape in zip(outs, entry.out_shapes)]
                args = [slot(a) for a in entry.leaves]
                args += [argument(x, dyn, k, convert) for k, x in enumerate(entry.tail)]
                args += outs + (["threads()"] if entry.par else [])
                lines.append(f"{src.const(entry.fn, 'kernel')}({', '.join(args)})")
                lines += [f"{o}.setflags(write=False)" for o in outs]
                lines += [f"{produced(r)} = {outs[k]}" for r, k in zip(entry.results, entry.order)]
            case fuse.Matmul():
                a, b, out = slot(entry.a), slot(entry.b), produced(entry.result)
                lines += [f"{out} = matmul({a}, {b})", f"{out}.setflags(write=False)"]
            case fuse.Transpose():
                a = slot(entry.a)
                lines.append(f"{produced(entry.result)} = {a}.T")
            case fuse.Reshape():
                a = slot(entry.a)
                lines.append(f"{produced(entry.result)} = view({a}, {entry.shape!r})")  # as ``reshape`` checks
            case fuse.HostCall():
                if not (_plain(entry.args) and _stateless(entry.fn)):  # the replay would call it with
                    raise Opaque("a host call with a mutable argument or state")  # what this call held
                dyn = {k: (i, ops) for k, i, ops in entry.dynamic}
                args = [argument(x, dyn, k) for k, x in enumerate(entry.args)]
                out = produced(entry.result)
                lines += [f"{out} = {src.const(entry.fn, 'host')}({', '.join(args)})", f"{out}.setflags(write=False)"]
            case _:
                assert_never(entry)
    def unpack(n: int, name: str) -> list[str]:
        """``v0, v1, ..., = name``: the first ``n`` slots as locals."""
        return [f"{''.join(f'v{k}, ' for k in range(n))}= {name}"] if n else []

    ret = src.result(_template(result, slot_of))
    replay = [*unpack(len(arrays), "arrays"), *lines, *([f"count({launches})"] if launches else []), f"return {ret}"]
    rebuild = [*unpack(len(slots), "slots"), f"return {ret}"]  # the result alone, from the traced slots
    source = "\n".join(["def replay(arrays, values):", *(f"    {ln}" for ln in replay),
                        "def rebuild(slots):", *(f"    {ln}" for ln in rebuild)])
    exec(compile(source, "<lazybn replay>", "exec"), src.names)
    try:  # a constructor that does more than store its arguments (InitVar, __post_init__ changing
        again = src.names["rebuild"](slots)  # type: ignore[operator]  # fields, its own __init__)
    except Exception:  # would rebuild something else
        raise Opaque("the result does not rebuild through its constructors") from None
    if not _same(again, result):
        raise Opaque("the result does not rebuild through its constructors")
    return Program(src.names["replay"], source, launches)  # type: ignore[arg-type]
