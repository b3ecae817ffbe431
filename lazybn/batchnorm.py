"""Batch norm's training forward and backward, its variants, and its running statistics.

``bn_forward`` and ``bn_backward`` are the derivation's steps 1-9 and 9-1, unsimplified, each a
delayed expression that the fusion engine turns into one kernel; they are the Batchnorm1d case
of :func:`lazybn.network._pass`. The variants reuse them:

* batch renormalisation (``Batchnorm1d(renorm=Renorm(...))``, Ioffe 2017) corrects the normalised
  batch with r and d, constants for the gradient, so its backward is batch norm's with scale γ·r;
* ghost batches (``Batchnorm1d(ghost_batch=G)``) normalise each group of G rows of a batch of N
  with its own statistics. The batch, viewed without a copy as a (G, N/G·D) matrix, has the
  ghost batches' features as its columns: batch norm of that matrix, with γ and β repeated N/G
  times, is ghost batch norm. Ghost batch ``v`` holds rows v, v + N/G, v + 2N/G, ... (the
  grouping of Keras's ``virtual_batch_size``);
* a frozen layer (``Batchnorm1d(frozen=True)``, for fine-tuning) trains with inference's forward,
  the running statistics in place of the batch's, and keeps them: its backward is steps 9-7.

The running statistics are updated once per batch (``update_running``); with ghost batches, from
the mean of the ghost batches' means and variances.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from .array import Delayed, Ix1, Ix2, Matrix, Vector, compute, compute_all, delay
from .construct import matrix, ones, vector, zeros
from .errors import ArgumentError, DTypeError, ShapeError, ValueRangeError
from .fuse.graph import Fn
from .layers import BN1, Batchnorm1d, _unchecked, one_more
from .ops import add_c, amap, br, cols, reshape, rows, scale, sum_rows
from .trace import fused


@fused
def bn_forward(inp: Matrix, layer: Batchnorm1d) -> tuple[Matrix, Vector, Vector]:
    """Batch norm's training forward, steps 1-9: returns (out, batch mean, biased batch variance)."""
    return _forward(inp, layer.gamma, layer.beta, layer.eps)


def _forward(inp: Matrix, gamma: Vector, beta: Vector, eps: float) -> tuple[Matrix, Vector, Vector]:
    """``bn_forward``'s steps with the parameters given (ghost batches pass them once per ghost batch)."""
    _nonempty("batch norm's forward", inp)
    b = partial(br, rows(inp))  # broadcast a vector to every row of the batch
    m = 1.0 / rows(inp)
    # Step 1: mean, Equation (1)
    batch_mu = scale(m, sum_rows(inp))
    # Step 2: mean subtraction
    xmu = inp - b(batch_mu)
    # Step 3
    sq = amap(Fn.square, xmu)
    # Step 4: variance, Equation (2)
    batch_variance = scale(m, sum_rows(sq))
    # Step 5
    sqrtvar = amap(Fn.sqrt, add_c(batch_variance, eps))
    # Step 6
    ivar = amap(Fn.recip, sqrtvar)
    # Step 7: normalize, Equation (3)
    xhat = xmu * b(ivar)
    # Step 8: rescale
    gammax = b(gamma) * xhat
    # Step 9: translate, Equation (4)
    out0 = gammax + b(beta)
    return compute_all(out0, batch_mu, batch_variance)


@fused
def bn_backward(dz: Matrix, inp: Matrix, layer: Batchnorm1d, batch_mu: Vector, batch_variance: Vector, *,
                input_grad: bool = True) -> tuple[Matrix, Vector, Vector]:
    """Batch norm's backward, steps 9-1 unsimplified: returns (dx, dgamma, dbeta).

    The forward quantities (xmu, ivar, xhat) are rebuilt as delayed expressions from the saved
    input and batch statistics: the kernel recomputes them instead of storing N x D arrays.
    With ``input_grad=False`` dx is never forced (an empty (0, 0) matrix in its place): a layer
    that trains but has no layer below it needs dgamma and dbeta only, one pass over the batch.
    """
    return forced(*_backward(dz, inp, layer.gamma, layer.eps, batch_mu, batch_variance), input_grad=input_grad)


