"""``@fused``: run a step function's Python once per signature, then replay its kernels.

A step such as batch norm's forward builds about thirty delayed nodes and canonicalises them
before its single kernel runs; at small batch sizes that Python costs several times the
kernel. ``@fused`` removes it without touching the step code::

    @fused
    def bn_forward(inp: Matrix, layer: Batchnorm1d) -> tuple[Matrix, Vector, Vector]:
        ...  # steps 1-9, ending in compute_all

The first call with a given *signature* runs the body while the engine logs every kernel launch,
``matmul`` and ``transpose`` (a trace). Later calls with the same signature skip the body: they
repeat the logged operations on the new argument arrays and rebuild the result. The signature is everything the body may
depend on besides array values: the structure of the arguments (tuples, lists, dicts keyed by
plain values, dataclasses such as layers and optimizers), every array's shape, dtype and ``Comp``, which arguments are the same
array, and every non-array value (floats, ints, enums, numpy scalars such as ``np.float32(0.1)``,
dtypes and number types such as ``np.float32``, ...) by type and value (floats bit for bit: -0.0
is not 0.0).

The contract, which lazybn's own step functions keep: **the body reads array values only through
lazybn operations** (it may branch on shapes and plain values, never on data), **and plain
values only from its arguments**: a plain value it reads elsewhere (a global, a variable of an
enclosing function, a field of a default argument the call leaves out) is not part of the
signature, so the replays keep the value the trace read, whatever it has become (make it an
argument, dynamic if it changes from call to call). Anything the replay could not reproduce
makes the signature *opaque*, and every call with it runs the body as if undecorated: reading
values in Python (``m.array``, ``np.asarray(m)``, printing), a delayed or numpy array among the
arguments, an operation reading an array the arguments do not provide (a global, a random array
made outside ``fuse.host_call``, an array the body makes from data with ``vector`` or ``matrix``;
those of ``replicate``, ``zeros`` and ``ones`` are host calls), a result array no logged
operation made, a result of a type it cannot rebuild (it rebuilds tuples, lists, dataclasses,
and dicts whose keys are plain values: the keys as traced, in order, in a new dict each call), a
body that changes its arguments (a replay would not), a dataclass argument with attributes
besides its fields, a ``host_call`` whose function or arguments hold mutable values (a list, a
closure over one: the replay would call it with what the first call held).
The first call that finds a signature opaque warns with a :class:`~lazybn.errors.ReplayWarning`
naming the function and the reason, once per function (replays switched off, or a call inside
another function's trace, do not warn: the body is meant to run).
Dataclasses in the result are rebuilt through their constructor, so their validation runs on
every call (layer constructors check values through ``_leaf``, which does not count as a read);
one whose constructor rebuilds something else (its own ``__init__``, an ``InitVar``, a
``__post_init__`` that changes fields) is opaque.

A plain value that changes on every call would make every call a trace. ``@fused(dynamic=
("lr_scale", "correction"))`` takes such parameters (a number or a tuple of numbers) out of the
signature (each number's type stays in it): the trace runs with
:class:`~lazybn.fuse.graph.Scalar` stand-ins, which lazybn operations accept as numbers and
which become runtime arguments of the kernels, so a replay passes each call's values. A
stand-in may be negated (``-s``) or divide a number (``1.0 / s``): the replay repeats that
arithmetic on each call's value. Other Python arithmetic or tests on a stand-in raise
``ArgumentError`` (a ``TypeError``) at the first call (a replay could not repeat them);
``isinstance`` cannot be caught and sees a ``Scalar``, so a body must not branch on a dynamic
value's type. The optimizer step uses this for the learning-rate schedule and Adam's bias
correction, the training step for batch renormalisation's bounds.

Building a call's signature walks all of its arguments (20-50 µs for a training step's). Once
a signature has been replayed, its *guard* checks later calls instead: straight-line Python
written for that signature (the types, lengths, shapes, dtypes, ``Comp`` and plain values it
holds, and that no two arguments are the same array) that hands the call's arrays and dynamic
values to the replay, 3-6 times faster than building the signature. A call no guard accepts
builds its signature as before. A function keeps at most :data:`MAX_GUARDS` guards, the most
recently used checked first; once they are all taken, every :data:`REGUARD` replays by key
write a guard for the signature replayed, in place of the least recently used guard (so a
working set that comes after many other signatures gets guards, and a cycle through more
signatures than guards writes one guard per REGUARD calls).

``LAZYBN_NO_REPLAY=1`` in the environment switches replays off; ``LAZYBN_DEBUG=1`` prints each
replay function and guard as it is written. Calls inside another function's trace run their
body (they are part of the outer trace). Each function keeps at most :data:`MAX_SIGNATURES`
programs: a new signature beyond them makes it forget the least recently used one that no guard
checks.
"""

