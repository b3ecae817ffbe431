"""The typed array core, after massiv: manifest arrays in memory, delayed arrays as promises.

``Manifest[Ix]`` owns a read-only numpy array of rank 1 (``Ix1``, alias ``Vector``) or rank 2
(``Ix2``, alias ``Matrix``). Every operation on arrays gives a ``Delayed[Ix]``: a node of an
expression graph, shape-checked when built, that does no work on the data. ``compute`` (one
array) and ``compute_all`` (several at once) are the only routes to memory: they fuse the
whole expression into one generated numba kernel.

The computation strategy travels with the arrays, as in massiv: an array built with ``comp=Comp.Par``
(or given one by ``set_comp``) makes every expression that reads it run on all cores once its largest
matrix loop nest holds 4 MiB or more (below that, threads cost more than they save); ``Comp.Seq`` on one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, final, overload

import numpy as np
from numpy.typing import DTypeLike

from . import fuse
from .errors import ArgumentError, DTypeError, RankError, ShapeError, a_kind, is_real
from .fuse.graph import (BinOp, Const, FloatArray, Fn, Leaf, Map, Node, Number, Zip, describe, is_number,
                         scalar_value)

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13


@final
class Ix1:
    """Index type of rank-1 arrays (vectors)."""


@final
class Ix2:
    """Index type of rank-2 arrays (matrices), indexed (row, column)."""


Ix = TypeVar("Ix", Ix1, Ix2)


class Comp(enum.Enum):
    """Computation strategy: ``Seq`` runs a kernel on one core, ``Par`` on all of them (from 4 MiB
    in its largest matrix loop nest; smaller and vector-only kernels run serially)."""

    Seq = "Seq"
    Par = "Par"


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class _Arith(Generic[Ix]):
    """Elementwise arithmetic shared by manifest and delayed arrays of the same rank."""

    __slots__ = ()
    __array_ufunc__ = None  # numpy defers to these methods: np.float32(2) * x is a Delayed, not an ndarray

    def __bool__(self) -> bool:
        raise ArgumentError("the truth value of a lazybn array is ambiguous")

    def _expr(self) -> tuple[Node, Comp]:
        raise NotImplementedError

    def __add__(self, other: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]:
        return _zip(BinOp.add, self, other)

    def __radd__(self, other: Number) -> Delayed[Ix]:
        return _zip(BinOp.add, other, self)

    def __sub__(self, other: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]:
        return _zip(BinOp.sub, self, other)

    def __rsub__(self, other: Number) -> Delayed[Ix]:
        return _zip(BinOp.sub, other, self)

    def __mul__(self, other: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]:
        return _zip(BinOp.mul, self, other)

    def __rmul__(self, other: Number) -> Delayed[Ix]:
        return _zip(BinOp.mul, other, self)

    def __truediv__(self, other: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]:
        return _zip(BinOp.div, self, other)

    def __rtruediv__(self, other: Number) -> Delayed[Ix]:
        return _zip(BinOp.div, other, self)

    def __neg__(self) -> Delayed[Ix]:
        return _zip(BinOp.sub, 0.0, self)

    def __abs__(self) -> Delayed[Ix]:
        return _map(Fn.abs, self)

    def __pow__(self, other: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]:
        """numpy's power: ``a ** 2``, ``a ** 0.5`` and ``a ** -1`` are ``Fn.square``, ``Fn.sqrt`` and
        ``Fn.recip``; any other power is C's ``pow``, NaN for a negative number to a non-integer power."""
        fn = _POWERS.get(other) if is_real(other) else None
        return _zip(BinOp.pow, self, other) if fn is None else _map(fn, self)

    def __rpow__(self, other: Number) -> Delayed[Ix]:
        return _zip(BinOp.pow, other, self)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._expr()[0].shape

    @property
    def dtype(self) -> np.dtype[np.floating[Any]]:
        dt = self._expr()[0].dtype
        assert dt is not None
        return dt

    @property
    def comp(self) -> Comp:
        return self._expr()[1]


