"""Operations on arrays, named after the massiv helpers of the batch-norm derivation.

Broadcasting is always explicit: ``br``/``rows_like`` repeat a vector as every row of a
matrix, ``cols_like`` as every column. Reductions are named by what they run over: ``sum_rows``
(over the rows: one sum per column, massiv's ``_sumRows``), ``max_rows`` and ``min_rows`` (one
maximum, minimum per column); ``sum_cols`` (over the columns: one sum per row), ``max_cols`` and
``min_cols`` (one maximum, minimum per row). Elementwise, besides ``+ - * /``, ``**``, ``abs``
and ``amap``: ``maximum`` and ``minimum`` of two arrays, or of an array and a number. All of them
are delayed; ``matmul`` (BLAS, also ``m @ n``) is the one eager operation, and ``transpose`` and
``reshape`` give views of a manifest array.

Every operation checks its arguments when it is called: an argument that is not a lazybn array
(or a number where a scalar is taken) is an ``ArgumentError``, a vector where a matrix is taken
or the reverse a ``RankError``, and sizes that do not agree a ``ShapeError`` naming both shapes.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np

from . import fuse
from .array import Comp, Delayed, Ix, Ix1, Ix2, Manifest, Mat, Matrix, Vec, Vector, _zip, expr, join
from .errors import ArgumentError, DTypeError, RankError, ShapeError, ValueRangeError, is_count
from .fuse.graph import (BinOp, Br, ColsLike, Const, FloatArray, Fn, Map, Node, Number, Reduce, RedOp, Zip,
                         scalar_value)


def _vec(v: object, op: str) -> tuple[Node, Comp]:
    node, comp = expr(v, op)
    if len(node.shape) != 1:
        raise RankError(f"{op}: expected a vector, got a matrix of shape {node.shape}")
    return node, comp


def _mat(m: object, op: str) -> tuple[Node, Comp]:
    node, comp = expr(m, op)
    if len(node.shape) != 2:
        raise RankError(f"{op}: expected a matrix, got a vector of shape {node.shape}")
    return node, comp


def rows(m: Mat) -> int:
    """Number of rows of a matrix (``ArgumentError``/``RankError`` for anything else)."""
    return _mat(m, "rows")[0].shape[0]


def cols(m: Mat) -> int:
    """Number of columns of a matrix (``ArgumentError``/``RankError`` for anything else)."""
    return _mat(m, "cols")[0].shape[1]


def br(n_rows: int, v: Vec) -> Delayed[Ix2]:
    """The vector ``v`` as every row of an ``(n_rows, len(v))`` matrix (massiv's ``br``); a
    ``ShapeError`` if ``n_rows`` is not a non-negative integer.

    >>> from lazybn import vector, compute
    >>> compute(br(2, vector([1.0, 2.0]))).array.tolist()
    [[1.0, 2.0], [1.0, 2.0]]
    """
    node, comp = _vec(v, "br")
    if not is_count(n_rows):
        raise ShapeError("br", (n_rows,), node.shape, "the number of rows must be a non-negative integer")
    assert node.dtype is not None
    return Delayed(Br(node, (int(n_rows), node.shape[0]), node.dtype), comp)


def rows_like(v: Vec, m: Mat) -> Delayed[Ix2]:
    """``v`` as every row of a matrix shaped like ``m``: ``out[i, j] = v[j]`` (``ShapeError``
    unless ``len(v)`` is ``m``'s column count)."""
    vn, vc = _vec(v, "rows_like")
    mn, mc = _mat(m, "rows_like")
    if vn.shape[0] != mn.shape[1]:
        raise ShapeError("rows_like", vn.shape, mn.shape, "the vector's length must equal the number of columns")
    assert vn.dtype is not None
    return Delayed(Br(vn, mn.shape, vn.dtype), join(vc, mc))


def cols_like(v: Vec, m: Mat) -> Delayed[Ix2]:
    """``v`` as every column of a matrix shaped like ``m``: ``out[i, j] = v[i]`` (``ShapeError``
    unless ``len(v)`` is ``m``'s row count)."""
    vn, vc = _vec(v, "cols_like")
    mn, mc = _mat(m, "cols_like")
    if vn.shape[0] != mn.shape[0]:
        raise ShapeError("cols_like", vn.shape, mn.shape, "the vector's length must equal the number of rows")
    assert vn.dtype is not None
    return Delayed(ColsLike(vn, mn.shape, vn.dtype), join(vc, mc))


_OVER_ROWS = (RedOp.sum_rows, RedOp.max_rows, RedOp.min_rows)


def _reduce(op: RedOp, m: Mat) -> Delayed[Ix1]:
    node, comp = _mat(m, op.value)
    over_rows = op in _OVER_ROWS
    length = node.shape[1] if over_rows else node.shape[0]
    if op not in (RedOp.sum_rows, RedOp.sum_cols) and node.shape[0 if over_rows else 1] == 0:
        extreme = "maximum" if op in (RedOp.max_rows, RedOp.max_cols) else "minimum"
        empty = "rows" if over_rows else "columns"
        raise ShapeError(op.value, node.shape, None, f"the {extreme} of zero {empty} is undefined")
    assert node.dtype is not None
    return Delayed(Reduce(op, node, (length,), node.dtype), comp)


def sum_rows(m: Mat) -> Delayed[Ix1]:
    """Sum over the rows: one value per column (massiv's ``_sumRows``), accumulated in float64.

    >>> from lazybn import matrix, compute
    >>> compute(sum_rows(matrix([[1.0, 2.0], [3.0, 4.0]]))).array.tolist()
    [4.0, 6.0]
    """
    return _reduce(RedOp.sum_rows, m)


def sum_cols(m: Mat) -> Delayed[Ix1]:
    """Sum over the columns: one value per row (massiv's ``_sumCols``), accumulated in float64."""
    return _reduce(RedOp.sum_cols, m)


def max_cols(m: Mat) -> Delayed[Ix1]:
    """Maximum over the columns: one value per row (for a numerically stable softmax); NaN in a
    row gives NaN, as numpy's ``max``. A matrix of zero columns is a ``ShapeError``."""
    return _reduce(RedOp.max_cols, m)


def min_cols(m: Mat) -> Delayed[Ix1]:
    """Minimum over the columns: one value per row; NaN in a row gives NaN, as numpy's ``min``.
    A matrix of zero columns is a ``ShapeError``."""
    return _reduce(RedOp.min_cols, m)


def max_rows(m: Mat) -> Delayed[Ix1]:
    """Maximum over the rows: one value per column; NaN in a column gives NaN, as numpy's
    ``max(axis=0)``. A matrix of zero rows is a ``ShapeError``.

    >>> from lazybn import matrix, compute
    >>> compute(max_rows(matrix([[1.0, 5.0], [3.0, 4.0]]))).array.tolist()
    [3.0, 5.0]
    """
    return _reduce(RedOp.max_rows, m)


def min_rows(m: Mat) -> Delayed[Ix1]:
    """Minimum over the rows: one value per column; NaN in a column gives NaN, as numpy's
    ``min(axis=0)``. A matrix of zero rows is a ``ShapeError``."""
    return _reduce(RedOp.min_rows, m)


@overload
def maximum(a: Manifest[Ix] | Delayed[Ix], b: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]: ...
@overload
def maximum(a: Number, b: Manifest[Ix] | Delayed[Ix]) -> Delayed[Ix]: ...
def maximum(a: Manifest[Ix] | Delayed[Ix] | Number, b: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]:
    """The larger of two arrays of one shape and dtype, element by element, or of an array and a
    number (numpy's ``maximum``: NaN in either gives NaN). ``minimum(maximum(x, lo), hi)`` clips.

    Raises:
        ArgumentError: neither argument is a lazybn array, or the other is neither one nor a number.
        RankError, ShapeError, DTypeError: two arrays of different ranks, shapes or dtypes.
    """
    return _zip(BinOp.maximum, a, b)


@overload
def minimum(a: Manifest[Ix] | Delayed[Ix], b: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]: ...
@overload
def minimum(a: Number, b: Manifest[Ix] | Delayed[Ix]) -> Delayed[Ix]: ...
def minimum(a: Manifest[Ix] | Delayed[Ix] | Number, b: Manifest[Ix] | Delayed[Ix] | Number) -> Delayed[Ix]:
    """The smaller of two arrays element by element, or of an array and a number (numpy's
    ``minimum``: NaN in either gives NaN); errors as :func:`maximum`."""
    return _zip(BinOp.minimum, a, b)


def amap(f: Fn, a: Manifest[Ix] | Delayed[Ix]) -> Delayed[Ix]:
    """Apply an element function from the closed set :class:`Fn` (massiv's ``A.map``); ``f`` that
    is not an ``Fn`` member is an ``ArgumentError``."""
    if not isinstance(f, Fn):
        raise ArgumentError(f"amap: expected a member of lazybn.Fn, got {f!r}")
    node, comp = expr(a, "amap")
    assert node.dtype is not None
    return Delayed(Map(f, node, node.shape, node.dtype), comp)


def scale(s: Number, a: Manifest[Ix] | Delayed[Ix]) -> Delayed[Ix]:
    """Multiply every element by the scalar ``s`` (massiv's ``_scale``)."""
    node, comp = expr(a, "scale")
    assert node.dtype is not None
    return Delayed(Zip(BinOp.mul, Const(scalar_value(s, "scale")), node, node.shape, node.dtype), comp)


def add_c(a: Manifest[Ix] | Delayed[Ix], s: Number) -> Delayed[Ix]:
    """Add the scalar ``s`` to every element (massiv's ``addC``)."""
    node, comp = expr(a, "add_c")
    assert node.dtype is not None
    return Delayed(Zip(BinOp.add, node, Const(scalar_value(s, "add_c")), node.shape, node.dtype), comp)


def transpose(m: Matrix) -> Matrix:
    """The transpose, as a view of the same memory (no copy), of a Manifest matrix (a delayed
    array is an ``ArgumentError``: compute it first)."""
    if not isinstance(m, Manifest):
        raise ArgumentError(f"transpose: expected a Manifest matrix, got {type(m).__name__}")
    _mat(m, "transpose")
    out = m._leaf.array.T
    rec = fuse.active()
    if rec is not None:
        rec.log.append(fuse.Transpose(m._leaf.array, out))
    return Manifest(out, m.comp)


@overload
def reshape(a: Vector | Matrix, shape: int) -> Vector: ...
@overload
def reshape(a: Vector | Matrix, shape: tuple[int, int]) -> Matrix: ...
def reshape(a: Vector | Matrix, shape: int | tuple[int, int]) -> Vector | Matrix:
    """The same elements, in row-major order, as a vector of ``shape`` or a matrix of ``shape``
    = (rows, cols) (massiv's ``resize'``): a view of the same memory, no copy.

    Raises:
        ArgumentError: ``a`` is not a Manifest, or is a strided view (a transpose) that no view
            can reshape.
        ValueRangeError: ``shape`` is not n or (rows, cols) of non-negative integers.
        ShapeError: ``shape`` holds another number of elements.
    """
    if not isinstance(a, Manifest):
        raise ArgumentError(f"reshape: expected a Manifest (compute it first), got {type(a).__name__}")
    want: object = (shape,) if isinstance(shape, (int, np.integer)) else shape
    if not (type(want) is tuple and len(want) in (1, 2)
            and all(is_count(n) for n in want)):
        raise ValueRangeError(f"reshape: the shape must be n or (rows, cols) of non-negative integers, got {shape!r}")
    want = tuple(int(n) for n in want)  # numpy integers (a size, a product of sizes) as Python ints
    arr = a._leaf.array
    if math.prod(want) != arr.size:
        raise ShapeError("reshape", arr.shape, want, f"{arr.size} elements cannot take another count")
    out = view(arr, want)
    rec = fuse.active()
    if rec is not None:
        rec.log.append(fuse.Reshape(arr, want, out))
    return Manifest(out, a.comp)


def view(arr: FloatArray, shape: tuple[int, ...]) -> FloatArray:
    """``arr`` reshaped without a copy (``reshape``, and its replays: a replay is given arrays of the
    traced shapes, not necessarily of the traced layout)."""
    if not arr.flags.c_contiguous:
        raise ArgumentError(f"reshape: the {arr.shape} array is a strided view (a transpose); compute a copy first")
    return arr.reshape(shape)


def matmul(a: Matrix, b: Matrix) -> Matrix:
    """The matrix product ``a · b`` through numpy's BLAS (eager; transposed views are not copied).

    Raises:
        ArgumentError: an argument is not a Manifest (compute a delayed one first).
        RankError, ShapeError, DTypeError: not two matrices whose inner dimensions agree, of one dtype.
    """
    for x, name in ((a, "first"), (b, "second")):
        if not isinstance(x, Manifest):
            raise ArgumentError(f"matmul: the {name} argument must be a Manifest matrix (compute it first), "
                            f"got {type(x).__name__}")
    _mat(a, "matmul")
    _mat(b, "matmul")
    if a.shape[1] != b.shape[0]:
        raise ShapeError("matmul", a.shape, b.shape, "the inner dimensions must agree")
    if a.dtype != b.dtype:
        raise DTypeError(f"matmul: dtypes {a.dtype} and {b.dtype} differ; convert one explicitly")
    out = np.matmul(a._leaf.array, b._leaf.array)
    out.setflags(write=False)
    rec = fuse.active()
    if rec is not None:
        rec.log.append(fuse.Matmul(a._leaf.array, b._leaf.array, out))
    return Manifest(out, join(a.comp, b.comp))