from __future__ import annotations

import enum
import functools
import inspect
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any, ParamSpec, TypeVar, overload

import numpy as np

from . import fuse
from .array import Comp, Manifest
from .errors import ArgumentError, ReplayWarning
from .fuse import cache
from .fuse.graph import Scalar
from .guards import Guard, dynamic_places, float_key, numbers, write_guard
from .replay import FIELDS, NUMPY_SCALARS, STATIC, Opaque, Program, compile_program, dtype_like, field_names

P = ParamSpec("P")
R = TypeVar("R")

MAX_SIGNATURES = 64
MAX_GUARDS = 8  # signatures per function checked by a guard (the others build their key)
REGUARD = 32  # replays by key, with every guard slot taken, that replace the least recently used guard

# ``LAZYBN_NO_REPLAY=1`` runs every body every time (to rule the replay out when debugging).
REPLAY = not os.environ.get("LAZYBN_NO_REPLAY")


_PAR = Comp.Par  # a global: an enum member's lookup costs more than the rest of an array's entry


def _flatten(x: object, arrays: list[Any], sig: list[object]) -> None:
    """Append ``x``'s arrays to ``arrays`` and its structure and plain values to ``sig``.

    This runs on every call of a fused function, so the common cases come first and a
    dataclass's Manifest fields are handled without a recursive call. A float is its own key
    where equal values have equal bits (not ±0.0 or NaN, which are keyed by their bits: ``float_key``).
    """
    t = type(x)
    if t is Manifest:
        leaf = x._leaf  # type: ignore[attr-defined]
        arrays.append(leaf.array)
        sig.append((leaf.shape, leaf.dtype.char, x._comp is _PAR))  # type: ignore[attr-defined]
    elif t is tuple or t is list:
        sig.append((t, len(x)))  # type: ignore[arg-type]
        for y in x:  # type: ignore[attr-defined]
            _flatten(y, arrays, sig)
    elif t is float:
        sig.append((t, x if x == x and x != 0.0 else float_key(x)))  # type: ignore[arg-type]
    elif t in FIELDS or (is_dataclass(x) and not isinstance(x, type)):  # a dataclass seen before, or a new one
        names = field_names(t)
        sig.append(t)
        if t.__dictoffset__ and len(x.__dict__) != len(names):  # an attribute besides the fields
            raise Opaque(f"a {t.__name__} argument has attributes besides its fields")
        for name in names:
            y = getattr(x, name)
            ty = type(y)
            if ty is Manifest:
                leaf = y._leaf
                arrays.append(leaf.array)
                sig.append((leaf.shape, leaf.dtype.char, y._comp is _PAR))
            elif ty is float:
                sig.append((ty, y if y == y and y != 0.0 else float_key(y)))
            elif ty is int or ty is bool:
                sig.append((ty, y))
            else:
                _flatten(y, arrays, sig)
    elif t is dict:  # keyed by plain values: the keys in order, then as a tuple holds its items
        sig.append((t, len(x)))  # type: ignore[arg-type]
        for k, y in x.items():  # type: ignore[attr-defined]
            if type(k) not in STATIC and not isinstance(k, enum.Enum):
                raise Opaque("a dict argument with a key that is not a plain value")
            _flatten(k, arrays, sig)
            _flatten(y, arrays, sig)
    elif t is complex:
        sig.append((t, float_key(x.real), float_key(x.imag)))  # type: ignore[attr-defined]
    elif t in STATIC or isinstance(x, enum.Enum):
        sig.append((t, x))
    elif isinstance(x, NUMPY_SCALARS):  # np.float32(0.1): by type and bits, as a float
        sig.append((t, x.tobytes()))
    elif dtype_like(x):  # dtype=np.float32
        sig.append((t, x))
    else:
        raise Opaque(f"an argument of type {t.__name__}")


