"""Replay programs: what ``@fused`` (:mod:`lazybn.trace`) runs instead of a traced body.

A :class:`Program` is a trace's log (kernel launches, matmuls, transposes, host calls) with
every array named by a *value slot* (the argument arrays, then each operation's results, in
order), plus a template of the result and the function that rebuilds it from the slots.
:func:`compile_program` makes one from a log, or raises :class:`Opaque` when the log touches
an array that no slot names.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, assert_never, final

import numpy as np

from . import fuse
from .array import Manifest
from .fuse import cache

STATIC = (int, float, bool, str, bytes, type(None), complex)  # plain values: kept as they are


class Opaque(Exception):
    """The value cannot take part in a replay (see :mod:`lazybn.trace`)."""


_field_names: dict[type, tuple[str, ...]] = {}


def field_names(t: type) -> tuple[str, ...]:
    """A dataclass's fields, in order; opaque if its constructor does not take them all."""
    got = _field_names.get(t)
    if got is None:
        fs = fields(t)
        if not all(f.init for f in fs):
            raise Opaque(f"{t.__name__} has fields its constructor does not take")
        got = _field_names[t] = tuple(f.name for f in fs)
    return got


# A result template: how to rebuild the function's result from the replay's arrays.
#   ("M", slot, comp)           a Manifest over value slot ``slot``
#   ("E", shape, dtype, comp)   a Manifest over an empty array (it holds no values)
#   ("S", value)                a plain value or a frozen dataclass of plain values, returned as traced
#   ("T", type, [templates])    a tuple or list
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
        raise Opaque("a result array not computed by a logged operation")
    if t is tuple or t is list:
        return ("T", t, [_template(y, slot_of) for y in x])  # type: ignore[attr-defined]
    if t in STATIC or isinstance(x, enum.Enum):
        return ("S", x)
    if is_dataclass(x) and not isinstance(x, type):
        named = [(name, _template(getattr(x, name), slot_of)) for name in field_names(t)]
        if t.__dataclass_params__.frozen and all(y[0] == "S" for _, y in named):  # type: ignore[attr-defined]
            return ("S", x)  # immutable and holds no arrays (NoGrad(), Activation(relu)): the same value
        return ("D", t, named)
    raise Opaque(t.__name__)


Builder = Callable[[list[Any]], Any]


def builder(tpl: Template) -> Builder:
    """A function rebuilding the result of ``tpl`` from the value slots (made once per program)."""
    tag = tpl[0]
    if tag == "M":
        slot, comp, of = tpl[1], tpl[2], Manifest._of
        return lambda vals: of(vals[slot], comp)
    if tag == "S":
        value = tpl[1]
        return lambda vals: value
    if tag == "E":
        shape, dtype, comp = tpl[1], tpl[2], tpl[3]

        def empty(vals: list[Any]) -> Any:
            a = np.empty(shape, dtype)
            a.setflags(write=False)
            return Manifest._of(a, comp)

        return empty
    if tag == "T":
        parts = [builder(y) for y in tpl[2]]
        if tpl[1] is tuple:
            return lambda vals: tuple([p(vals) for p in parts])
        return lambda vals: [p(vals) for p in parts]
    cls, fields_in_order = tpl[1], [builder(y) for _, y in tpl[2]]  # every field, in order (field_names)
    return lambda vals: cls(*[p(vals) for p in fields_in_order])  # the constructor validates


@final
@dataclass(frozen=True, slots=True)
class _Kernel:
    """A logged kernel launch with its arrays named by value slot."""

    fn: cache.KernelFn
    leaves: tuple[int, ...]
    tail: tuple[Any, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype[Any]
    par: bool
    order: tuple[int, ...]
    dynamic: tuple[tuple[int, int], ...]  # (tail position, index of the dynamic value)


@final
@dataclass(frozen=True, slots=True)
class _Matmul:
    a: int
    b: int


@final
@dataclass(frozen=True, slots=True)
class _Transpose:
    a: int


@final
@dataclass(frozen=True, slots=True)
class _Host:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    dynamic: tuple[tuple[int, int], ...]  # (argument position, index of the dynamic value)


_Op = _Kernel | _Matmul | _Transpose | _Host


@final
@dataclass(frozen=True, slots=True)
class Program:
    """What a replay runs: the logged operations in order, then the result rebuilt from the slots.

    Value slots are the argument arrays (in flattening order) followed by every operation's
    results, in order.
    """

    ops: tuple[_Op, ...]
    result: Template
    build: Builder
    launches: int

    def run(self, arrays: list[Any], values: list[float]) -> Any:
        vals = arrays
        for op in self.ops:
            if type(op) is _Kernel:
                outs = [np.empty(shape, op.dtype) for shape in op.out_shapes]
                args = [vals[i] for i in op.leaves]
                if op.dynamic:
                    tail = list(op.tail)
                    for k, index in op.dynamic:
                        tail[k] = op.dtype.type(values[index])
                    args += tail
                else:
                    args += op.tail
                args += outs
                if op.par:
                    import numba

                    args.append(np.uint64(numba.get_num_threads()))
                op.fn(*args)
                for o in outs:
                    o.setflags(write=False)
                vals += [outs[k] for k in op.order]
            elif type(op) is _Matmul:
                out = np.matmul(vals[op.a], vals[op.b])
                out.setflags(write=False)
                vals.append(out)
            elif type(op) is _Transpose:
                vals.append(vals[op.a].T)
            else:
                args = list(op.args)
                for k, index in op.dynamic:
                    args[k] = values[index]
                out = op.fn(*args)
                out.setflags(write=False)
                vals.append(out)
        cache.count("launches", self.launches)
        return self.build(vals)


def compile_program(arrays: list[Any], log: list[fuse.Logged], result: object) -> Program:
    """Name every array the log touches by its value slot; opaque if one has no slot."""
    slot_of: dict[int, int] = {id(a): k for k, a in reversed(list(enumerate(arrays)))}
    count = len(arrays)  # Program.run appends one value per result, duplicates included

    def slot(a: object) -> int:
        k = slot_of.get(id(a))
        if k is None:
            raise Opaque("an operation read an array the arguments do not provide")
        return k

    def produced(*results: object) -> None:
        nonlocal count
        for r in results:
            slot_of.setdefault(id(r), count)
            count += 1

    ops: list[_Op] = []
    for entry in log:
        match entry:
            case fuse.Launch():
                ops.append(_Kernel(entry.fn, tuple(slot(a) for a in entry.leaves), entry.tail, entry.out_shapes,
                                   entry.dtype, entry.par, entry.order, entry.dynamic))
                produced(*entry.results)
            case fuse.Matmul():
                ops.append(_Matmul(slot(entry.a), slot(entry.b)))
                produced(entry.result)
            case fuse.Transpose():
                ops.append(_Transpose(slot(entry.a)))
                produced(entry.result)
            case fuse.HostCall():
                ops.append(_Host(entry.fn, entry.args, entry.dynamic))
                produced(entry.result)
            case _:
                assert_never(entry)
    tpl = _template(result, slot_of)
    return Program(tuple(ops), tpl, builder(tpl), sum(type(op) is _Kernel for op in ops))