def _writable_base(a: FloatArray) -> bool:
    """Whether read-only ``a`` views an array that can be written (``a[:]`` of a writable array,
    made read-only): through that array its values could change. A read-only memory map is not.
    The chain of bases is followed through objects that are not arrays too: ``as_strided`` and
    ``sliding_window_view`` give an array whose base is a helper holding the source array.
    A buffer that is not an array (a ``bytearray`` under ``np.frombuffer``) counts as its memory does.
    """
    b: object = a.base
    while b is not None:
        if isinstance(b, np.ndarray):
            if b.flags.writeable:
                return True
        else:
            try:
                with memoryview(b) as mem:  # type: ignore[arg-type]
                    if not mem.readonly:
                        return True
            except TypeError:  # not a buffer: a helper holding the source array
                pass
        b = getattr(b, "base", None)
    return False


@final
class Manifest(_Arith[Ix]):
    """An array in memory (massiv's ``Array U``), read-only. ``vector``/``matrix`` check its rank."""

    __slots__ = ("_leaf", "_comp")

    def __init__(self, array: FloatArray, comp: Comp = Comp.Seq) -> None:
        given: object = array  # untyped callers
        if not isinstance(given, np.ndarray) or given.ndim not in (1, 2):
            got = f"shape {given.shape}" if isinstance(given, np.ndarray) else a_kind(given)
            raise RankError(f"Manifest holds a 1-d or 2-d numpy array, got {got}")
        if array.dtype not in _FLOATS:
            raise DTypeError(f"Manifest holds float32 or float64, not {array.dtype}")
        if comp.__class__ is not Comp:
            raise ArgumentError(f"Manifest: comp must be lb.Comp.Seq or lb.Comp.Par, got {comp!r}")
        if array.flags.writeable or _writable_base(array):  # what others can change is copied
            array = array.copy()
            array.setflags(write=False)
        self._leaf = Leaf(array, array.shape, array.dtype)
        self._comp = comp

    @classmethod
    def _of(cls, array: FloatArray, comp: Comp) -> Manifest[Any]:
        """Wrap a read-only float32/float64 array the engine made (skips the checks)."""
        m: Manifest[Any] = object.__new__(cls)
        m._leaf, m._comp = Leaf(array, array.shape, array.dtype), comp
        return m

    def _expr(self) -> tuple[Node, Comp]:
        return self._leaf, self._comp

    @property
    def shape(self) -> tuple[int, ...]:
        return self._leaf.shape

    @property
    def dtype(self) -> np.dtype[np.floating[Any]]:
        return self._leaf.dtype

    @property
    def comp(self) -> Comp:
        return self._comp

    @property
    def array(self) -> FloatArray:
        """The data, as a read-only numpy array (no copy)."""
        rec = fuse.active()
        if rec is not None:  # Python is reading values: a replay of this trace could not repeat it
            rec.read_values = True
        return self._leaf.array

    def __matmul__(self: Manifest[Ix2], other: Manifest[Ix2]) -> Manifest[Ix2]:
        """``m @ n`` is :func:`lazybn.matmul` (eager, BLAS)."""
        from .ops import matmul
        return matmul(self, other)

    def __repr__(self) -> str:
        rank = "Ix1" if self._leaf.array.ndim == 1 else "Ix2"
        body = np.array2string(self.array, threshold=20, edgeitems=2)
        return f"Manifest[{rank}] {self._comp.value} {self.shape} {self.dtype}\n{body}"

    if not TYPE_CHECKING:  # hidden from mypy: numpy's stubs would type ``ndarray + Manifest`` as an ndarray
        def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> FloatArray:
            return np.asarray(self.array, dtype=dtype)


@final
class Delayed(_Arith[Ix]):
    """A promise of an array (massiv's ``Array D``): an expression, computed by ``compute``."""

    __slots__ = ("node", "_comp")

    def __init__(self, node: Node, comp: Comp) -> None:
        self.node = node
        self._comp = comp

    def _expr(self) -> tuple[Node, Comp]:
        return self.node, self._comp

    if not TYPE_CHECKING:  # for mypy only a Manifest matrix has ``@``
        def __matmul__(self, other):
            from .ops import matmul
            return matmul(self, other)  # an ArgumentError: a Delayed array must be computed first

    def __repr__(self) -> str:
        rank = "Ix1" if len(self.shape) == 1 else "Ix2"
        return f"Delayed[{rank}] {self._comp.value} {self.shape} {self.dtype} = {describe(self.node)}"


