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
from typing import Any, Generic, TypeAlias, TypeVar, final, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import fuse
from .errors import ArgumentError, DTypeError, RankError, ShapeError, ValueRangeError
from .fuse.graph import BinOp, Const, FloatArray, Leaf, Node, Number, Zip, describe, is_number, scalar_value


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

    @property
    def shape(self) -> tuple[int, ...]:
        return self._expr()[0].shape

    @property
    def dtype(self) -> np.dtype[Any]:
        dt = self._expr()[0].dtype
        assert dt is not None
        return dt

    @property
    def comp(self) -> Comp:
        return self._expr()[1]


@final
class Manifest(_Arith[Ix]):
    """An array in memory (massiv's ``Array U``), read-only. ``vector``/``matrix`` check its rank."""

    __slots__ = ("_leaf", "_comp")

    def __init__(self, array: FloatArray, comp: Comp = Comp.Seq) -> None:
        given: object = array  # untyped callers
        if not isinstance(given, np.ndarray) or given.ndim not in (1, 2):
            got = f"shape {given.shape}" if isinstance(given, np.ndarray) else f"a {type(given).__name__}"
            raise RankError(f"Manifest holds a 1-d or 2-d numpy array, got {got}")
        if array.dtype not in _FLOATS:
            raise DTypeError(f"Manifest holds float32 or float64, not {array.dtype}")
        if array.flags.writeable:
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
    def dtype(self) -> np.dtype[Any]:
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

    def __repr__(self) -> str:
        rank = "Ix1" if self._leaf.array.ndim == 1 else "Ix2"
        body = np.array2string(self.array, threshold=20, edgeitems=2)
        return f"Manifest[{rank}] {self._comp.value} {self.shape} {self.dtype}\n{body}"

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

    def __repr__(self) -> str:
        rank = "Ix1" if len(self.shape) == 1 else "Ix2"
        return f"Delayed[{rank}] {self._comp.value} {self.shape} {self.dtype} = {describe(self.node)}"


Vector: TypeAlias = Manifest[Ix1]
Matrix: TypeAlias = Manifest[Ix2]
Vec: TypeAlias = Manifest[Ix1] | Delayed[Ix1]
Mat: TypeAlias = Manifest[Ix2] | Delayed[Ix2]


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


def _zip(op: BinOp, a: object, b: object) -> Delayed[Any]:
    name = {"+": "add", "-": "sub", "*": "mul", "/": "div"}[op.value]
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


def _as_float_array(xs: ArrayLike, dtype: DTypeLike | None, what: str) -> FloatArray:
    if dtype is None and type(xs) is np.ndarray and xs.dtype in _FLOATS:  # the common case: a plain copy
        arr = np.array(xs, order="C", copy=True)
        arr.setflags(write=False)
        return arr
    try:
        src = xs.dtype if isinstance(xs, np.ndarray) else np.asarray(xs).dtype
    except ValueError:  # numpy: "inhomogeneous shape"
        raise RankError(f"{what}: the nested lists are ragged (rows of different lengths)") from None
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in _FLOATS:
            raise DTypeError(f"{what}: dtype must be float32 or float64, not {dt}")
    else:
        if isinstance(xs, np.ndarray) and src in _FLOATS:
            dt = src
        elif src.kind in "iubf" and src.itemsize <= 8 and (src.kind != "f" or not isinstance(xs, np.ndarray)):
            dt = np.dtype(np.float32)  # lists and integer data: the library default
        else:
            raise DTypeError(
                f"{what}: cannot hold {src} data; lazybn computes in float32 or float64 "
                f"(pass dtype=np.float32 or np.float64 to convert explicitly)"
            )
    try:
        with np.errstate(over="raise"):
            arr = np.array(xs, dtype=dt, order="C", copy=True)
    except FloatingPointError:
        raise ValueRangeError(f"{what}: a value does not fit in {dt} (it would become infinity); "
                              "pass dtype=np.float64") from None
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"{what}: cannot convert the input to {dt}: {exc}") from None
    arr.setflags(write=False)
    return arr


