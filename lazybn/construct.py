"""Building arrays: ``vector`` and ``matrix`` from lists or numpy data (copied, checked), and
``replicate``, ``zeros`` and ``ones`` of a given shape. Lists and integer data become float32;
any other dtype is refused with the conversion to ask for."""

from __future__ import annotations

from typing import overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import fuse
from .array import _FLOATS, Comp, Delayed, Manifest, Matrix, Vector
from .errors import ArgumentError, DTypeError, RankError, ValueRangeError, as_float, is_count, is_real
from .fuse.graph import FloatArray


def _as_float_array(xs: ArrayLike, dtype: DTypeLike | None, what: str) -> FloatArray:
    if dtype is None and type(xs) is np.ndarray and xs.dtype in _FLOATS:  # the common case: a plain copy
        arr = np.array(xs, order="C", copy=True)
        arr.setflags(write=False)
        return arr
    given: object = xs  # untyped callers: numpy would see a delayed array as an object
    if isinstance(given, Delayed):
        raise ArgumentError(f"{what}: got a Delayed array, which holds no values yet; compute(d) makes it a Manifest")
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
    """A vector from a list or numpy array (copied, read-only, C-ordered). Lists and integer or
    bool data become float32, float32 and float64 arrays keep their dtype; ``dtype`` converts
    explicitly. ``comp`` is the computation strategy of every expression that reads it.

    Raises:
        RankError: the data is not rank 1, or nested lists are ragged.
        DTypeError: ``dtype`` is not float32 or float64, or data of another kind (float16,
            complex, text) is given without one.
        ValueRangeError: a value does not fit in float32 (it would become infinity).
        ArgumentError: ``comp`` is not a :class:`Comp`, or ``xs`` is a Delayed array (compute it first).

    >>> vector([1, 2, 3])
    Manifest[Ix1] Seq (3,) float32
    [1. 2. 3.]
    """
    arr = _as_float_array(xs, dtype, "vector")
    if arr.ndim != 1:
        raise RankError(f"vector: expected rank-1 data, got shape {arr.shape}")
    return Manifest(arr, comp)


def matrix(xs: ArrayLike, dtype: DTypeLike | None = None, comp: Comp = Comp.Seq) -> Matrix:
    """A matrix from nested lists or a 2-d numpy array (copied), as :func:`vector` makes a vector
    (and raising as it does, for rank-2 data)."""
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
    """An array of the given shape (``n`` for a vector, ``(rows, cols)`` for a matrix) filled with ``value``.

    Raises:
        ValueRangeError: ``shape`` is not n or (rows, cols) of non-negative integers, or ``value``
            does not fit in float32 (``dtype=np.float64`` holds it) or in float64 (an int such as 10**400).
        ArgumentError: ``value`` is not a number (a bool is not one).
        DTypeError: ``dtype`` is not float32 or float64.
    """
    dims: tuple[object, ...] = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if len(dims) not in (1, 2) or not all(is_count(d) for d in dims):
        raise ValueRangeError(f"replicate: shape must be n or (rows, cols) of non-negative integers, got {shape!r}")
    given: object = value  # untyped callers: None would fill the array with NaN, a list broadcast into it
    if not is_real(given):
        raise ArgumentError(f"replicate: value must be a number, got {value!r}")
    sizes = tuple(int(d) for d in dims if isinstance(d, (int, np.integer)))  # all of them, checked above
    v = as_float(given, "replicate: value")
    arr = _filled(sizes, v, dtype)
    if fuse.active() is not None:  # in a @fused trace: made by a host call, which each replay repeats
        arr = fuse.host_call(_filled, sizes, v, arr.dtype)
    return Manifest(arr, comp)


def _filled(sizes: tuple[int, ...], value: float, dtype: DTypeLike) -> FloatArray:
    return _as_float_array(np.full(sizes, value, dtype=np.float64), dtype, "replicate")


@overload
def zeros(shape: int, dtype: DTypeLike = ..., comp: Comp = ...) -> Vector: ...
@overload
def zeros(shape: tuple[int, int], dtype: DTypeLike = ..., comp: Comp = ...) -> Matrix: ...
def zeros(shape: int | tuple[int, int], dtype: DTypeLike = np.float32, comp: Comp = Comp.Seq) -> Vector | Matrix:
    """An array of zeros: ``zeros(3)`` is a vector, ``zeros((2, 3))`` a matrix (raises as :func:`replicate`)."""
    return replicate(shape, 0.0, dtype, comp)


@overload
def ones(shape: int, dtype: DTypeLike = ..., comp: Comp = ...) -> Vector: ...
@overload
def ones(shape: tuple[int, int], dtype: DTypeLike = ..., comp: Comp = ...) -> Matrix: ...
def ones(shape: int | tuple[int, int], dtype: DTypeLike = np.float32, comp: Comp = Comp.Seq) -> Vector | Matrix:
    """An array of ones: ``ones(3)`` is a vector, ``ones((2, 3))`` a matrix (raises as :func:`replicate`)."""
    return replicate(shape, 1.0, dtype, comp)