Vector: TypeAlias = Manifest[Ix1]
Matrix: TypeAlias = Manifest[Ix2]
Vec: TypeAlias = Manifest[Ix1] | Delayed[Ix1]
Mat: TypeAlias = Manifest[Ix2] | Delayed[Ix2]


def is_vector(a: Vec | Mat) -> TypeIs[Vec]:
    """Whether ``a`` has rank 1. For mypy it narrows a ``Vector | Matrix`` (``OptState.slots``,
    ``compute_all`` of a list) to ``Vector``, and in the ``else`` branch to ``Matrix``, so the
    functions generic over the rank (``compute``, ``scale``, ``delay``...) accept it."""
    return len(expr(a, "is_vector")[0].shape) == 1


def is_matrix(a: Vec | Mat) -> TypeIs[Mat]:
    """Whether ``a`` has rank 2: ``is_vector``'s narrowing, to ``Matrix`` (``Vector`` in the ``else``)."""
    return len(expr(a, "is_matrix")[0].shape) == 2


def join(a: Comp, b: Comp) -> Comp:
    """``Par`` wins, as massiv's ``joinComp``."""
    return Comp.Par if Comp.Par in (a, b) else Comp.Seq


def expr(a: object, op: str) -> tuple[Node, Comp]:
    """The graph node of a lazybn array argument (run-time check for untyped callers)."""
    if isinstance(a, (Manifest, Delayed)):
        return a._expr()
    raise ArgumentError(f"{op}: expected a lazybn Manifest or Delayed array, got {type(a).__name__}")


def _rank_name(shape: tuple[int, ...]) -> str:
    return "vector" if len(shape) == 1 else "matrix"


_POWERS: dict[object, Fn] = {2.0: Fn.square, 0.5: Fn.sqrt, -1.0: Fn.recip}  # numpy's own shortcuts for these powers


def _map(fn: Fn, a: _Arith[Any]) -> Delayed[Any]:
    node, comp = a._expr()
    assert node.dtype is not None
    return Delayed(Map(fn, node, node.shape, node.dtype), comp)


def _zip(op: BinOp, a: object, b: object) -> Delayed[Any]:
    name = op.name
    if is_number(a):
        nb, comp = expr(b, name)
        na: Node = Const(scalar_value(a, name))
        dt, shape = nb.dtype, nb.shape
    elif is_number(b):
        na, comp = expr(a, name)
        nb = Const(scalar_value(b, name))
        dt, shape = na.dtype, na.shape
    else:
        na, ca = expr(a, name)
        nb, cb = expr(b, name)
        comp = join(ca, cb)
        if len(na.shape) != len(nb.shape):
            raise RankError(
                f"{name}: cannot combine a {_rank_name(na.shape)} {na.shape} with a {_rank_name(nb.shape)} "
                f"{nb.shape}; broadcast the vector explicitly with rows_like(v, m) or cols_like(v, m)"
            )
        if na.shape != nb.shape:
            raise ShapeError(name, na.shape, nb.shape)
        if na.dtype != nb.dtype:
            raise DTypeError(f"{name}: dtypes {na.dtype} and {nb.dtype} differ; convert one explicitly")
        dt, shape = na.dtype, na.shape
    assert dt is not None
    return Delayed(Zip(op, na, nb, shape, dt), comp)


def delay(m: Manifest[Ix]) -> Delayed[Ix]:
    """View a manifest array as a delayed one (no work; massiv's ``delay``); anything but a
    Manifest is an ``ArgumentError``."""
    node, comp = expr(m, "delay")
    if not isinstance(m, Manifest):
        raise ArgumentError("delay: expected a Manifest (this array is already delayed)")
    return Delayed(node, comp)


def set_comp(m: Manifest[Ix], comp: Comp) -> Manifest[Ix]:
    """The same data with another computation strategy (no copy); an ``ArgumentError`` if ``m``
    is not a Manifest or ``comp`` not a :class:`Comp`."""
    if not isinstance(m, Manifest):
        raise ArgumentError(f"set_comp: expected a Manifest, got {type(m).__name__}")
    return Manifest(m._leaf.array, comp)