def _nonempty(op: str, inp: Matrix) -> None:
    if rows(inp) == 0:
        raise ValueRangeError(f"{op}: the batch is empty (0 rows); its mean and variance need at least one row")


def skipped() -> Matrix:
    """A gradient no one needs: an empty matrix, a new one for each use, as a replay makes them
    (which arguments are the same array is part of a replay's signature)."""
    return matrix(np.zeros((0, 0), np.float32))


def skipped_vector() -> Vector:
    return vector(np.zeros(0, np.float32))


def forced(dx: Delayed[Ix2], dgamma: Delayed[Ix1], dbeta: Delayed[Ix1], *,
           input_grad: bool) -> tuple[Matrix, Vector, Vector]:
    """The backward's delayed gradients computed in one kernel, ``dx`` only if ``input_grad``
    (else :func:`skipped`): a delayed array that is not forced costs nothing."""
    if input_grad:
        return compute_all(dx, dgamma, dbeta)
    return (skipped(), *compute_all(dgamma, dbeta))


def _backward(dz: Matrix, inp: Matrix, gamma: Vector, eps: float, batch_mu: Vector,
              batch_variance: Vector) -> tuple[Delayed[Ix2], Delayed[Ix1], Delayed[Ix1]]:
    """``bn_backward``'s steps with the scale ``gamma`` given, delayed. Batch renormalisation
    passes γ·r, which is not a layer's parameter: a layer built with it would reject an overflow
    as an invalid parameter, where ``train_step`` refuses the step that made it (and a replay,
    which builds no layer, would not reject it)."""
    _nonempty("batch norm's backward", inp)
    b = partial(br, rows(inp))
    m = 1.0 / rows(inp)
    xmu = inp - b(batch_mu)
    sqrtvar = amap(Fn.sqrt, add_c(batch_variance, eps))
    ivar = amap(Fn.recip, sqrtvar)
    xhat = xmu * b(ivar)
    # Step 9
    dbeta = sum_rows(dz)
    # Step 8
    dgamma = sum_rows(dz * xhat)
    dxhat = dz * b(gamma)
    # Step 7
    divar = sum_rows(dxhat * xmu)
    dxmu1 = dxhat * b(ivar)
    # Step 6
    dsqrtvar = amap(Fn.negate, amap(Fn.recip, amap(Fn.square, sqrtvar))) * divar
    # Step 5
    dvar = scale(0.5, ivar) * dsqrtvar
    # Step 4
    dsq = scale(m, dvar)
    # Step 3
    dxmu2 = scale(2.0, xmu) * b(dsq)
    # Step 2
    dx1 = dxmu1 + dxmu2
    dmu = amap(Fn.negate, sum_rows(dx1))
    # Step 1
    dx2 = b(scale(m, dmu))
    dx = dx1 + dx2
    return dx, dgamma, dbeta


@fused
def frozen_forward(inp: Matrix, layer: Batchnorm1d) -> Matrix:
    """A frozen layer's training forward (``Batchnorm1d(frozen=True)``), which is inference's
    forward: see :func:`running_forward`."""
    return compute(running_forward(inp, layer))


def running_forward(inp: Matrix | Delayed[Ix2], layer: Batchnorm1d) -> Delayed[Ix2]:
    """Steps 2 and 5-9 with the running mean and variance in place of the batch's, delayed (in
    inference it joins the kernel of the layers around it)."""
    b = partial(br, rows(inp))
    # Step 2: subtract the running mean
    xmu = inp - b(layer.mu)
    # Steps 5-6 with the running variance
    ivar = amap(Fn.recip, amap(Fn.sqrt, add_c(layer.var, layer.eps)))
    # Step 7: normalize
    xhat = xmu * b(ivar)
    # Steps 8-9: rescale and translate
    return b(layer.gamma) * xhat + b(layer.beta)


