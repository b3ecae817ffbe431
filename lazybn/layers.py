"""Layers and their gradients: two closed unions of frozen dataclasses (the seed's ``Layer`` and
``Gradients`` data types), matched exhaustively in :mod:`lazybn.network`.

Conventions (fixed, documented, tested):

* ``Linear(w, b)`` computes ``x · w + b`` with ``w`` of shape (inputs, outputs).
* ``Batchnorm1d`` normalises each feature (column) over the batch. ``momentum`` is the weight
  of the NEW batch in the running averages (PyTorch's convention; Keras's ``momentum=0.99``
  weights the old value: see :mod:`lazybn.conventions`). The running variance ``var`` is stored
  unbiased (m/(m-1) times the batch variance), as the batch-norm paper's inference rule says,
  unless ``unbiased=False``. ``eps`` is added to the variance before the square root, in
  training and in inference alike.
* ``Dropout(p)`` is inverted dropout: in training each unit is kept with probability 1 - p and
  scaled by 1/(1 - p); at inference it is the identity.
* ``trainable=False`` on a layer with parameters (``Linear``, ``LinearNoBias``, ``Batchnorm1d``)
  makes the optimizers leave its parameters and their moments as they are (PyTorch's
  ``requires_grad_(False)`` on the module's parameters, with no weight decay either). Its
  gradients are not computed (the training pass hands over empty arrays), nor is any input
  gradient below the first layer that trains. For batch norm it covers gamma and beta;
  ``frozen`` is what keeps the running statistics (Keras's ``trainable=False`` is both).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, TypeVar, final

import numpy as np

from .array import Manifest, Matrix, Vector
from .errors import ArgumentError, DTypeError, RankError, ShapeError, ValueRangeError, a_kind, is_real
from .optimizers import as_number


class Act(enum.Enum):
    """Element-wise activation functions."""

    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    identity = "identity"


def _check(layer: str, name: str, a: object, rank: int) -> Manifest[Any]:
    if not isinstance(a, Manifest):
        raise ArgumentError(f"{layer}.{name}: expected a lazybn Manifest, got {type(a).__name__}")
    if len(a.shape) != rank:
        kind = "vector" if rank == 1 else "matrix"
        raise RankError(f"{layer}.{name}: expected a {kind}, got shape {a.shape}")
    return a


def _num(layer: str, name: str, x: object) -> float:
    if not is_real(x):
        raise ArgumentError(f"{layer}.{name}: expected a number, got {x!r}")
    return as_number(layer, name, x)  # 10**400: a ValueRangeError, not an OverflowError


def _same_dtype(layer: str, *arrays: Manifest[Any]) -> None:
    dtypes = {a._leaf.dtype for a in arrays}
    if len(dtypes) > 1:
        raise DTypeError(f"{layer}: parameters mix dtypes {sorted(map(str, dtypes))}")


def _flag(layer: str, name: str, x: object) -> None:
    if type(x) is not bool:
        raise ArgumentError(f"{layer}.{name}: expected True or False, got {x!r}")


# Constructors validate values through ``_leaf`` (not ``.array``): a @fused function that returns a
# layer rebuilds it on every replay, so this check runs again and need not spoil the trace.
def _finite(layer: str, name: str, a: Manifest[Any]) -> None:
    if not np.isfinite(a._leaf.array).all():
        raise ValueRangeError(f"{layer}.{name}: contains NaN or infinity")


@final
@dataclass(frozen=True, slots=True)
class Linear:
    """Affine layer ``x · w + b``; ``w`` is (inputs, outputs), ``b`` has one entry per output.
    ``trainable=False``: the optimizers leave ``w`` and ``b`` as they are (see the module doc).
    Raises ArgumentError (not lazybn arrays, a flag not a bool), RankError, ShapeError (``b``'s
    length) or DTypeError (mixed dtypes); the values are not checked (see ``nonfinite_weights``)."""

    w: Matrix
    b: Vector
    trainable: bool = True

    def __post_init__(self) -> None:
        _flag("Linear", "trainable", self.trainable)
        _check("Linear", "w", self.w, 2)
        _check("Linear", "b", self.b, 1)
        if self.b.shape[0] != self.w.shape[1]:
            raise ShapeError("Linear", self.w.shape, self.b.shape, "b needs one entry per column (output) of w")
        _same_dtype("Linear", self.w, self.b)


@final
@dataclass(frozen=True, slots=True)
class LinearNoBias:
    """Linear layer without bias (``Linear'`` in the seed): batch norm's beta takes the bias's role.
    ``trainable=False``: the optimizers leave ``w`` as it is. Raises as :class:`Linear`."""

    w: Matrix
    trainable: bool = True

    def __post_init__(self) -> None:
        _flag("LinearNoBias", "trainable", self.trainable)
        _check("LinearNoBias", "w", self.w, 2)


_BN_ARRAYS = ("mu", "var", "gamma", "beta")
TRACKED_MAX = 2**63 - 1  # Batchnorm1d.tracked is an int64 count, as PyTorch's num_batches_tracked


def one_more(tracked: int) -> int:
    """The cumulative count after one more batch; it stays at :data:`TRACKED_MAX`, whose weights are
    (1, 2**-63): as good as no change, where int64 would wrap around."""
    return min(tracked + 1, TRACKED_MAX)
_NORMAL = {np.dtype(t): (float(np.finfo(t).tiny), float(np.finfo(t).max)) for t in (np.float32, np.float64)}


@final
@dataclass(frozen=True, slots=True)
class Renorm:
    """Batch renormalisation (Ioffe, 2017): training normalises with the batch, then corrects
    towards the running statistics, ``x̂·r + d`` with ``r = σ_B/σ`` clipped to [1/rmax, rmax] and
    ``d = (μ_B - μ)/σ`` clipped to [-dmax, dmax] (σ_B, σ: square roots of the batch's and the
    running variance plus eps). r and d are constants for the gradient. None leaves a bound
    off (a bound is a finite number); the paper ramps rmax from 1 to 3 and dmax from 0 to 5
    during training. ``train_step`` passes the bounds to its replay as dynamic values: a ramp
    that changes them every step replays the step (only a bound going from None to a number, or
    back, traces it again); so does :func:`~lazybn.network.gradients`. A bound below its range
    (rmax < 1, dmax < 0) or infinite is a ``ValueRangeError``, one that is not a number an
    ``ArgumentError``.
    """

    rmax: float | None = None
    dmax: float | None = None

    def __post_init__(self) -> None:
        if self.rmax is not None and not 1.0 <= _num("Renorm", "rmax", self.rmax) < math.inf:
            raise ValueRangeError(f"Renorm.rmax: must be a finite number >= 1 (r is clipped to [1/rmax, rmax]; None "
                                  f"leaves it unclipped), got {self.rmax!r}")
        if self.dmax is not None and not 0.0 <= _num("Renorm", "dmax", self.dmax) < math.inf:
            raise ValueRangeError(f"Renorm.dmax: must be a finite number >= 0 (d is clipped to [-dmax, dmax]; None "
                                  f"leaves it unclipped), got {self.dmax!r}")


@final
@dataclass(frozen=True, slots=True)
class RenormRamp:
    """The batch-renormalisation paper's schedule of the bounds: batch norm (rmax 1, dmax 0, so
    r = 1 and d = 0) for the first ``start`` steps, then rmax rises linearly to ``rmax`` over
    ``rmax_steps`` steps and dmax to ``dmax`` over ``dmax_steps`` (the paper: 5000, then 40000
    steps to 3 and 25000 to 5). ``train_epoch(..., renorm=ramp)`` sets ``ramp.at(step)`` on every
    renormalising layer before each step; the bounds are dynamic values of the step's replay, so a
    new pair every step traces nothing new. Raises as :class:`Renorm` for the final bounds, and
    ``ValueRangeError`` for step counts that are not integers >= 0.
    """

    rmax: float
    dmax: float
    start: int = 0
    rmax_steps: int = 0
    dmax_steps: int = 0

    def __post_init__(self) -> None:
        Renorm(_num("RenormRamp", "rmax", self.rmax), _num("RenormRamp", "dmax", self.dmax))  # valid final bounds
        for name in ("start", "rmax_steps", "dmax_steps"):
            v = getattr(self, name)
            if type(v) is not int or v < 0:
                raise ValueRangeError(f"RenormRamp.{name}: must be an integer >= 0 (steps), got {v!r}")

    def at(self, step: int) -> Renorm:
        """The bounds after ``step`` optimizer steps (``OptState.step``)."""
        done = step - self.start

        def part(steps: int) -> float:  # how far the ramp has come: 0 until it starts, 1 from its end
            return 0.0 if done < 0 else 1.0 if done >= steps else done / steps

        return Renorm(1.0 + (float(self.rmax) - 1.0) * part(self.rmax_steps), float(self.dmax) * part(self.dmax_steps))


@final
@dataclass(frozen=True, slots=True)
class Batchnorm1d:
    """Batch normalisation over the batch (rows) for each feature (column).

    Arguments:
        mu, var: running mean and running variance (inference statistics); ``var`` unbiased.
        gamma, beta: the learnable scale and shift.
        eps: added to the variance before the square root (default 1e-5, as PyTorch).
        momentum: weight of the new batch in the running averages (default 0.1, as PyTorch), or
            None for a cumulative average: after k batches the running statistics are the mean
            of the k batches' statistics, equally weighted (PyTorch's ``momentum=None``); the
            first batch replaces the initial values.
        unbiased: store the running variance unbiased (m/(m-1) correction; default True).
        tracked: the number of batches in the cumulative average (PyTorch's
            ``num_batches_tracked``); counted only when ``momentum`` is None. See
            :func:`~lazybn.network.reset_running`. ``train_step`` keeps the count out of its
            replay's signature, and so does :func:`~lazybn.network.gradients`.
        renorm: batch renormalisation's settings (:class:`Renorm`), or None for batch norm.
            Inference is the same either way.
        ghost_batch: ghost batch norm: training normalises each group of this many rows (>= 2,
            dividing the batch) with the group's own statistics; None: the whole batch. See
            :mod:`lazybn.batchnorm` for the grouping. Not together with ``renorm``.
        frozen: train with the running statistics instead of the batch's and leave them as they
            are (fine-tuning with batch norm frozen: PyTorch's ``bn.eval()`` inside a training
            loop, Keras's ``trainable=False`` for the statistics). gamma and beta still learn;
            the forward is inference's, so a batch of one trains. Not with ``renorm`` or
            ``ghost_batch``.
        trainable: False: the optimizers leave gamma and beta as they are (with ``frozen=True``
            the whole layer is fixed, Keras's ``trainable=False``).

    Raises:
        ArgumentError: a field of the wrong kind, or ``frozen``/``ghost_batch``/``renorm`` combined.
        RankError, ShapeError, DTypeError: the four arrays are not vectors of one length and dtype.
        ValueRangeError: eps not a normal number > 0 of the dtype, momentum outside [0, 1],
            ``tracked`` outside [0, 2**63), ``ghost_batch`` < 2, NaN/inf in an array or a negative running variance.
    """

    mu: Vector
    var: Vector
    gamma: Vector
    beta: Vector
    eps: float = 1e-5
    momentum: float | None = 0.1
    unbiased: bool = True
    tracked: int = 0
    renorm: Renorm | None = None
    ghost_batch: int | None = None
    frozen: bool = False
    trainable: bool = True

    def __post_init__(self) -> None:
        arrays = [_check("Batchnorm1d", name, getattr(self, name), 1) for name in _BN_ARRAYS]
        if len({a.shape for a in arrays}) > 1:
            raise ShapeError("Batchnorm1d", self.mu.shape, self.gamma.shape,
                             f"mu, var, gamma and beta must have one length, got {[a.shape for a in arrays]}")
        _same_dtype("Batchnorm1d", *arrays)
        if not (math.isfinite(_num("Batchnorm1d", "eps", self.eps)) and self.eps > 0):
            raise ValueRangeError(f"Batchnorm1d.eps: must be a finite number > 0, got {self.eps!r}")
        dtype = arrays[0]._leaf.dtype
        tiny, top = _NORMAL.get(dtype, (0.0, math.inf))
        if not tiny <= self.eps <= top:  # eps is added in the layer's dtype: there it would be 0, subnormal or inf
            raise ValueRangeError(f"Batchnorm1d.eps: must be a normal {dtype} number (from {tiny:.4g} to {top:.4g}) "
                                  f"for the layer's {dtype} arrays, got {self.eps!r}")
        if self.momentum is not None and not 0.0 <= _num("Batchnorm1d", "momentum", self.momentum) <= 1.0:
            raise ValueRangeError(f"Batchnorm1d.momentum: must be in [0, 1] (weight of the new batch) or None "
                                  f"(a cumulative average), got {self.momentum!r}")
        if type(self.tracked) is not int:
            raise ArgumentError(f"Batchnorm1d.tracked: expected an int (batches averaged), got {self.tracked!r}")
        if not 0 <= self.tracked <= TRACKED_MAX:
            got = self.tracked if abs(self.tracked) < 10**30 else f"an int of {abs(self.tracked).bit_length()} bits"
            raise ValueRangeError(f"Batchnorm1d.tracked: must be >= 0 and < 2**63 (an int64 count), got {got}")
        if self.renorm is not None and not isinstance(self.renorm, Renorm):
            raise ArgumentError(f"Batchnorm1d.renorm: expected a lazybn.Renorm or None, got {self.renorm!r}")
        if self.ghost_batch is not None:
            if type(self.ghost_batch) is not int:
                raise ArgumentError(f"Batchnorm1d.ghost_batch: expected an int (rows per ghost batch) or None, "
                                    f"got {self.ghost_batch!r}")
            if self.ghost_batch < 2:
                raise ValueRangeError(f"Batchnorm1d.ghost_batch: a ghost batch needs at least 2 rows, got "
                                      f"{self.ghost_batch}")
            if self.renorm is not None:
                raise ArgumentError("Batchnorm1d: ghost batches and batch renormalisation cannot be combined")
        _flag("Batchnorm1d", "frozen", self.frozen)
        _flag("Batchnorm1d", "trainable", self.trainable)
        if self.frozen and (self.renorm is not None or self.ghost_batch is not None):
            raise ArgumentError("Batchnorm1d: a frozen layer normalises with its running statistics; it cannot "
                                "renormalise or use ghost batches, which need the batch's")
        # One pass over all four vectors (this runs on every training step); names the culprit on failure.
        if not np.isfinite(np.concatenate([a._leaf.array for a in arrays])).all():
            for name, a in zip(_BN_ARRAYS, arrays):
                _finite("Batchnorm1d", name, a)
        var = self.var._leaf.array
        if var.size and var.min() < 0:
            raise ValueRangeError("Batchnorm1d.var: a running variance is negative")

    @property
    def features(self) -> int:
        return self.mu.shape[0]


T = TypeVar("T", Batchnorm1d, Renorm)


def _unchecked(obj: T, **changes: object) -> T:
    """``obj`` with the fields ``changes``, made without its constructor's checks: for values taken
    from checked objects, or a traced body's stand-ins (see ``train_step``)."""
    new = object.__new__(type(obj))
    for name in obj.__dataclass_fields__:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


@final
@dataclass(frozen=True, slots=True)
class Activation:
    """An element-wise activation function (``f`` not an :class:`Act` is an ``ArgumentError``)."""

    f: Act

    def __post_init__(self) -> None:
        if not isinstance(self.f, Act):
            raise ArgumentError(f"Activation.f: expected a member of lazybn.Act, got {self.f!r}")


@final
@dataclass(frozen=True, slots=True)
class Dropout:
    """Inverted dropout with drop probability ``p`` in [0, 1) (a ``ValueRangeError`` outside it,
    an ``ArgumentError`` for what is not a number)."""

    p: float

    def __post_init__(self) -> None:
        if not 0.0 <= _num("Dropout", "p", self.p) < 1.0:
            raise ValueRangeError(f"Dropout.p: the drop probability must be in [0, 1), got {self.p!r}")


Layer = Linear | LinearNoBias | Batchnorm1d | Activation | Dropout


def check_layers(op: str, layers: object) -> None:
    """For untyped callers: ``layers`` is a sequence of lazybn layers (a typo'd network, or None,
    gets an error that says so instead of failing deep inside ``op``)."""
    if not isinstance(layers, Sequence) or isinstance(layers, str):
        raise ArgumentError(f"{op}: layers must be a list of lazybn layers, got {type(layers).__name__}")
    for i, layer in enumerate(layers):
        if not isinstance(layer, (Linear, LinearNoBias, Batchnorm1d, Activation, Dropout)):
            raise ArgumentError(f"{op}: layers[{i}] is {a_kind(layer)}, not a lazybn layer")


def nonfinite_weights(layers: Sequence[Layer]) -> str | None:
    """Which linear layer holds NaN or infinity in its weights or bias (a ``Linear`` does not look
    when it is built; a ``Batchnorm1d`` does), said for an error; None if none does."""
    for i, layer in enumerate(layers):
        if isinstance(layer, (Linear, LinearNoBias)):
            for name, a in (("w", layer.w), ("b", layer.b)) if isinstance(layer, Linear) else (("w", layer.w),):
                if not np.isfinite(a.array).all():
                    return f"layer {i} ({type(layer).__name__}) holds NaN or infinity in {name}"
    return None


def trains(layer: Layer) -> bool:
    """Whether the optimizers step ``layer``: it has parameters and ``trainable`` is set."""
    return isinstance(layer, (Linear, LinearNoBias, Batchnorm1d)) and layer.trainable


@final
@dataclass(frozen=True, slots=True)
class LinearGradients:
    """A :class:`Linear` layer's gradients: ``dw`` of ``w``'s shape, ``db`` of ``b``'s."""

    dw: Matrix
    db: Vector


@final
@dataclass(frozen=True, slots=True)
class LinearNoBiasGradients:
    """A :class:`LinearNoBias` layer's gradient ``dw``, of ``w``'s shape."""

    dw: Matrix


@final
@dataclass(frozen=True, slots=True)
class BN1:
    """What a batch-norm layer hands to the update: the batch statistics and the gradients.

    ``batch_var`` is the biased batch variance that normalised the batch; ``n`` the number of rows
    each statistic is of: the batch size, or with ghost batches the ghost batch's (whose
    statistics are then the ghost batches' averages). A frozen layer normalised with its running
    statistics, so those are what it hands over (and the update leaves them as they are).
    """

    batch_mu: Vector
    batch_var: Vector
    dgamma: Vector
    dbeta: Vector
    n: int


@final
@dataclass(frozen=True, slots=True)
class NoGrad:
    """A layer without parameters."""


Gradients = LinearGradients | LinearNoBiasGradients | BN1 | NoGrad