def vector(xs: ArrayLike, dtype: DTypeLike | None = None, comp: Comp = Comp.Seq) -> Vector:
    """A vector from a list or numpy array (copied). Lists and integers become float32.

    >>> vector([1, 2, 3])
    Manifest[Ix1] Seq (3,) float32
    [1. 2. 3.]
    """
    arr = _as_float_array(xs, dtype, "vector")
    if arr.ndim != 1:
        raise RankError(f"vector: expected rank-1 data, got shape {arr.shape}")
    return Manifest(arr, comp)


def matrix(xs: ArrayLike, dtype: DTypeLike | None = None, comp: Comp = Comp.Seq) -> Matrix:
    """A matrix from nested lists or a 2-d numpy array (copied). Lists and integers become float32."""
    arr = _as_float_array(xs, dtype, "matrix")
    if arr.ndim != 2:
        raise RankError(f"matrix: expected rank-2 data, got shape {arr.shape}")
    return Manifest(arr, comp)


@overload
def replicate(shape: int, value: float, dtype: DTypeLike = ..., comp: Comp = ...) -> Vector: ...
@overload
def replicate(shape: tuple[int, int], value: float, dtype: DTypeLike = ..., comp: Comp = ...) -> Matrix: ...
def replicate(shape: int | tuple[int, int], value: float, dtype: DTypeLike = np.float32,
              comp: Comp = Comp.Seq) -> Vector | Matrix:
    """An array of the given shape (``n`` for a vector, ``(rows, cols)`` for a matrix) filled with ``value``."""
    dims: tuple[object, ...] = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if len(dims) not in (1, 2) or any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0
                                      for d in dims):
        raise ValueRangeError(f"replicate: shape must be n or (rows, cols) of non-negative integers, got {shape!r}")
    sizes = tuple(int(d) for d in dims if isinstance(d, (int, np.integer)))  # all of them, checked above
    return Manifest(_as_float_array(np.full(sizes, value, dtype=np.float64), dtype, "replicate"), comp)


@overload
def zeros(shape: int, dtype: DTypeLike = ..., comp: Comp = ...) -> Vector: ...
@overload
def zeros(shape: tuple[int, int], dtype: DTypeLike = ..., comp: Comp = ...) -> Matrix: ...
def zeros(shape: int | tuple[int, int], dtype: DTypeLike = np.float32, comp: Comp = Comp.Seq) -> Vector | Matrix:
    """An array of zeros: ``zeros(3)`` is a vector, ``zeros((2, 3))`` a matrix."""
    return replicate(shape, 0.0, dtype, comp)


@overload
def ones(shape: int, dtype: DTypeLike = ..., comp: Comp = ...) -> Vector: ...
@overload
def ones(shape: tuple[int, int], dtype: DTypeLike = ..., comp: Comp = ...) -> Matrix: ...
def ones(shape: int | tuple[int, int], dtype: DTypeLike = np.float32, comp: Comp = Comp.Seq) -> Vector | Matrix:
    """An array of ones: ``ones(3)`` is a vector, ``ones((2, 3))`` a matrix."""
    return replicate(shape, 1.0, dtype, comp)


def delay(m: Manifest[Ix]) -> Delayed[Ix]:
    """View a manifest array as a delayed one (no work; massiv's ``delay``)."""
    node, comp = expr(m, "delay")
    if not isinstance(m, Manifest):
        raise ArgumentError("delay: expected a Manifest (this array is already delayed)")
    return Delayed(node, comp)


def set_comp(m: Manifest[Ix], comp: Comp) -> Manifest[Ix]:
    """The same data with another computation strategy (no copy)."""
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
    """Evaluate several delayed arrays in ONE kernel: shared inputs are read once per pass."""
    return tuple(_run(ds, "compute_all"))


def to_numpy(a: Vec | Mat) -> FloatArray:
    """The values as a read-only numpy array (a delayed array is computed first), of any rank."""
    if isinstance(a, Delayed):
        return _run([a], "compute")[0].array
    if isinstance(a, Manifest):
        return a.array
    raise ArgumentError(f"to_numpy: expected a lazybn array, got {type(a).__name__}")
