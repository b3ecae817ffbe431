"""The recursive pass through a network (training) and the forward pass (inference).

``_train_pass(inp, tgt, layers)`` mirrors the seed's Haskell: one ``match`` case per layer, the
recursive call in the middle (forward before it, backward after it), and softmax with the
cross-entropy gradient (and each sample's log-likelihood, from the logits) as the base case.
``dx`` is the gradient of the MEAN cross-entropy over the batch with respect to ``inp``;
``grads`` has one :data:`Gradients` value per layer. ``_pass`` is the same without the
log-likelihoods.

Inference is a separate function, ``forward``, that uses the running statistics: there is no
mode flag. The Batchnorm1d case of ``_train_pass`` calls the derivation's forward steps 1-9 and its
backward steps 9-1, unsimplified, each a delayed expression (:mod:`lazybn.batchnorm`:
``bn_forward``, ``bn_backward``); ``compute`` appears only where a value is returned, and the
fusion engine turns each half into one kernel. Batch renormalisation, ghost batches and a layer
frozen for fine-tuning have a case each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, Literal, assert_never, overload

import numpy as np

from . import fuse
from .array import Delayed, Ix2, Manifest, Matrix, Vector, compute, compute_all
from .batchnorm import bn_backward as bn_backward
from .batchnorm import bn_forward as bn_forward
from .batchnorm import (frozen_backward, frozen_forward, ghost_backward, ghost_forward, ghost_statistics,
                        renorm_backward, renorm_forward, running_forward, skipped, skipped_vector)
from .batchnorm import reset_running as reset_running
from .batchnorm import update_running as update_running
from .batchchecks import _check_batch, _check_input, _check_layer_input
from .batchchecks import check_batch_values as check_batch_values
from .batchchecks import check_fits as check_fits
from .batchchecks import check_targets as check_targets
from .batchchecks import first_nonfinite_entry as first_nonfinite_entry
from .errors import NumericalError, ShapeError, ValueRangeError, is_count
from .fuse.graph import FloatArray, Fn
from .loss import cross_entropy as cross_entropy
from .loss import log_likelihoods as log_likelihoods
from .loss import mean_loss as mean_loss
from .loss import softmax as softmax
from .loss import softmax_likelihoods
from .layers import (BN1, Act, Activation, Batchnorm1d, Dropout, Gradients, Layer, Linear, LinearGradients, LinearNoBias,
                     LinearNoBiasGradients, NoGrad, nonfinite_weights, trains)
from .ops import amap, matmul, rows, rows_like, scale, sum_rows, transpose
from .passresult import PassResult as PassResult
from .steady import Bounds, bounded, steady
from .trace import fused

_ACT: dict[Act, tuple[Fn, Fn] | None] = {
    Act.relu: (Fn.relu, Fn.drelu),
    Act.sigmoid: (Fn.sigmoid, Fn.dsigmoid),
    Act.tanh: (Fn.tanh, Fn.dtanh),
    Act.identity: None,
}

def _mask_values(shape: tuple[int, ...], p: float, key: int, index: int, dtype: np.dtype[Any]) -> FloatArray:
    # Checked here, not in _dropout_mask: a replay of _train_pass repeats this call with its own key.
    if not is_count(key):
        raise ValueRangeError(f"Dropout in training: the key must be an integer >= 0, got {key!r}")
    rng = np.random.default_rng([key, index])
    keep = rng.random(shape) >= p
    out: FloatArray = keep.astype(dtype) / dtype.type(1.0 - p)
    return out

def _dropout_mask(shape: tuple[int, ...], p: float, key: int | None, index: int, dtype: np.dtype[Any]) -> Matrix:
    """Inverted dropout's mask for layer ``index``: 0 or 1 / (1 - p), drawn from (key, index).

    Made through ``fuse.host_call``, so a replay of ``_train_pass`` draws the mask of its own key.
    """
    if key is None:
        raise ValueRangeError("Dropout in training needs a key: pass key=<int> to gradients / train_step, a new one "
                              "every step (a key used again draws the same masks), as train_epoch does")
    return Manifest(fuse.host_call(_mask_values, shape, p, key, index, dtype))

def _no_bn_gradient() -> tuple[Matrix, Vector, Vector]:
    return skipped(), skipped_vector(), skipped_vector()

def _own(g: BN1, steps: bool) -> BN1:
    """What a batch-norm layer hands to the update: without dgamma and dbeta when it does not train."""
    return g if steps else replace(g, dgamma=skipped_vector(), dbeta=skipped_vector())

@fused(dynamic=("key",))
def _pass(inp: Matrix, tgt: Matrix, layers: Sequence[Layer], key: int | None = None, *,
          input_grad: bool = True) -> tuple[Matrix, Matrix, list[Gradients]]:
    """One training pass: returns (dx, pred, grads) (see :func:`_train_pass`)."""
    dx, pred, _, grads = _train_pass(inp, tgt, layers, key, input_grad=input_grad)
    return dx, pred, grads

@fused(dynamic=("key",))
def _train_pass(inp: Matrix, tgt: Matrix, layers: Sequence[Layer], key: int | None = None, *,
                input_grad: bool = True, _depth: int = 0) -> tuple[Matrix, Matrix, Vector, list[Gradients]]:
    """One training pass: returns (dx, pred, each sample's log-likelihood of its target, grads).
    ``key`` seeds the dropout masks.

    With ``input_grad=False`` the input gradient is not computed (a training step does not need
    it; Haskell's laziness never forces it) and ``dx`` is an empty (0, 0) matrix. Nor is what no
    one needs: a layer with ``trainable=False`` gets empty gradients (its optimizer step leaves it
    as it is), and below the first layer that trains (or the input, with ``input_grad``) no
    layer computes its input gradient.
    """
    if _depth == 0:
        _check_batch(inp, tgt, layers)
    if not layers:
        # Base case: softmax with the gradient of the mean cross-entropy, (pred - tgt) / m
        if inp.shape != tgt.shape:
            raise ShapeError("softmax cross-entropy", inp.shape, tgt.shape, "the network's output needs one "
                             "column per class of the one-hot target")
        probs, log_lik = softmax_likelihoods(inp, tgt)
        pred0, loss_grad, ll0 = compute_all(probs, scale(1.0 / rows(inp), probs - tgt), log_lik)
        return loss_grad, pred0, ll0, []
    layer, rest = layers[0], layers[1:]
    steps = trains(layer)
    below = input_grad or steps  # whether this layer needs the gradient of its output
    match layer:
        case Linear(w=w, b=bias):
            _check_layer_input("training pass", inp, layer, _depth)
            z = matmul(inp, w)
            lin = compute(z + rows_like(bias, z))
            dz, pred, ll, t = _train_pass(lin, tgt, rest, key, input_grad=below, _depth=_depth + 1)
            dw = matmul(transpose(inp), dz) if steps else skipped()
            db = compute(sum_rows(dz)) if steps else skipped_vector()
            dx = matmul(dz, transpose(w)) if input_grad else skipped()
            return dx, pred, ll, [LinearGradients(dw, db), *t]
        case LinearNoBias(w=w):
            _check_layer_input("training pass", inp, layer, _depth)
            dz, pred, ll, t = _train_pass(matmul(inp, w), tgt, rest, key, input_grad=below, _depth=_depth + 1)
            dx = matmul(dz, transpose(w)) if input_grad else skipped()
            return dx, pred, ll, [LinearNoBiasGradients(matmul(transpose(inp), dz) if steps else skipped()), *t]
        case Batchnorm1d(frozen=True):  # normalised with the running statistics, which stay as they are
            _check_layer_input("training pass", inp, layer, _depth)
            out = frozen_forward(inp, layer)
            dz, pred, ll, t = _train_pass(out, tgt, rest, key, input_grad=below, _depth=_depth + 1)
            dx, dgamma, dbeta = frozen_backward(dz, inp, layer, input_grad=input_grad) if below else _no_bn_gradient()
            return dx, pred, ll, [_own(BN1(layer.mu, layer.var, dgamma, dbeta, rows(inp)), steps), *t]
        case Batchnorm1d(renorm=None, ghost_batch=None):
            _check_layer_input("training pass", inp, layer, _depth)
            out, batch_mu, batch_variance = bn_forward(inp, layer)
            dz, pred, ll, t = _train_pass(out, tgt, rest, key, input_grad=below, _depth=_depth + 1)
            dx, dgamma, dbeta = (bn_backward(dz, inp, layer, batch_mu, batch_variance, input_grad=input_grad) if below
                                 else _no_bn_gradient())
            return dx, pred, ll, [_own(BN1(batch_mu, batch_variance, dgamma, dbeta, rows(inp)), steps), *t]
        case Batchnorm1d(ghost_batch=None):  # batch renormalisation
            _check_layer_input("training pass", inp, layer, _depth)
            out, batch_mu, batch_variance, r, d = renorm_forward(inp, layer)
            dz, pred, ll, t = _train_pass(out, tgt, rest, key, input_grad=below, _depth=_depth + 1)
            dx, dgamma, dbeta = (renorm_backward(dz, inp, layer, batch_mu, batch_variance, r, d, input_grad=input_grad)
                                 if below else _no_bn_gradient())
            return dx, pred, ll, [_own(BN1(batch_mu, batch_variance, dgamma, dbeta, rows(inp)), steps), *t]
        case Batchnorm1d():  # ghost batches: the statistics come with the gradients
            _check_layer_input("training pass", inp, layer, _depth)
            out, ghost_mu, ghost_var = ghost_forward(inp, layer)
            dz, pred, ll, t = _train_pass(out, tgt, rest, key, input_grad=below, _depth=_depth + 1)
            dx, g = (ghost_backward(dz, inp, layer, ghost_mu, ghost_var, input_grad=input_grad) if below  # else dz is empty
                     else (skipped(), ghost_statistics(inp, layer, ghost_mu, ghost_var)))
            return dx, pred, ll, [_own(g, steps), *t]
        case Activation(f=f):
            fns = _ACT[f]
            if fns is None:
                dz, pred, ll, t = _train_pass(inp, tgt, rest, key, input_grad=input_grad, _depth=_depth + 1)
                return dz, pred, ll, [NoGrad(), *t]
            fn, dfn = fns
            dz, pred, ll, t = _train_pass(compute(amap(fn, inp)), tgt, rest, key, input_grad=input_grad,
                                          _depth=_depth + 1)
            return compute(dz * amap(dfn, inp)) if input_grad else skipped(), pred, ll, [NoGrad(), *t]
        case Dropout(p=p):
            mask = _dropout_mask(inp.shape, p, key, _depth, inp.dtype)
            dz, pred, ll, t = _train_pass(compute(inp * mask), tgt, rest, key, input_grad=input_grad, _depth=_depth + 1)
            return compute(dz * mask) if input_grad else skipped(), pred, ll, [NoGrad(), *t]
        case _:
            assert_never(layer)

@overload
def gradients(layers: Sequence[Layer], x: Matrix, tgt: Matrix, *, key: int | None = ...,
              input_grad: Literal[False] = ...) -> PassResult[None]: ...
@overload
def gradients(layers: Sequence[Layer], x: Matrix, tgt: Matrix, *, key: int | None = ...,
              input_grad: Literal[True]) -> PassResult[Matrix]: ...
@overload
def gradients(layers: Sequence[Layer], x: Matrix, tgt: Matrix, *, key: int | None = ...,
              input_grad: bool) -> PassResult[Matrix | None]: ...
def gradients(layers: Sequence[Layer], x: Matrix, tgt: Matrix, *, key: int | None = None,
              input_grad: bool = False) -> PassResult[Matrix | None]:
    """The training pass without the update: a batch's loss, predictions and gradients.

    For loops of your own (gradient clipping with :func:`~lazybn.grads.clip_grad_norm`, another
    optimizer, gradient statistics): apply the gradients with :func:`~lazybn.optim.update` and
    each ``BN1``'s batch statistics with :func:`~lazybn.batchnorm.update_running`, which is what
    :func:`~lazybn.train.train_step` does, in one replay. Batch norm normalises with the batch's
    statistics; ``key`` seeds the dropout masks; ``input_grad=True`` also computes ``dx`` (one
    more matrix product, or a pass over the batch for a first batch-norm layer).

    Raises:
        NumericalError: the batch, a batch statistic, the loss, a gradient or ``dx`` is NaN/inf
            (the message names which).
        ArgumentError, RankError, ShapeError, DTypeError: ``layers``, ``x`` and ``tgt`` are not
            lazybn layers and matrices that fit together (``tgt``: one row per sample, one column
            per output).
        ValueRangeError: targets that are not probabilities, fewer than 2 rows through batch norm,
            or Dropout layers and no ``key``.
    """
    check_batch_values("gradients", x, tgt, layers)
    bare, _, bounds = steady(layers)  # a cumulative count or renormalisation bounds trace nothing new
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/inf is found and reported below
        dx, pred, log_lik, grads = _bounded_pass(x, tgt, bare, key, bounds, input_grad)
        loss = mean_loss(log_lik)
        found = [(i, type(layers[i]).__name__, f.name) for i, g in enumerate(grads) for f in fields(g)
                 if isinstance(v := getattr(g, f.name), Manifest) and not _finite(v.array)]
        finite_dx = not input_grad or _finite(dx.array)
    problem = first_nonfinite(loss, found) or (None if finite_dx else "the input gradient dx is not finite")
    if problem is not None:
        raise NumericalError(f"gradients: {nonfinite_weights(layers) or problem}")
    return PassResult(loss, pred, grads, dx if input_grad else None)

def first_nonfinite(loss: float, found: Sequence[tuple[int, str, str]]) -> str | None:
    """What to report of a pass whose ``found`` arrays, (layer index, layer kind, field), are
    NaN/inf: a batch statistic first (it makes the loss NaN), then the loss, then a gradient."""
    for statistics in (True, False):
        for i, kind, name in found:
            if (name in ("batch_mu", "batch_var")) == statistics:
                return f"layer {i} ({kind}) has a non-finite {name}"
        if statistics and not math.isfinite(loss):
            return f"the loss is {loss}"
    return None

@fused(dynamic=("key", "bounds"))
def _bounded_pass(x: Matrix, tgt: Matrix, layers: tuple[Layer, ...], key: int | None, bounds: Bounds,
                  input_grad: bool) -> tuple[Matrix, Matrix, Vector, list[Gradients]]:
    """:func:`_train_pass` over the layers of :func:`steady`, with the renormalisation bounds put
    back (one replay for all of it)."""
    return _train_pass(x, tgt, bounded(layers, bounds), key, input_grad=input_grad)

def _finite(a: FloatArray) -> bool:
    """No NaN/inf in ``a``: its sum is finite (NaN and inf carry through a sum), else a look at
    every element (a sum of finite values can overflow). One read, no temporary array."""
    return math.isfinite(float(np.add.reduce(a, axis=None))) or bool(np.isfinite(a).all())

def logits(layers: Sequence[Layer], x: Matrix) -> Matrix:
    """Inference up to the last layer (before softmax), with the running statistics.

    Raises ArgumentError, RankError, ShapeError or DTypeError (naming the layer) when ``x`` is
    not a lazybn matrix of the first layer's features and dtype, or a layer does not take what
    the one before gives."""
    _check_input("logits", x, layers)
    return _logits(x, steady(layers)[0], probabilities=False)

@fused
def _logits(x: Matrix, layers: tuple[Layer, ...], probabilities: bool) -> Matrix:
    """One replay for the whole inference, and one kernel from each matrix product to the next:
    its bias, batch norm and activation, and the softmax if ``probabilities`` (0.72x the time of
    a kernel per layer at a batch of 100 in the MNIST network, 0.92x at 10000)."""
    y: Matrix | Delayed[Ix2] = x
    for i, layer in enumerate(layers):
        if isinstance(layer, (Linear, LinearNoBias, Batchnorm1d)):
            _check_layer_input("forward" if probabilities else "logits", y, layer, i)
        match layer:
            case Linear(w=w, b=bias):
                z = matmul(_manifest(y), w)
                y = z + rows_like(bias, z)
            case LinearNoBias(w=w):
                y = matmul(_manifest(y), w)
            case Batchnorm1d():  # inference is a frozen layer's forward: the running statistics
                y = running_forward(y, layer)
            case Activation(f=f):
                fns = _ACT[f]
                y = y if fns is None else amap(fns[0], y)
            case Dropout():
                pass
            case _:
                assert_never(layer)
    return compute(softmax(y)) if probabilities else _manifest(y)

def _manifest(y: Matrix | Delayed[Ix2]) -> Matrix:
    return compute(y) if isinstance(y, Delayed) else y

def forward(layers: Sequence[Layer], x: Matrix) -> Matrix:
    """Inference: class probabilities (softmax of the logits); batch norm uses running statistics.
    Raises as :func:`logits` does."""
    _check_input("forward", x, layers)
    return _logits(x, steady(layers)[0], probabilities=True)
