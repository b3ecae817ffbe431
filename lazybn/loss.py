"""Softmax and the cross-entropy loss: the base case of the training pass, and the loss of
predicted probabilities.

The training pass (:mod:`lazybn.network`) takes each sample's log-likelihood from the logits,
``sum_j tgt * (x - max - log sum exp(x - max))``: exact where a probability underflows, so a
confidently wrong sample counts with its whole loss. :func:`cross_entropy` has only the
probabilities, whose log it takes with the dtype's smallest normal number added: a sample's
loss there is at most about 87.3 in float32 (708 in float64).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .array import Delayed, Ix1, Ix2, Matrix, Vector, compute
from .fuse.graph import FloatArray, Fn
from .ops import add_c, amap, cols_like, max_cols, sum_cols


def softmax(x: Matrix | Delayed[Ix2]) -> Delayed[Ix2]:
    """Row-wise softmax, stable: ``exp(x - max) / sum(exp(x - max))``."""
    e = amap(Fn.exp, x - cols_like(max_cols(x), x))
    return e / cols_like(sum_cols(e), x)


def softmax_likelihoods(x: Matrix, tgt: Matrix) -> tuple[Delayed[Ix2], Delayed[Ix1]]:
    """The softmax of the logits ``x`` and each sample's log-likelihood of its target row, from the
    logits: ``sum_j tgt * (x - max - log sum exp(x - max))`` (the softmax's sum is shared)."""
    shifted = x - cols_like(max_cols(x), x)
    e = amap(Fn.exp, shifted)
    total = sum_cols(e)
    return e / cols_like(total, x), sum_cols(tgt * (shifted - cols_like(amap(Fn.log, total), x)))


_TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): float(np.finfo(np.float64).tiny)}


def log_likelihoods(pred: Matrix, tgt: Matrix) -> Vector:
    """Each sample's log-probability of its one-hot target, ``sum_j tgt * log(pred + tiny)`` (one
    kernel; ``tiny``, the dtype's smallest normal number, keeps a zero probability finite)."""
    return compute(sum_cols(tgt * amap(Fn.log, add_c(pred, _TINY[pred.dtype]))))


def mean_loss(log_lik: Vector) -> float:
    """The mean cross-entropy from :func:`log_likelihoods`: an exactly rounded sum (``math.fsum``),
    then one division. This runs once per training step; at batch sizes these two C calls cost a
    third to a seventh of ``np.mean``."""
    n = log_lik.shape[0]
    try:
        total = math.fsum(log_lik.array.tolist())
    except (ValueError, OverflowError):  # inf - inf, or beyond float64: numpy's sum says nan or inf
        with np.errstate(invalid="ignore", over="ignore"):
            total = float(np.sum(log_lik.array, dtype=np.float64))
    return -total / n if n else math.nan


def cross_entropy(pred: Matrix, tgt: Matrix) -> float:
    """Mean cross-entropy of predicted probabilities against one-hot targets."""
    return mean_loss(log_likelihoods(pred, tgt))


def label_losses(z: FloatArray, labels: NDArray[np.integer[Any]]) -> NDArray[np.float64]:
    """Each sample's cross-entropy of its label from its logits ``z`` (one row per sample), in
    float64: ``log sum exp(z) - z[label]`` with the row's maximum taken out first, so a sample
    whose label's probability underflows still counts with its whole loss."""
    shifted = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    out: NDArray[np.float64] = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]
    return out