@fused
def frozen_backward(dz: Matrix, inp: Matrix, layer: Batchnorm1d, *,
                    input_grad: bool = True) -> tuple[Matrix, Vector, Vector]:
    """A frozen layer's backward: returns (dx, dgamma, dbeta), dx as in :func:`bn_backward`. The
    statistics are constants, so steps 9-7 are all there is: no path runs through a mean or a
    variance of the batch."""
    b = partial(br, rows(inp))
    ivar = amap(Fn.recip, amap(Fn.sqrt, add_c(layer.var, layer.eps)))
    xhat = (inp - b(layer.mu)) * b(ivar)
    # Step 9
    dbeta = sum_rows(dz)
    # Step 8
    dgamma = sum_rows(dz * xhat)
    dxhat = dz * b(layer.gamma)
    # Step 7
    dx = dxhat * b(ivar)
    return forced(dx, dgamma, dbeta, input_grad=input_grad)


def _clip(v: Delayed[Ix1], lo: float, hi: float) -> Delayed[Ix1]:
    """``v`` clipped to [lo, hi], exactly: ``amap(Fn.drelu, t)`` is 1 where t > 0, else 0, so an
    entry inside is itself times 1 plus the bound times 0, and one outside the bound times 1 plus
    itself times 0. (Sums such as max(v, lo) = v + relu(lo - v) round lo - v: 1e8 clipped to
    5 became 8 in float32.) An infinite entry becomes NaN; a step that makes one is refused."""
    low = amap(Fn.drelu, add_c(amap(Fn.negate, v), lo))  # 1 where v < lo
    w = v * add_c(amap(Fn.negate, low), 1.0) + scale(lo, low)
    high = amap(Fn.drelu, add_c(w, -hi))  # 1 where w > hi
    return w * add_c(amap(Fn.negate, high), 1.0) + scale(hi, high)


@fused
def renorm_forward(inp: Matrix, layer: Batchnorm1d) -> tuple[Matrix, Vector, Vector, Vector, Vector]:
    """Batch renormalisation's training forward (Ioffe 2017, Algorithm 1): returns (out, batch
    mean, biased batch variance, r, d). Steps 1-7 are batch norm's; r and d correct the
    normalised batch towards the running statistics and are constants for the backward."""
    renorm = layer.renorm
    if renorm is None:
        raise ArgumentError("renorm_forward: the layer has no renormalisation settings (renorm=None); bn_forward "
                            "is its training forward")
    b = partial(br, rows(inp))
    m = 1.0 / rows(inp)
    batch_mu = scale(m, sum_rows(inp))
    xmu = inp - b(batch_mu)
    batch_variance = scale(m, sum_rows(amap(Fn.square, xmu)))
    sigma_b = amap(Fn.sqrt, add_c(batch_variance, layer.eps))
    xhat = xmu * b(amap(Fn.recip, sigma_b))
    # The running statistics' sigma, and the corrections
    sigma = amap(Fn.sqrt, add_c(layer.var, layer.eps))
    r = sigma_b / sigma
    d = (batch_mu - layer.mu) / sigma
    if renorm.rmax is not None:
        r = _clip(r, 1.0 / renorm.rmax, renorm.rmax)
    if renorm.dmax is not None:
        d = _clip(d, -renorm.dmax, renorm.dmax)
    # Rescale and translate the corrected batch
    out = b(layer.gamma) * (xhat * b(r) + b(d)) + b(layer.beta)
    return compute_all(out, batch_mu, batch_variance, r, d)


@fused
def renorm_backward(dz: Matrix, inp: Matrix, layer: Batchnorm1d, batch_mu: Vector, batch_variance: Vector, r: Vector,
                    d: Vector, *, input_grad: bool = True) -> tuple[Matrix, Vector, Vector]:
    """Batch renormalisation's backward: returns (dx, dgamma, dbeta), dx as in :func:`bn_backward`.
    With r and d constant the output is batch norm with scale gamma·r and shift gamma·d + beta:
    its backward, whose dgamma is the sum of dz·xhat; then the chain rule for gamma."""
    dx, dz_xhat, dbeta = forced(*_backward(dz, inp, compute(layer.gamma * r), layer.eps, batch_mu, batch_variance),
                                input_grad=input_grad)
    return dx, compute(r * dz_xhat + d * dbeta), dbeta