_FUSED: weakref.WeakSet[Any] = weakref.WeakSet()  # every @fused function


def _forget_replays() -> None:
    """In a child forked after a Par kernel ran (see :data:`lazybn.fuse.after_fork`): a replay may call one."""
    for run in list(_FUSED):
        run.programs.clear()
        run.guards.clear()


fuse.after_fork.append(_forget_replays)

_OPAQUE = None  # a signature the replay cannot serve: run the body every time
_UNSEEN = Program(lambda arrays, values: None, "", 0)  # a signature not traced yet


def _stand_ins(v: object, values: list[Any], start: int) -> tuple[object, int]:
    """``v`` with every number replaced by its :class:`Scalar` stand-in (indices from ``start``)."""
    if type(v) is tuple:
        items = []
        for y in v:
            item, start = _stand_ins(y, values, start)
            items.append(item)
        return tuple(items), start
    if v is None:
        return None, start
    return Scalar(values[start], start), start + 1


def _holds_stand_in(x: object) -> bool:
    """Whether ``x`` may hold a :class:`Scalar` stand-in (what a trace with dynamic values may leave
    in its result, or in a mutable argument): looked for in tuples, lists, dicts and dataclasses;
    any other object that is not a plain value or an array may hold one."""
    todo, seen = [x], set()
    while todo:
        y = todo.pop()
        t = type(y)
        if (t is Manifest or t in STATIC or isinstance(y, (enum.Enum, *NUMPY_SCALARS))
                or isinstance(y, np.ndarray) and y.dtype != object):
            continue
        if id(y) in seen:
            continue
        seen.add(id(y))
        if isinstance(y, (tuple, list)) and (t is tuple or t is list):
            todo.extend(y)
        elif isinstance(y, dict) and t is dict:
            todo += [*y.keys(), *y.values()]
        elif is_dataclass(y) and not isinstance(y, type):
            todo += [getattr(y, f.name) for f in fields(y)] + list(getattr(y, "__dict__", {}).values())
        else:
            return True
    return False