def _run(ds: Sequence[object], op: str) -> list[Manifest[Any]]:
    nodes: list[Node] = []
    comp = Comp.Seq
    for d in ds:
        if not isinstance(d, Delayed):
            raise ArgumentError(f"{op}: expected Delayed arrays (use delay(m) for a Manifest), got {type(d).__name__}")
        nodes.append(d.node)
        comp = join(comp, d.comp)
    if not nodes:
        return []
    dtypes = {n.dtype for n in nodes}
    if len(dtypes) != 1:
        raise DTypeError(f"{op}: all outputs must share one dtype, got {sorted(str(d) for d in dtypes)}")
    dt = nodes[0].dtype
    assert dt is not None
    outs = fuse.evaluate(nodes, dt, comp is Comp.Par)
    return [Manifest._of(o, comp) for o in outs]


def compute(d: Delayed[Ix]) -> Manifest[Ix]:
    """Evaluate a delayed array into memory with one fused kernel (massiv's ``compute``).

    Raises:
        ArgumentError: ``d`` is not a Delayed array (``delay(m)`` makes one of a Manifest).
        CompileError: the kernel cannot be written to the kernel cache or imported from it, or
            would be compiled while ``LAZYBN_NO_COMPILE=1`` forbids it.

    >>> from lazybn import vector
    >>> v = vector([1.0, 2.0])
    >>> compute(v * v + 1.0)
    Manifest[Ix1] Seq (2,) float32
    [2. 5.]
    """
    return _run([d], "compute")[0]


I2 = TypeVar("I2", Ix1, Ix2)
I3 = TypeVar("I3", Ix1, Ix2)
I4 = TypeVar("I4", Ix1, Ix2)
I5 = TypeVar("I5", Ix1, Ix2)


@overload
def compute_all(a: Delayed[Ix], /) -> tuple[Manifest[Ix]]: ...
@overload
def compute_all(a: Delayed[Ix], b: Delayed[I2], /) -> tuple[Manifest[Ix], Manifest[I2]]: ...
@overload
def compute_all(a: Delayed[Ix], b: Delayed[I2], c: Delayed[I3],
                /) -> tuple[Manifest[Ix], Manifest[I2], Manifest[I3]]: ...
@overload
def compute_all(a: Delayed[Ix], b: Delayed[I2], c: Delayed[I3], d: Delayed[I4],
                /) -> tuple[Manifest[Ix], Manifest[I2], Manifest[I3], Manifest[I4]]: ...
@overload
def compute_all(a: Delayed[Ix], b: Delayed[I2], c: Delayed[I3], d: Delayed[I4], e: Delayed[I5],
                /) -> tuple[Manifest[Ix], Manifest[I2], Manifest[I3], Manifest[I4], Manifest[I5]]: ...
@overload  # more arrays, or a list of them: compute_all(*ds)
def compute_all(*ds: Delayed[Ix]) -> tuple[Manifest[Ix], ...]: ...
@overload
def compute_all(*ds: Delayed[Ix1] | Delayed[Ix2]) -> tuple[Vector | Matrix, ...]: ...
def compute_all(*ds: Delayed[Any]) -> tuple[Manifest[Any], ...]:
    """Evaluate several delayed arrays in ONE kernel: shared inputs are read once per pass.

    Raises:
        ArgumentError: an argument is not a Delayed array.
        DTypeError: the arrays do not all have one dtype (one kernel computes in one dtype).
        CompileError: as :func:`compute`.
    """
    return tuple(_run(ds, "compute_all"))


def to_numpy(a: Vec | Mat) -> FloatArray:
    """The values as a read-only numpy array of the array's rank (a delayed array is computed
    first); anything but a lazybn array is an ``ArgumentError``."""
    if isinstance(a, Delayed):
        return _run([a], "compute")[0].array
    if isinstance(a, Manifest):
        return a.array
    raise ArgumentError(f"to_numpy: expected a lazybn array, got {type(a).__name__}")