def _ghosts(inp: Matrix, layer: Batchnorm1d) -> tuple[int, int]:
    """(rows per ghost batch, ghost batches)."""
    size = layer.ghost_batch
    if size is None:
        raise ArgumentError("ghost batch norm: the layer has no ghost batches (ghost_batch=None); bn_forward and "
                            "bn_backward are its training pass")
    k = rows(inp) // size
    if k * size != rows(inp) or k == 0:
        raise ValueRangeError(f"ghost batch norm: ghost batches of {size} rows do not divide the batch of "
                              f"{rows(inp)}")
    return size, k


def _side_by_side(k: int, *vs: Vector) -> list[Vector]:
    """Each of ``vs`` repeated ``k`` times end to end, one copy per ghost batch (one kernel)."""
    return [reshape(w, k * v.shape[0]) for v, w in zip(vs, compute_all(*(br(k, v) for v in vs)))]


@fused
def ghost_forward(inp: Matrix, layer: Batchnorm1d) -> tuple[Matrix, Vector, Vector]:
    """Ghost batch norm's training forward: returns (out, and per ghost batch and feature, side by
    side, the batch means and biased variances)."""
    size, k = _ghosts(inp, layer)
    gamma, beta = _side_by_side(k, layer.gamma, layer.beta)
    out, mu, var = _forward(reshape(inp, (size, k * cols(inp))), gamma, beta, layer.eps)
    return reshape(out, (rows(inp), cols(inp))), mu, var


@fused
def ghost_backward(dz: Matrix, inp: Matrix, layer: Batchnorm1d, ghost_mu: Vector, ghost_var: Vector, *,
                   input_grad: bool = True) -> tuple[Matrix, BN1]:
    """Ghost batch norm's backward: returns (dx as in :func:`bn_backward`, the gradients of gamma
    and beta summed over the ghost batches, with the mean of their means and biased variances for
    the running update)."""
    size, k = _ghosts(inp, layer)
    shape = (size, k * cols(inp))
    (gamma,) = _side_by_side(k, layer.gamma)
    dx, dgamma, dbeta = forced(*_backward(reshape(dz, shape), reshape(inp, shape), gamma, layer.eps, ghost_mu,
                                          ghost_var), input_grad=input_grad)

    sums = compute_all(sum_rows(_per_ghost(k, dgamma)), sum_rows(_per_ghost(k, dbeta)),
                       *_ghost_means(k, ghost_mu, ghost_var))
    return reshape(dx, (rows(inp), cols(inp))) if input_grad else dx, BN1(sums[2], sums[3], sums[0], sums[1], size)


