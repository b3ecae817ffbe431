"""Batch norm folded into a linear layer, for inference.

At inference a batch-norm layer is an affine map per feature: with the running statistics,

    γ·(z − μ)/√(σ² + ε) + β  =  z·s + (β − μ·s),   s = γ/√(σ² + ε),

so next to a linear layer it can be merged into that layer's weights and bias:

* after ``Linear(w, b)`` (or ``LinearNoBias(w)``, b = 0): ``Linear(w·s, (b − μ)·s + β)``, each
  column of w scaled by its feature's s;
* before ``Linear(w, b)`` (a batch-norm layer that does not follow a linear one, such as one on
  the network's input): ``Linear(s·w, (β − μ·s)·w + b)``, each row of w scaled.

The folded network computes the same logits with one matrix product per folded pair and no
batch-norm kernel. It is for inference only: it has no batch statistics left to train with,
and its ``Dropout`` layers (the identity at inference) are left out, so they keep no batch-norm
layer from its linear neighbour. The new weights are computed in float64 and rounded once to
the layers' dtype.

Folding into the layer after moves the subtraction of μ into the bias, after the product: the
product then sums terms of the size of the inputs times s, which cancel against the bias. For
features far from their mean against their spread (|μ|·s ≫ 1, inputs that are not centred) the
folded network loses about log10(|μ|·s) digits: with μ = 1000 and σ = 0.1 its float32 logits
were off by 3e-3 (relative) where the network's were off by 3e-7. Fold such a network in float64,
or fold only the part after that layer (``layers[:k + 1] + fold_batchnorm(layers[k + 1:])``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .construct import matrix, vector
from .errors import DTypeError, NumericalError, ShapeError
from .layers import Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, check_layers

F64 = NDArray[np.float64]


def _affine(bn: Batchnorm1d) -> tuple[F64, F64]:
    """The layer's inference map ``z·s + t`` per feature, in float64 (an overflow here is reported
    by :func:`_merged`, as a NumericalError, not as numpy's RuntimeWarning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        s = bn.gamma.array.astype(np.float64) / np.sqrt(bn.var.array.astype(np.float64) + bn.eps)
        return s, bn.beta.array.astype(np.float64) - bn.mu.array.astype(np.float64) * s


def _weights(layer: Linear | LinearNoBias) -> tuple[F64, F64]:
    w = layer.w.array.astype(np.float64)
    b = layer.b.array.astype(np.float64) if isinstance(layer, Linear) else np.zeros(w.shape[1])
    return w, b


def _merged(i: int, linear: Linear | LinearNoBias, bn: Batchnorm1d, w: F64, b: F64) -> Linear:
    """``Linear(w, b)`` in the linear layer's dtype and Comp; refuses weights beyond the dtype's range."""
    dtype, comp = linear.w.dtype, linear.w.comp
    if bn.mu.dtype != dtype:
        raise DTypeError(f"fold_batchnorm: layer {i} (Batchnorm1d) holds {bn.mu.dtype} but its linear neighbour "
                         f"holds {dtype}")
    with np.errstate(over="ignore"):
        w_new, b_new = w.astype(dtype), b.astype(dtype)
    if not (np.isfinite(w_new).all() and np.isfinite(b_new).all()):
        raise NumericalError(f"fold_batchnorm: folding layer {i} (Batchnorm1d) makes weights beyond {dtype}'s range "
                             f"(a running variance near 0 with a large gamma?); leave it out of the fold: fold_batchnorm "
                             f"the layers before it and after it apart")
    return Linear(matrix(w_new, dtype, comp), vector(b_new, dtype, comp), linear.trainable)


def _fold(i: int, bn: Batchnorm1d, linear: Linear | LinearNoBias, into_previous: bool) -> Linear:
    """``bn`` (``layers[i]``) folded into ``linear``, the layer before it or the one after it."""
    width = linear.w.shape[1] if into_previous else linear.w.shape[0]
    if width != bn.features:
        side = f"before it has {width} outputs" if into_previous else f"after it takes {width} inputs"
        left, right = (linear.w.shape, bn.mu.shape) if into_previous else (bn.mu.shape, linear.w.shape)
        raise ShapeError("fold_batchnorm", left, right,
                         f"layer {i} (Batchnorm1d) normalises {bn.features} features, but the layer {side}")
    s, t = _affine(bn)
    w, b = _weights(linear)
    with np.errstate(over="ignore", invalid="ignore"):
        w, b = (w * s, b * s + t) if into_previous else (s[:, None] * w, t @ w + b)
    return _merged(i, linear, bn, w, b)


def fold_batchnorm(layers: Sequence[Layer]) -> list[Layer]:
    """``layers`` for inference with every batch-norm layer that has a linear neighbour folded into
    it (see the module doc). One right after a ``Linear``/``LinearNoBias`` goes into that layer;
    the others into the ``Linear``/``LinearNoBias`` right after them. What is left has no linear
    neighbour: batch norm between activations, say, stays a batch-norm layer.

    ``logits(fold_batchnorm(layers), x)`` equals ``logits(layers, x)`` up to rounding (see the
    module doc for inputs far from their mean). The result is for inference: ``Dropout`` layers
    are left out, and the folded layers would train as plain linear layers, without batch norm.

    Raises:
        ShapeError: a batch-norm layer's features do not match its linear neighbour's.
        DTypeError: the two hold different dtypes.
        NumericalError: a folded weight overflows the dtype (names the batch-norm layer).
    """
    check_layers("fold_batchnorm", layers)
    after: list[tuple[int, Layer]] = []  # first into the linear layer before: (index in layers, layer)
    for i, layer in enumerate(layers):
        if isinstance(layer, Dropout):
            continue  # the identity at inference
        prev = after[-1][1] if after else None
        if isinstance(layer, Batchnorm1d) and isinstance(prev, (Linear, LinearNoBias)):
            after[-1] = (after[-1][0], _fold(i, layer, prev, into_previous=True))
        else:
            after.append((i, layer))
    before: list[tuple[int, Layer]] = []  # then, from the end, into the linear layer after
    for i, layer in reversed(after):
        nxt = before[-1][1] if before else None
        if isinstance(layer, Batchnorm1d) and isinstance(nxt, (Linear, LinearNoBias)):
            before[-1] = (i, _fold(i, layer, nxt, into_previous=False))
        else:
            before.append((i, layer))
    return [layer for _, layer in reversed(before)]