@overload
def fused(f: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def fused(*, dynamic: tuple[str, ...] = ...) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def fused(f: Callable[P, R] | None = None, /, *,
          dynamic: tuple[str, ...] = ()) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Trace ``f`` once per signature and replay its kernels afterwards (see the module doc).

    ``dynamic`` names parameters whose values (a number, or a tuple of numbers) are not part of
    the signature: the replay passes each call's values to the kernels. In the body they may only
    be handed to lazybn operations, negated, or divide a number; anything else raises
    ``ArgumentError`` on the first call.
    """
    if f is None:
        return lambda g: _fuse(g, dynamic)
    return _fuse(f, dynamic)


def _signature(where: tuple[tuple[int, str], ...], args: tuple[object, ...],
               kwargs: dict[str, Any]) -> tuple[tuple[object, ...], list[Any], list[Any]]:
    """A call's signature, its argument arrays and its dynamic values; opaque if it has none."""
    arrays: list[Any] = []
    sig: list[object] = []
    values: list[Any] = []
    static_args: Sequence[object] = args
    static_kwargs = kwargs
    if where:
        held_args, static_kwargs = list(args), dict(kwargs)
        for held, at in dynamic_places(where, held_args, static_kwargs):
            sig.append(numbers(held[at], values))  # the value leaves the signature, its shape stays
            held[at] = None
        static_args = held_args
    _flatten(static_args, arrays, sig)
    if static_kwargs:
        _flatten(sorted(static_kwargs.items()), arrays, sig)
    if len({id(a) for a in arrays}) < len(arrays):  # which arguments are the same array is part of the signature
        ids = [id(a) for a in arrays]
        sig.append(tuple(ids.index(i) for i in ids))
    return tuple(sig), arrays, values


def _evict(programs: dict[tuple[object, ...], Program | None], guards: list[tuple[Guard, Program]]) -> None:
    """Forget the least recently used signature that no guard checks (guarded ones are in use)."""
    keys, held = list(programs), [p for _, p in guards]  # least recently used first; list(): atomic
    old = next((k for k in keys if not any(programs.get(k) is p for p in held)), keys[0])
    evicted = programs.pop(old, None)
    guards[:] = [(g, p) for g, p in guards if p is not evicted]


def _to_front(guards: list[tuple[Guard, Program]], entry: tuple[Guard, Program]) -> None:
    """Check a guard that matched first from now on (unless another thread dropped it meanwhile:
    each list operation is atomic, an index found before it may be stale)."""
    try:
        guards.remove(entry)
    except ValueError:
        return
    guards.insert(0, entry)


def _fuse(f: Callable[P, R], dynamic: tuple[str, ...]) -> Callable[P, R]:
    params = inspect.signature(f).parameters
    positional = [p.name for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for name in dynamic:
        if name not in params or params[name].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ArgumentError(f"fused: {f.__qualname__} has no parameter {name!r} to make dynamic")
    # where each dynamic parameter is: its position, or past every position if keyword-only
    where = tuple((positional.index(name) if name in positional else 1 << 30, name) for name in dynamic)
    programs: dict[tuple[object, ...], Program | None] = {}
    guards: list[tuple[Guard, Program]] = []  # replayed signatures checked without a key, most recently used first
    missed = [0]  # replays by key since a guard was last written
    warned = [False]

    def opaque(reason: Opaque) -> None:
        """Tell the caller, once, that a signature runs the body on every call."""
        if not warned[0]:
            warned[0] = True
            warnings.warn(ReplayWarning(f"@fused {f.__module__}.{f.__qualname__} is not replayed, every call runs "
                                        f"its body: {reason}"), stacklevel=3)

    @functools.wraps(f)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if not REPLAY or fuse.active() is not None:  # switched off, or part of an enclosing trace
            return f(*args, **kwargs)
        for i, entry in enumerate(guards):
            got = entry[0](args, kwargs)
            if got is not None:
                cache.count("replays")
                if i:
                    _to_front(guards, entry)
                return entry[1].run(*got)  # type: ignore[no-any-return]
        try:
            key, arrays, values = _signature(where, args, kwargs)
        except Opaque as reason:
            out = f(*args, **kwargs)
            opaque(reason)  # after the body: a call it refuses gets its error alone
            return out
        if (prog := programs.get(key, _UNSEEN)) is not _UNSEEN:  # opaque or not, now the most recently
            programs[key] = programs.pop(key, prog)  # used (evicted last)
        if prog is _OPAQUE:
            return f(*args, **kwargs)
        if prog is not _UNSEEN:
            cache.count("replays")
            missed[0] += 1  # with every slot taken, a signature replayed by key often enough (a working set that
            if len(guards) < MAX_GUARDS or missed[0] >= REGUARD:  # came late) takes the least recently used one's
                written = write_guard(where, args, kwargs, arrays)
                if written is not None:
                    del guards[MAX_GUARDS - 1:]
                    guards.insert(0, (written, prog))
                    missed[0] = 0
            return prog.run(arrays, values)  # type: ignore[no-any-return]
        args_in: list[object] = list(args)
        kwargs_in = dict(kwargs)
        k = 0
        for held, at in dynamic_places(where, args_in, kwargs_in):  # trace with stand-ins: the
            held[at], k = _stand_ins(held[at], values, k)  # kernels take the values as arguments
        with fuse.recording() as rec:
            out = f(*args_in, **kwargs_in)  # type: ignore[arg-type]
        while len(programs) >= MAX_SIGNATURES:
            _evict(programs, guards)
        cache.count("traces")
        try:
            if rec.read_values:
                raise Opaque("the body read array values in Python")
            after, now, _ = _signature(where, args, kwargs)
            if after != key or any(a is not b for a, b in zip(now, arrays)):
                raise Opaque("the body changed its arguments")  # a replay would not
            prog = programs[key] = compile_program(arrays, rec.log, out)
            if os.environ.get("LAZYBN_DEBUG"):
                print(f"lazybn: replay of {f.__qualname__}\n{prog.source}", file=sys.stderr)
        except Opaque as reason:
            programs[key] = _OPAQUE
            opaque(reason)
            # A stand-in left in the result or an argument: run the body again with the values (and
            # only then: a body that changes its arguments would change them twice)
            if values and (_holds_stand_in(out) or _holds_stand_in((args, kwargs))):
                return f(*args, **kwargs)
        return out

    _FUSED.add(run)
    run.programs = programs  # type: ignore[attr-defined]
    run.guards = guards  # type: ignore[attr-defined]
    return run
