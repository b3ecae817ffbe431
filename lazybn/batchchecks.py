"""Checks of what a pass through a network is given: the input and target matrices of a batch
(rank, rows, dtype, finite values, probability targets) and whether they fit the layers.

The training pass, :func:`~lazybn.network.gradients`, :func:`~lazybn.network.logits`,
:func:`~lazybn.network.forward` and :mod:`lazybn.train` raise through these before any kernel runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .array import Delayed, Ix2, Manifest, Matrix
from .errors import ArgumentError, DTypeError, NumericalError, RankError, ShapeError, ValueRangeError
from .fuse.graph import FloatArray
from .layers import Batchnorm1d, Layer, Linear, LinearNoBias, check_layers

def _check_input(op: str, x: Matrix, layers: Sequence[Layer]) -> None:
    """The input is a matrix with the dtype and the number of features of the first layer holding parameters."""
    check_layers(op, layers)
    if not isinstance(x, Manifest):
        raise ArgumentError(f"{op}: the input must be a lazybn Matrix (lb.matrix(array) makes one), got "
                            f"{type(x).__name__}")
    if len(x.shape) != 2:
        raise RankError(f"{op}: the input must be a matrix (samples x features), got shape {x.shape}")
    check_fits(op, x.shape, x.dtype, layers)


def check_fits(op: str, xshape: tuple[int, ...], xdtype: np.dtype[Any], layers: Sequence[Layer],
               numpy: bool = False) -> None:
    """An input of ``xshape`` and ``xdtype`` (a numpy array, if ``numpy``) fits the first layer holding parameters."""
    for i, layer in enumerate(layers):
        match layer:
            case Linear(w=w) | LinearNoBias(w=w):
                takes, shape, dtype = w.shape[0], w.shape, w.dtype
            case Batchnorm1d():
                takes, shape, dtype = layer.features, layer.mu.shape, layer.mu.dtype
            case _:
                continue
        name = f"layer {i} ({type(layer).__name__})"
        if xdtype != dtype:
            raise DTypeError(f"{op}: the input is {xdtype} but {name} holds {dtype}; convert one of them " + (
                f"(x.astype(np.{dtype}), or a network built with dtype=np.{xdtype})" if numpy
                else "(lb.matrix(x, dtype) makes a copy in another dtype)"))
        if xshape[1] != takes:
            raise ShapeError(op, xshape, shape, f"{name} takes {takes} features, the input has {xshape[1]} columns")
        return


def _check_pair(op: str, inp: Matrix, tgt: Matrix, rows: bool) -> None:
    """Input and target are matrices (with one row per sample each, if ``rows``) of one dtype."""
    if len(inp.shape) != 2 or len(tgt.shape) != 2:
        raise RankError(f"{op}: input and target must be matrices, got shapes {inp.shape} and {tgt.shape}")
    if rows and inp.shape[0] != tgt.shape[0]:
        raise ShapeError(op, inp.shape, tgt.shape, "input and target need one row per sample")
    if tgt.dtype != inp.dtype:
        raise DTypeError(f"{op}: the target is {tgt.dtype} but the input is {inp.dtype}; they must agree")


def _check_batch(inp: Matrix, tgt: Matrix, layers: Sequence[Layer]) -> None:
    _check_pair("training pass", inp, tgt, rows=True)
    _check_input("training pass", inp, layers)
    if inp.shape[0] == 0:
        raise ValueRangeError("training pass: the batch is empty (0 samples); a training step needs at least one "
                              "sample")
    if inp.shape[0] < 2 and any(isinstance(layer, Batchnorm1d) and not layer.frozen for layer in layers):
        raise ValueRangeError(
            f"batch norm in training needs more than 1 sample per batch (got {inp.shape[0]}): the batch "
            "variance of one sample is undefined; use a larger batch, or forward() for inference"
        )
    for i, layer in enumerate(layers):
        if isinstance(layer, Batchnorm1d) and layer.ghost_batch is not None and inp.shape[0] % layer.ghost_batch:
            raise ValueRangeError(f"training pass: layer {i} (Batchnorm1d) normalises ghost batches of "
                                  f"{layer.ghost_batch} rows, which do not divide the batch of {inp.shape[0]}")


def _check_layer_input(op: str, inp: Matrix | Delayed[Ix2], layer: Linear | LinearNoBias | Batchnorm1d, i: int) -> None:
    """What the layers before layer ``i`` give it has the layer's dtype and number of features."""
    held, name = layer.mu if isinstance(layer, Batchnorm1d) else layer.w, f"layer {i} ({type(layer).__name__})"
    if inp.dtype != held.dtype:
        raise DTypeError(f"{op}: {name} holds {held.dtype} but the layers before it give {inp.dtype}; every layer "
                         "must hold the input's dtype")
    if inp.shape[1] != held.shape[0]:
        raise ShapeError(op, inp.shape, held.shape, f"{name} takes {held.shape[0]} features, the layers before it "
                         f"give {inp.shape[1]}")


def check_batch_values(op: str, x: Matrix, tgt: Matrix, layers: Sequence[Layer]) -> None:
    """A training batch: an input the layers take, a target matrix of its dtype, finite inputs,
    and targets that :func:`check_targets` accepts."""
    for name, a in (("input", x), ("target", tgt)):
        if not isinstance(a, Manifest):
            raise ArgumentError(f"{op}: the {name} must be a lazybn Matrix (lb.matrix(array) makes one), got "
                                f"{type(a).__name__}")
    _check_input(op, x, layers)  # before the target: a float64 input to a float32 network is the input's fault
    _check_pair(op, x, tgt, rows=False)  # the pass checks the rows, with the layers
    check_targets(op, tgt.array)
    if not np.isfinite(x.array).all():
        row, col = first_nonfinite_entry(x.array)
        raise NumericalError(f"{op}: the input batch contains NaN or infinity (first at row {row}, column {col}: "
                             f"{x.array[row, col]})")


def first_nonfinite_entry(a: FloatArray) -> tuple[int, int]:
    """(row, column) of the first NaN or infinity of a matrix that holds one, in row-major order."""
    row, col = np.argwhere(~np.isfinite(a))[0]
    return int(row), int(col)


def check_targets(op: str, t: FloatArray) -> None:
    """Targets must be probabilities, rows of non-negative numbers summing to 1 (one-hot or soft
    labels): for them ``(pred - tgt) / m`` is the gradient of the mean cross-entropy."""
    if t.size == 0:
        return
    sums, tolerance = t.sum(axis=1, dtype=np.float64), 1e-4  # a float32 softmax's rows are off by up to ~1e-6
    if not (t.min() >= 0 and np.abs(sums - 1.0).max() <= tolerance):  # NaN fails too
        if not np.isfinite(t).all():
            raise NumericalError(f"{op}: the target batch contains NaN or infinity")
        row = int(np.flatnonzero((t < 0).any(axis=1) | (np.abs(sums - 1.0) > tolerance))[0])
        raise ValueRangeError(f"{op}: target rows must be probabilities, non-negative and summing to 1 (one-hot or "
                              f"soft labels); row {row} is {t[row].tolist()}")