def _per_ghost(k: int, v: Vector) -> Matrix:
    """A vector of ``k`` ghost batches' values side by side as a matrix: one row per ghost batch."""
    return reshape(v, (k, v.shape[0] // k))


def _ghost_means(k: int, ghost_mu: Vector, ghost_var: Vector) -> tuple[Delayed[Ix1], Delayed[Ix1]]:
    """The mean over the ``k`` ghost batches of their means and of their biased variances."""
    return scale(1.0 / k, sum_rows(_per_ghost(k, ghost_mu))), scale(1.0 / k, sum_rows(_per_ghost(k, ghost_var)))


@fused
def ghost_statistics(inp: Matrix, layer: Batchnorm1d, ghost_mu: Vector, ghost_var: Vector) -> BN1:
    """:func:`ghost_backward`'s ``BN1`` without gradients, for a layer that neither trains nor
    passes a gradient back: the mean of the ghost batches' means and of their biased variances,
    and empty dgamma and dbeta."""
    size, k = _ghosts(inp, layer)
    mu, var = compute_all(*_ghost_means(k, ghost_mu, ghost_var))
    return BN1(mu, var, skipped_vector(), skipped_vector(), size)


def running_weights(layer: Batchnorm1d) -> tuple[float, float]:
    """The weights (old, new) of the running statistics and of the batch's in the next update:
    ``(1 - momentum, momentum)``, or ``(k/(k+1), 1/(k+1))`` in a cumulative average of k batches."""
    if layer.momentum is None:
        k = layer.tracked
        return k / (k + 1), 1 / (k + 1)  # exact int division: any count, however large
    return 1.0 - layer.momentum, layer.momentum


def update_running(layer: Batchnorm1d, g: BN1) -> Batchnorm1d:
    """The running statistics after one training batch (the paper's inference rule, by default).

    ``mu <- (1 - momentum) mu + momentum batch_mu`` and the same for ``var`` with the batch
    variance made unbiased (times m/(m-1)) when ``layer.unbiased``. With ``momentum=None`` the
    weights are ``k/(k+1)`` and ``1/(k+1)`` after ``k = layer.tracked`` batches (an equally
    weighted mean of the batches' statistics), and the count goes up by one. A frozen layer is
    returned as it is.

    Raises:
        ArgumentError: ``layer`` is not a Batchnorm1d or ``g`` not a BN1.
        ShapeError, DTypeError: ``g``'s statistics are not of the layer's length and dtype.
        ValueRangeError: ``g.n`` < 2 (one sample has no variance), or the new statistics are
            NaN/inf (the layer refuses them).
    """
    given: tuple[object, object] = (layer, g)  # an untyped caller may pass any layer
    if not (isinstance(given[0], Batchnorm1d) and isinstance(given[1], BN1)):
        raise ArgumentError(f"update_running: expected a Batchnorm1d and its BN1 gradients, got "
                            f"{type(layer).__name__} and {type(g).__name__}")
    if layer.frozen:
        return layer
    for name, stat in (("batch_mu", g.batch_mu), ("batch_var", g.batch_var)):
        if stat.shape != layer.mu.shape:
            raise ShapeError("update_running", layer.mu.shape, stat.shape, f"the BN1's {name} must have one entry per "
                             f"feature of the layer ({layer.features}): is it another layer's?")
        if stat.dtype != layer.mu.dtype:
            raise DTypeError(f"update_running: the BN1's {name} is {stat.dtype} but the layer holds {layer.mu.dtype}")
    # The count and the renormalisation bounds change from step to step and take no part in the
    # arithmetic: they stay out of the replay's signature.
    new = _running(_unchecked(layer, tracked=0, renorm=None), g, running_weights(layer))
    return _unchecked(new, tracked=one_more(layer.tracked) if layer.momentum is None else layer.tracked, renorm=layer.renorm)


def reset_running(layer: Batchnorm1d) -> Batchnorm1d:
    """The layer with its running statistics back at their start: mean 0, variance 1, count 0
    (gamma, beta and the settings unchanged). Training outputs do not depend on the running
    statistics, except with batch renormalisation, whose r and d are computed from them.
    Anything but a Batchnorm1d is an ``ArgumentError``."""
    given: object = layer  # an untyped caller may pass any layer
    if not isinstance(given, Batchnorm1d):
        raise ArgumentError(f"reset_running: expected a Batchnorm1d, got {type(layer).__name__}")
    return replace(layer, mu=zeros(layer.features, layer.mu.dtype, layer.mu.comp),
                   var=ones(layer.features, layer.var.dtype, layer.var.comp), tracked=0)


@fused(dynamic=("weights",))
def _running(layer: Batchnorm1d, g: BN1, weights: tuple[float, float]) -> Batchnorm1d:
    """``update_running``'s arithmetic with the weights (old, new) given, the count unchanged."""
    if g.n < 2:
        raise ValueRangeError(f"update_running: a batch of {g.n} sample(s) has no variance estimate; "
                              "batch norm trains on batches of more than 1 sample")
    old, new = weights
    batch_var = scale(g.n / (g.n - 1), g.batch_var) if layer.unbiased else delay(g.batch_var)
    mu, var = compute_all(scale(old, layer.mu) + scale(new, g.batch_mu), scale(old, layer.var) + scale(new, batch_var))
    return replace(layer, mu=mu, var=var)
