"""Training and evaluation on labelled data: the step, the epoch, accuracy.

``train_step`` is the seed's ``sgd`` step: run ``_train_pass``, update the parameters with the
optimizer (frozen state in, new state out), then the batch-norm running statistics from the
batch statistics each ``BN1`` carries; all of it is one ``@fused`` replay. Non-finite values
never reach the returned network: the loss, the batch statistics and the updated parameters are
checked before the new layers are handed out, and the step raises :class:`NumericalError` naming
the layer (default) or skips the batch, returning the layers it was given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, final

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .array import Comp, Manifest, Matrix, Vector
from .construct import matrix
from .errors import NumericalError as NumericalError  # its home until lazybn.errors
from .errors import ArgumentError, DTypeError, RankError, ShapeError, ValueRangeError, is_count
from .layers import (BN1, Batchnorm1d, Gradients, Layer, RenormRamp, _unchecked,
                     check_layers, nonfinite_weights)
from .batchnorm import _running, running_weights, update_running
from .network import (_bounded_pass, _train_pass, check_batch_values, check_fits, check_targets, first_nonfinite,
                      first_nonfinite_entry, logits, mean_loss)
from .loss import label_losses
from .steady import Bounds, bounded, renormalises, restored, steady
from .optim import Optimizer, OptState, Slots, kind, nonfinite_update, require_state, schedule, step_all, update
from .trace import fused


@final
@dataclass(frozen=True, slots=True)
class StepResult:
    """What :func:`train_step` returns: the new ``layers`` and ``opt_state``, the batch's mean
    cross-entropy ``loss`` and its predictions ``pred`` (softmax probabilities); ``skipped``: the
    step was not applied (``on_nonfinite="skip"``), and the layers and state are those given."""

    layers: list[Layer]
    opt_state: OptState
    loss: float
    pred: Matrix
    skipped: bool = False


def _check_finite(loss: float, grads: Sequence[object], layers: Sequence[Layer] = (), slots: Slots = (),
                  witnesses: Sequence[Manifest[Any]] = ()) -> str | None:
    """What is NaN/inf among the loss, the batch-norm statistics and gradients, and the updated
    weights of ``layers`` and optimizer ``slots``, whose ``witnesses`` (see
    :func:`~lazybn.optim.step_all`) stand for them: one look at a few hundred numbers when all is
    well (batch-norm layers check their own arrays)."""
    stats = [(i, name, getattr(g, name).array) for i, g in enumerate(grads) if isinstance(g, BN1)
             for name in ("batch_mu", "batch_var", "dgamma", "dbeta")]
    looks = [a for *_, a in stats] + [w.array for w in witnesses]
    if math.isfinite(loss) and (not looks or np.isfinite(np.concatenate(looks)).all()):  # one check, every step
        return None
    found = [(i, "Batchnorm1d", name) for i, name, a in stats if not np.isfinite(a).all()]
    return first_nonfinite(loss, found) or nonfinite_update(layers, slots)


def _refusing_layer(layers: Sequence[Layer], opt: Optimizer, opt_state: OptState, grads: Sequence[Gradients],
                    lr_scale: float) -> str | None:
    """The layer whose updated parameters or running statistics refused NaN/inf, found by updating
    the layers one at a time (this runs only after a refused step)."""
    for i, (layer, g) in enumerate(zip(layers, grads)):
        try:
            new, _ = update(opt, replace(opt_state, slots=(opt_state.slots[i],)), [layer], [g], lr_scale)
            if isinstance(new[0], Batchnorm1d) and isinstance(g, BN1):
                update_running(new[0], g)
        except (ValueRangeError, NumericalError) as exc:  # new running statistics, or update's own check
            what = exc.__cause__ if isinstance(exc, NumericalError) else exc  # the layer's own words, if any
            return f"the update makes layer {i} ({type(layer).__name__}) non-finite" + (f" ({what})" if what else "")
    return None


def train_step(layers: Sequence[Layer], opt: Optimizer, opt_state: OptState, x: Matrix, tgt: Matrix, *,
               key: int | None = None, lr_scale: float = 1.0,
               on_nonfinite: Literal["raise", "skip"] = "raise") -> StepResult:
    """One optimisation step on a batch ``x`` with targets ``tgt``: a :class:`StepResult` with the
    new layers and optimizer state. ``key`` seeds the dropout masks (needed with Dropout layers; give
    every step its own, as :func:`train_epoch` does: a key used again draws the same masks);
    ``lr_scale`` multiplies the learning rate.

    With ``on_nonfinite="skip"`` a batch holding NaN/inf, or a step that would make one, is
    skipped: the result holds the layers and state given, with ``skipped=True``.

    Raises:
        NumericalError: the batch, the loss, a batch statistic or an updated parameter is NaN/inf
            (``on_nonfinite="raise"``), or a linear layer already holds NaN/inf (either way).
        ArgumentError, ShapeError, DTypeError, ValueRangeError, UpdateMismatchError: as
            :func:`~lazybn.network.gradients` and :func:`~lazybn.optim.update` raise them.
    """
    _check_on_nonfinite("train_step", on_nonfinite)
    try:
        check_batch_values("train_step", x, tgt, layers)
        nonfinite_batch = False
    except NumericalError:  # NaN/inf in the batch
        if on_nonfinite == "raise":
            raise
        nonfinite_batch = True
    t, s, correction = schedule(opt, opt_state, layers, lr_scale)
    # Values that change from step to step stay out of the replay's signature (see steady); a
    # cumulative average's count is set after.
    bare, weights, bounds = steady(layers)
    if nonfinite_batch:  # skipped; the pass still checks the batch's shape against the layers
        with np.errstate(over="ignore", invalid="ignore"):
            _, pred, log_lik, _ = _bounded_pass(x, tgt, bare, key, bounds, False)
        return StepResult(list(layers), opt_state, mean_loss(log_lik), pred, skipped=True)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/inf is found and reported below, as an error
        try:
            # The whole step's arrays in one replay. Nothing is mutated, so the new layers can be made
            # before the loss and the batch statistics are checked; they are dropped if the check fails.
            pred, log_lik, grads, new_layers, slots, witnesses = _step(opt, bare, opt_state.slots, x, tgt, key, s,
                                                                       correction, weights, bounds)
            if weights or bounds:
                new_layers = [restored(new, old, counted=True) for new, old in zip(new_layers, layers)]
            refused = None
        except ValueRangeError as exc:  # a new layer refused NaN/inf (or the batch is unusable): find out which
            refused = exc
            _, pred, log_lik, grads = _train_pass(x, tgt, layers, key, input_grad=False)
    loss = mean_loss(log_lik)
    if refused is None:
        problem = _check_finite(loss, grads, new_layers, slots, witnesses)
    else:
        problem = _check_finite(loss, grads) or _refusing_layer(layers, opt, opt_state, grads, s)
    if problem is not None:
        held = nonfinite_weights(layers)
        if held is not None:  # the network's, not the batch's: skipped, every batch would be
            raise NumericalError(f"training step {opt_state.step}: {held} before the step")
        if on_nonfinite == "skip":
            return StepResult(list(layers), opt_state, loss, pred, skipped=True)
        raise NumericalError(f"training step {opt_state.step}: {problem}; lower the learning rate or check "
                             "the input for NaN/inf")
    if refused is not None:
        raise refused
    return StepResult(new_layers, OptState(t, slots, kind(opt)), loss, pred)


@fused(dynamic=("key", "lr_scale", "correction", "weights", "bounds"))
def _step(opt: Optimizer, layers: tuple[Layer, ...], slots: Slots, x: Matrix, tgt: Matrix, key: int | None,
          lr_scale: float, correction: tuple[float, ...], weights: tuple[tuple[float, float], ...],
          bounds: Bounds
          ) -> tuple[Matrix, Vector, list[Gradients], list[Layer], Slots, tuple[Manifest[Any], ...]]:
    """The seed's ``sgd`` step: the pass, each sample's log-likelihood, the optimizer's step and
    every batch-norm layer's running statistics (one replay for all of it). ``weights`` holds the
    :func:`running_weights` of the cumulative-average layers, ``bounds`` the (rmax, dmax) of the
    renormalising layers, in order."""
    _, pred, log_lik, grads = _train_pass(x, tgt, bounded(layers, bounds), key, input_grad=False)
    new_layers, new_slots, witnesses = step_all(opt, layers, tuple(grads), slots, lr_scale, correction)
    w = iter(weights)
    running = [_running(nl, g, running_weights(nl) if nl.momentum is not None else next(w))
               if isinstance(nl, Batchnorm1d) and isinstance(g, BN1) and not nl.frozen else nl
               for nl, g in zip(new_layers, grads)]
    return pred, log_lik, grads, running, new_slots, witnesses


def _check_on_nonfinite(op: str, on_nonfinite: object) -> None:
    if on_nonfinite not in ("raise", "skip"):
        raise ArgumentError(f"{op}: on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")


def _rows(data: NDArray[np.floating[Any]], idx: NDArray[np.intp], comp: Comp, dtype: DTypeLike | None = None) -> Matrix:
    """The rows ``idx`` of a float32/float64 data matrix as a Matrix: one copy (``np.take``, which
    gathers MNIST's 10-column targets 2.5x faster than ``data[idx]``, its images as fast), which
    the Matrix then owns (``matrix()`` would copy it again). Other data becomes ``dtype``."""
    if data.dtype not in (np.float32, np.float64) or data.ndim != 2:
        return matrix(data[idx], dtype, comp=comp)  # converts, or raises the usual error
    rows = np.take(data, idx, axis=0)
    if not (rows.flags.owndata and rows.flags.c_contiguous):  # a view of the caller's data: copy it
        rows = np.array(rows, order="C")
    rows.setflags(write=False)
    return Manifest(rows, comp)


def _check_data(where: str, x: object, other: object, name: str, rank: int) -> None:
    """``x`` is a (samples x features) numpy array and ``other`` (``name``: targets or labels) a
    numpy array of rank ``rank`` with one row per sample."""
    for what, a in (("x", x), (name, other)):
        if not isinstance(a, np.ndarray):
            raise ArgumentError(f"{where}: {what} must be a numpy array, got {type(a).__name__}")
    assert isinstance(x, np.ndarray) and isinstance(other, np.ndarray)
    if x.ndim != 2:
        raise RankError(f"{where}: x must be a matrix (samples x features), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise DTypeError(f"{where}: x must hold float32 or float64 inputs, got {x.dtype} (lb.prepare(images, pixels) "
                         "scales uint8 pixels)")
    if other.ndim != rank:
        raise RankError(f"{where}: {name} must have rank {rank}, got shape {other.shape}" + (
            " (one-hot rows: lb.one_hot(labels, classes) makes them)" if rank == 2 else
            " (one integer class per sample, not one-hot rows: y.argmax(axis=1) gives them)"))
    if other.shape[0] != x.shape[0]:
        raise ShapeError(where, x.shape, other.shape, f"x has {x.shape[0]} samples and {name} {other.shape[0]}; "
                         "they need one row per sample")


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterator[NDArray[np.intp]]:
    """Index arrays of consecutive batches of ``batch_size`` of ``n`` samples (shuffled when
    ``rng`` is given). A last batch of one sample is merged into the previous batch (batch norm
    cannot train on one sample).

    Raises (at the call, not at the first batch):
        ValueRangeError: ``n`` is not an integer >= 0, or ``batch_size`` not one >= 1.
        ArgumentError: ``rng`` is neither a numpy ``Generator`` nor None.
    """
    size: object = batch_size  # untyped callers: True is not a size
    if not is_count(size, 1):
        raise ValueRangeError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not is_count(n):  # -1 would give no batch at all
        raise ValueRangeError(f"batches: n (the number of samples) must be an integer >= 0, got {n!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ArgumentError(f"batches: rng must be a numpy Generator (np.random.default_rng(seed)) or None, got "
                            f"{type(rng).__name__}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return (order[s:e] for s, e in zip(starts, [*starts[1:], n]))


@final
@dataclass(frozen=True, slots=True)
class Evaluation:
    """What :func:`evaluate` returns: the fraction of samples whose arg-max prediction is their
    label, and the mean cross-entropy of the labels (the validation loss), in inference mode."""

    accuracy: float
    loss: float


def evaluate(layers: Sequence[Layer], x: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]],
             batch_size: int = 1000, comp: Comp = Comp.Seq) -> Evaluation:
    """Accuracy and mean cross-entropy of the network on labelled data, in inference mode (batch
    norm with its running statistics, no dropout).

    ``x`` (samples x features) and ``labels`` (one integer class per sample) are numpy arrays;
    the network runs on ``batch_size`` rows at a time, with ``comp``. Each sample's loss is
    ``log sum exp(z) - z[label]`` of its logits ``z``, in float64 (exact where a probability
    underflows, as the training pass's), and the mean an exactly rounded sum over the samples.

    Raises (never a silently wrong score):
        ArgumentError, RankError, ShapeError, DTypeError: ``x`` and ``labels`` are not numpy
            arrays of one row per sample that fit the layers, or the labels are not integers.
        ValueRangeError: no samples, or labels that are not classes of the network's output.
        NumericalError: ``x`` holds NaN or infinity, or the network's outputs overflow.
    """
    return _evaluate("evaluate", layers, x, labels, batch_size, comp)


def accuracy(layers: Sequence[Layer], x: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]],
             batch_size: int = 1000, comp: Comp = Comp.Seq) -> float:
    """Fraction of samples whose arg-max prediction (inference mode) equals the label: the
    accuracy of :func:`evaluate`, which raises what this raises."""
    return _evaluate("accuracy", layers, x, labels, batch_size, comp).accuracy


def _evaluate(op: str, layers: Sequence[Layer], x: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]],
              batch_size: int, comp: Comp) -> Evaluation:
    check_layers(op, layers)
    _check_data(op, x, labels, "labels", 1)
    if x.shape[0] == 0:
        raise ValueRangeError(f"{op}: no samples (x has 0 rows)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DTypeError(f"{op}: labels must be integer class indices, got {labels.dtype}")
    check_fits(op, x.shape, x.dtype, layers, numpy=True)
    if not np.isfinite(x).all():
        row, col = first_nonfinite_entry(x)
        raise NumericalError(f"{op}: x contains NaN or infinity (first at row {row}, column {col}: {x[row, col]})")
    correct, losses = 0, []
    for idx in batches(x.shape[0], batch_size, None):
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, as an error
            out = logits(layers, _rows(x, idx, comp)).array
        if idx[0] == 0 and (labels.min() < 0 or labels.max() >= out.shape[1]):
            raise ValueRangeError(f"{op}: labels must be classes of the network's {out.shape[1]} outputs, in "
                                  f"[0, {out.shape[1]}); got values from {labels.min()} to {labels.max()}")
        if not np.isfinite(out).all():
            held = nonfinite_weights(layers)
            raise NumericalError(f"{op}: the network's outputs for rows {idx[0]}..{idx[-1]} are not finite "
                                 f"({held or 'they overflow'})")
        correct += int(np.sum(np.argmax(out, axis=1) == labels[idx]))
        losses.extend(label_losses(out, labels[idx]).tolist())
    return Evaluation(correct / int(x.shape[0]), math.fsum(losses) / len(losses))


def train_epoch(layers: Sequence[Layer], opt: Optimizer, opt_state: OptState, x: NDArray[np.floating[Any]],
                y: NDArray[np.floating[Any]], batch_size: int, rng: np.random.Generator | None, *,
                key: int = 0, lr_scale: float = 1.0, comp: Comp = Comp.Seq,
                on_nonfinite: Literal["raise", "skip"] = "raise",
                progress: Callable[[float], object] | None = None,
                max_steps: int | None = None, renorm: RenormRamp | None = None) -> tuple[list[Layer], OptState, float]:
    """One pass over the training data (or its first ``max_steps`` batches): returns the new
    layers, optimizer state and the mean batch loss. ``progress(loss)`` is called after every
    step. With ``renorm``, every renormalising layer trains step ``t`` (``opt_state.step``) with
    the bounds ``renorm.at(t)``.

    Arguments:
        x, y: the inputs (samples x features, float32 or float64 as the layers) and one target
            row per sample (one-hot or soft labels, summing to 1), as numpy arrays.
        batch_size, rng: :func:`batches` of ``batch_size`` rows, shuffled by ``rng`` (None: in
            order); a last batch of one row joins the one before it.
        key: seeds the dropout masks: step ``t`` draws from ``key * 1_000_003 + t``.
        lr_scale: the learning rate's factor for this epoch (a schedule's).
        comp: the computation strategy of the batches.
        on_nonfinite: "raise", or "skip" a batch whose step is not finite (see :func:`train_step`);
            the mean loss is over the batches trained (NaN if none was).

    Raises:
        ArgumentError, RankError, DTypeError, ShapeError: ``x`` and ``y`` are not numpy arrays of
            one row per sample that fit the layers, the layers are not layers, the state is not an
            :class:`OptState` or its arrays do not fit the layers, or ``renorm`` is given without a
            renormalising layer.
        ValueRangeError: no samples, targets that are not probabilities, a ``batch_size``, ``key``
            or ``max_steps`` that is not a count, or ghost batches that do not divide every batch.
        UpdateMismatchError: ``opt_state`` was made by another optimizer, or for another number of
            layers.
        NumericalError: a step is not finite (``on_nonfinite="raise"``); the epoch's steps are
            not returned. NaN/inf in ``x`` is named by its row in ``x``.
    """
    check_layers("train_epoch", layers)
    _check_data("train_epoch", x, y, "y (targets)", 2)
    if x.shape[0] == 0:
        raise ValueRangeError("train_epoch: no samples (x has 0 rows)")
    check_fits("train_epoch", x.shape, x.dtype, layers, numpy=True)
    if y.dtype != x.dtype and y.dtype.kind not in "iub":  # integer (one-hot) targets take x's dtype
        raise DTypeError(f"train_epoch: y (targets) is {y.dtype} but x is {x.dtype}; they must agree "
                         f"(y.astype(np.{x.dtype}))")
    _check_on_nonfinite("train_epoch", on_nonfinite)
    # All of them, before the first step; a row with NaN/inf is a batch to skip if asked to
    check_targets("train_epoch", y if on_nonfinite == "raise" else y[np.isfinite(y).all(axis=1)])
    require_state("train_epoch", opt_state)
    if not is_count(key):  # untyped callers: True is not a key
        raise ValueRangeError(f"train_epoch: key must be an integer >= 0 (the dropout masks' seed), got {key!r}")
    if progress is not None and not callable(progress):  # else a TypeError after the first step's work
        raise ArgumentError(f"train_epoch.progress: must be a function of the step's loss, or None; got {progress!r}")
    if max_steps is not None and not is_count(max_steps):  # -1 would train nothing, 2.5 fail in the slicing below
        raise ValueRangeError(f"train_epoch.max_steps: must be an integer >= 0 or None (every batch), got {max_steps!r}")
    current = list(layers)
    sizes = sorted({len(idx) for idx in list(batches(x.shape[0], batch_size, None))[:max_steps]})  # those that run
    for i, layer in enumerate(current):
        if isinstance(layer, Batchnorm1d) and layer.ghost_batch is not None and any(n % layer.ghost_batch for n in sizes):
            raise ValueRangeError(f"train_epoch: layer {i} (Batchnorm1d) normalises ghost batches of {layer.ghost_batch} "
                                  f"rows, which do not divide every batch: {x.shape[0]} samples in batches of "
                                  f"{batch_size} give batches of {sizes} rows")
    if renorm is not None and not any(renormalises(layer) for layer in current):
        raise ArgumentError("train_epoch.renorm: a ramp of renormalisation bounds needs a layer that renormalises "
                            "(Batchnorm1d(renorm=Renorm(...)), or mlp(..., renorm=...))")
    losses = []
    for k, idx in enumerate(batches(x.shape[0], batch_size, rng)):
        if max_steps is not None and k >= max_steps:
            break
        if renorm is not None:
            bounds = renorm.at(opt_state.step)
            current = [_unchecked(layer, renorm=bounds) if renormalises(layer) else layer for layer in current]
        xb = _rows(x, idx, comp)
        try:
            step = train_step(current, opt, opt_state, xb, _rows(y, idx, comp, x.dtype),
                              key=key * 1_000_003 + opt_state.step, lr_scale=lr_scale, on_nonfinite=on_nonfinite)
        except NumericalError:
            bad = ~np.isfinite(xb.array)
            if not bad.any():
                raise
            at = int(np.argmin(np.where(bad.any(axis=1), idx, x.shape[0])))  # of the batch's bad rows, first in x
            col = int(np.argmax(bad[at]))
            raise NumericalError(f"train_epoch: step {k}'s batch holds NaN or infinity: x[{idx[at]}, {col}] is "
                                 f"{xb.array[at, col]} (the batch's first such row of x); on_nonfinite='skip' skips "
                                 "such batches") from None
        current, opt_state = step.layers, step.opt_state
        if not step.skipped:
            losses.append(step.loss)
        if progress is not None:
            progress(step.loss)
    mean_loss = sum(losses) / len(losses) if losses else float("nan")
    return current, opt_state, mean_loss
