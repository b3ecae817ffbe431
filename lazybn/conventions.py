"""Converting batch norm's running statistics between lazybn's convention and Keras/Flax's, and
whole networks to and from PyTorch state dicts (:func:`to_torch`, :func:`from_torch`).

lazybn follows PyTorch: ``momentum`` m is the weight of the NEW batch,
``r <- (1 - m) r + m b``, and the running variance averages UNBIASED batch variances
(N/(N-1) times the biased one). Keras 3, tf-keras and Flax use a decay d = 1 - m (default
0.99), the weight of the OLD value, ``r <- d r + (1 - d) b``, and average BIASED variances.

Means are identical in both conventions. For variances, after k updates with batches of equal
size N from the same initial value v0 (behaviour 14 in docs/reliability.md)::

    r_torch - (1 - m)^k v0 = N/(N - 1) * (r_keras - (1 - m)^k v0)

because every blended-in batch variance differs by exactly N/(N-1) while the surviving share
of v0 is the same. :func:`to_keras` and :func:`from_keras` apply that identity; they are exact
only for equal batch sizes. With unequal sizes (a short last batch) the conversion is an
approximation: pass the typical N. A layer with ``unbiased=False`` already stores biased
variances, so only the momentum is converted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, assert_never, final

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .array import Vector
from .construct import matrix, vector
from .errors import ArgumentError, DTypeError, RankError, ShapeError, ValueRangeError, a_kind, is_count, is_real
from .layers import Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, check_layers

FloatArray = NDArray[np.floating[Any]]


def _unit_interval(name: str, x: object) -> float:
    if not is_real(x) or not 0.0 <= x <= 1.0:
        raise ValueRangeError(f"{name}: must be a number in [0, 1], got {x!r}")
    return float(x)


def momentum_to_keras(m: float) -> float:
    """lazybn/PyTorch momentum (weight of the new batch) -> Keras/Flax momentum (weight of the old).
    ``m`` outside [0, 1] is a ``ValueRangeError``.

    >>> momentum_to_keras(0.1)
    0.9
    """
    return 1.0 - _unit_interval("momentum_to_keras", m)


def momentum_from_keras(decay: float) -> float:
    """Keras/Flax momentum (weight of the old value, e.g. 0.99) -> lazybn/PyTorch momentum.
    ``decay`` outside [0, 1] is a ``ValueRangeError``.

    >>> round(momentum_from_keras(0.99), 12)
    0.01
    """
    return 1.0 - _unit_interval("momentum_from_keras", decay)


@final
@dataclass(frozen=True, slots=True)
class KerasBatchNorm:
    """A Keras ``BatchNormalization`` layer's weights and settings, as numpy arrays.

    ``momentum`` is Keras's (weight of the OLD moving value); ``moving_variance`` is biased.
    """

    gamma: FloatArray
    beta: FloatArray
    moving_mean: FloatArray
    moving_variance: FloatArray
    momentum: float = 0.99
    epsilon: float = 1e-3

    def __post_init__(self) -> None:
        shapes = set()
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.ndim != 1:
                raise RankError(f"KerasBatchNorm.{name}: expected a 1-d numpy array, got {type(a).__name__} "
                                f"of shape {getattr(a, 'shape', None)}")
            shapes.add(a.shape)
        if len(shapes) > 1:
            raise ShapeError("KerasBatchNorm", self.gamma.shape, self.moving_variance.shape,
                             f"all four arrays must have one length, got {sorted(shapes)}")
        _unit_interval("KerasBatchNorm.momentum", self.momentum)
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueRangeError(f"KerasBatchNorm.epsilon: must be a finite number > 0, got {self.epsilon!r}")


def _history(batch_size: int, steps: int, initial_var: float, where: str) -> tuple[int, int, float]:
    checks: tuple[tuple[str, object, int], ...] = (("batch_size", batch_size, 2), ("steps", steps, 0))
    for name, v, low in checks:
        if not is_count(v, low):
            raise ValueRangeError(f"{where}.{name}: must be an integer >= {low}, got {v!r}")
    if not (math.isfinite(initial_var) and initial_var >= 0):
        raise ValueRangeError(f"{where}.initial_var: must be a finite number >= 0, got {initial_var!r}")
    return int(batch_size), int(steps), float(initial_var)


def to_keras(layer: Batchnorm1d, batch_size: int, steps: int, initial_var: float = 1.0) -> KerasBatchNorm:
    """The Keras/Flax form of a lazybn batch-norm layer trained for ``steps`` batches of ``batch_size``.

    Arguments:
        layer: the lazybn layer (PyTorch convention).
        batch_size: N of every training batch (>= 2). Exact for equal N; approximate otherwise.
            A layer with ghost batches averages the ghost batches' variances, each made unbiased
            with G/(G - 1): its ``ghost_batch`` G takes N's place (Keras's ``virtual_batch_size``
            averages the same biased variances).
        steps: k, the number of running-statistics updates the layer has had.
        initial_var: the running variance before the first update (lazybn's default is 1).

    A layer trained with batch renormalisation converts as any other: its inference is batch
    norm's. Its ``renorm`` bounds are not carried over: Keras's ``renorm=True`` computes r and d
    from moving averages of its own (of the standard deviation, with ``renorm_momentum``), so
    training on in Keras would not continue lazybn's training.

    Returns:
        A :class:`KerasBatchNorm` with numpy arrays of the layer's dtype (computed in float64),
        momentum 1 - layer.momentum and epsilon = layer.eps (keep it: Keras's default 1e-3
        would change the outputs).

    Raises:
        ValueRangeError: ``batch_size`` < 2, ``steps`` < 0 or ``initial_var`` negative.
        ArgumentError: ``layer`` is not a Batchnorm1d (one layer, not a network), or it keeps a
            cumulative average (``momentum=None``), which no Keras momentum reproduces.
    """
    given: object = layer  # untyped callers: a whole network, say
    if not isinstance(given, Batchnorm1d):
        raise ArgumentError(f"to_keras: layer must be a Batchnorm1d (one layer), got {a_kind(given)}")
    n, k, v0 = _history(batch_size, steps, initial_var, "to_keras")
    if layer.momentum is None:
        raise ArgumentError("to_keras: the layer keeps a cumulative average (momentum None); Keras's moving "
                            "averages have a fixed momentum, so there is no Keras form")
    decay = momentum_to_keras(layer.momentum)
    if layer.ghost_batch is not None:  # the variances were made unbiased per ghost batch
        n = layer.ghost_batch
    var = layer.var.array.astype(np.float64)
    if layer.unbiased:
        c = decay**k * v0  # the share of the initial variance still in the running value
        var = c + (n - 1) / n * (var - c)
    dt = layer.var.dtype
    return KerasBatchNorm(layer.gamma.array.copy(), layer.beta.array.copy(), layer.mu.array.copy(),
                          var.astype(dt), decay, float(layer.eps))


def from_keras(k: KerasBatchNorm, batch_size: int, steps: int, initial_var: float = 1.0, *,
               unbiased: bool = True, dtype: DTypeLike | None = None) -> Batchnorm1d:
    """A lazybn batch-norm layer (PyTorch convention) from Keras/Flax weights.

    Arguments:
        k: the Keras layer's weights and settings.
        batch_size, steps, initial_var: the training history, as for :func:`to_keras` (a Keras
            layer with a ``virtual_batch_size`` was trained on batches of that size).
        unbiased: make the running variance unbiased (lazybn's default); False keeps Keras's
            biased variance and converts the momentum only.
        dtype: float32 or float64; None = the dtype of ``k.gamma`` (float32 if it is neither).

    Returns:
        A :class:`~lazybn.layers.Batchnorm1d` with momentum 1 - k.momentum and eps = k.epsilon.

    Raises:
        ValueRangeError: invalid history, or a moving variance so far below decay^k · initial_var
            (which no such history can produce) that the running variance would be negative.
        ArgumentError: ``k`` is not a :class:`KerasBatchNorm`.
    """
    given: object = k  # untyped callers: a lazybn layer, say
    if not isinstance(given, KerasBatchNorm):
        raise ArgumentError(f"from_keras: k must be a KerasBatchNorm (lb.KerasBatchNorm(gamma, beta, moving_mean, "
                            f"moving_variance, momentum, epsilon)), got {a_kind(given)}")
    n, steps, v0 = _history(batch_size, steps, initial_var, "from_keras")
    c = k.momentum**steps * v0
    mv = k.moving_variance.astype(np.float64)
    var = c + n / (n - 1) * (mv - c) if unbiased else mv
    if (var < 0).any() or np.isnan(var).any():
        raise ValueRangeError(f"from_keras: moving_variance {mv[~(var >= 0)][:3]} gives a negative running "
                              f"variance; {steps} steps from initial_var {v0!r} leave at least momentum^steps * "
                              f"initial_var = {c!r}: steps or initial_var do not match this layer's history")
    if dtype is None:
        dtype = k.gamma.dtype if k.gamma.dtype in (np.float32, np.float64) else np.float32
    return Batchnorm1d(vector(k.moving_mean, dtype), vector(var, dtype), vector(k.gamma, dtype),
                       vector(k.beta, dtype), eps=float(k.epsilon), momentum=momentum_from_keras(k.momentum),
                       unbiased=bool(unbiased))


def to_torch(layers: Sequence[Layer]) -> dict[str, NDArray[np.generic]]:
    """The state dict of the ``torch.nn.Sequential`` that has one module per layer, as numpy arrays.

    Layer ``i`` maps to module ``i``: ``Linear`` to ``nn.Linear(n_in, n_out)``, ``LinearNoBias``
    to ``nn.Linear(n_in, n_out, bias=False)`` (torch's weight is (outputs, inputs): ``w``
    transposed), ``Batchnorm1d`` to ``nn.BatchNorm1d(features, eps=layer.eps,
    momentum=layer.momentum)`` (the same conventions: momentum weights the new batch, the running
    variance is unbiased; ``num_batches_tracked`` is the layer's ``tracked``), ``Activation`` to
    ``nn.ReLU``/``nn.Sigmoid``/``nn.Tanh``/``nn.Identity`` and ``Dropout`` to ``nn.Dropout(p)``,
    which have no state. ``model.load_state_dict({k: torch.from_numpy(v) for k, v in
    to_torch(layers).items()})`` then loads it. A layer trained with batch renormalisation or
    ghost batches converts as batch norm, whose inference it shares; a frozen layer is a
    ``BatchNorm1d`` that a torch training loop keeps in eval mode, and a layer with
    ``trainable=False`` a module whose parameters have ``requires_grad_(False)`` (neither is in a
    state dict).

    Raises:
        ArgumentError: a batch-norm layer with ``unbiased=False`` (its running variance averages
            biased variances; torch's averages unbiased ones, see :func:`to_keras` for the factor).
    """
    check_layers("to_torch", layers)
    state: dict[str, NDArray[np.generic]] = {}
    for i, layer in enumerate(layers):
        match layer:
            case Linear(w=w, b=b):
                state[f"{i}.weight"], state[f"{i}.bias"] = w.array.T.copy(), b.array.copy()
            case LinearNoBias(w=w):
                state[f"{i}.weight"] = w.array.T.copy()
            case Batchnorm1d():
                if not layer.unbiased:
                    raise ArgumentError(f"to_torch: layer {i} (Batchnorm1d) keeps a biased running variance "
                                        "(unbiased=False); torch's running_var averages unbiased variances. For "
                                        "inference alone the values serve as they are: convert "
                                        "dataclasses.replace(layer, unbiased=True); to train on in torch, the batch "
                                        "variances' share needs the factor N/(N-1) first (this module's docstring)")
                for key, a in (("weight", layer.gamma), ("bias", layer.beta), ("running_mean", layer.mu),
                               ("running_var", layer.var)):
                    state[f"{i}.{key}"] = a.array.copy()
                state[f"{i}.num_batches_tracked"] = np.array(layer.tracked, np.int64)
            case Activation() | Dropout():
                pass
            case _:
                assert_never(layer)
    return state


_BN_MODULES = {  # what a batch-norm key missing from a torch state says about the module
    "weight": "; a BatchNorm1d(affine=False) has no weight and bias: lazybn's Batchnorm1d always has gamma and "
              "beta (add weight 1 and bias 0 to the state and keep them fixed with trainable=False)",
    "running_mean": "; a BatchNorm1d(track_running_stats=False) normalises with batch statistics in eval mode "
                    "too, which lazybn's inference (running statistics) cannot represent",
}


def from_torch(state: Mapping[str, ArrayLike], like: Sequence[Layer]) -> list[Layer]:
    """The network ``like`` with its parameters and running statistics taken from the state dict of
    the matching ``torch.nn.Sequential`` (see :func:`to_torch` for the mapping), e.g.
    ``from_torch(model.state_dict(), like=lb.mlp(sizes, batchnorm=True))`` for a model whose linear
    layers in front of batch norm have ``bias=False`` (``mlp`` makes them ``LinearNoBias``; for
    torch's default ``bias=True`` build the template with ``Linear`` layers).

    ``like`` gives what a state dict does not hold: the layer kinds, activations, dtype, ``eps``
    and ``momentum`` (set them to the torch modules'), ``frozen`` and ``trainable`` (a module's
    eval mode and its parameters' ``requires_grad``). Every array is copied into ``like``'s
    dtype. A batch-norm layer's ``tracked`` takes ``num_batches_tracked`` when it keeps a
    cumulative average (``momentum=None``, torch's ``momentum=None``); with a momentum the count
    is unused and may be absent.

    Raises:
        ArgumentError: a key ``like`` needs is missing (the message says which torch modules have no
            such key: ``affine=False``, ``track_running_stats=False``), the state has keys it has no
            layer for, a batch-norm layer of ``like`` has ``unbiased=False``, or ``like`` is not a
            list of lazybn layers.
        ShapeError: an array's shape is not what ``like``'s layer needs.
        DTypeError: an array is not numeric (or not an array: ragged lists).
        ValueRangeError: an array holds NaN or infinity (or a running variance is negative).
    """
    check_layers("from_torch", like)
    used: set[str] = set()

    def take(i: int, layer: Layer, key: str, shape: tuple[int, ...]) -> NDArray[Any]:
        name = f"{i}.{key}"
        where = f"from_torch: layer {i} ({type(layer).__name__}) needs {name!r}"
        if name not in state:
            raise ArgumentError(f"{where}, which the state does not have (its keys: {sorted(state)[:8]})"
                                + (_BN_MODULES.get(key, "") if isinstance(layer, Batchnorm1d) else ""))
        used.add(name)
        try:
            a = np.asarray(state[name])
        except (TypeError, ValueError, RuntimeError) as exc:  # a bfloat16 tensor, one that requires grad, ragged lists
            raise DTypeError(f"{where} as numbers ({exc}); convert the state first, e.g. "
                             "{k: v.detach().double() for k, v in model.state_dict().items()}") from None
        if a.dtype.kind not in "fiu":
            raise DTypeError(f"{where} as numbers, got dtype {a.dtype}")
        if a.shape != shape:
            raise ShapeError("from_torch", a.shape, shape, f"{name!r} must have shape {shape}"
                             + (" (torch stores a weight as (outputs, inputs))" if key == "weight" and len(shape) == 2
                                else ""))
        if not np.isfinite(a).all():
            raise ValueRangeError(f"{where}: {name!r} contains NaN or infinity")
        return a

    out: list[Layer] = []
    for i, layer in enumerate(like):
        match layer:
            case Linear(w=w, b=b):
                out.append(replace(layer, w=matrix(take(i, layer, "weight", w.shape[::-1]).T, w.dtype, w.comp),
                                   b=vector(take(i, layer, "bias", b.shape), b.dtype, b.comp)))
            case LinearNoBias(w=w):
                out.append(replace(layer, w=matrix(take(i, layer, "weight", w.shape[::-1]).T, w.dtype, w.comp)))
            case Batchnorm1d():
                def stat(key: str, v: Vector) -> Vector:
                    return vector(take(i, layer, key, v.shape), v.dtype, v.comp)

                if not layer.unbiased:
                    raise ArgumentError(f"from_torch: layer {i} (Batchnorm1d) keeps a biased running variance "
                                        "(unbiased=False); torch's running_var averages unbiased variances")
                cumulative = layer.momentum is None  # else the count is torch's only (pre-0.4.1 states lack it)
                tracked = int(take(i, layer, "num_batches_tracked", ())) if cumulative else layer.tracked
                used.add(f"{i}.num_batches_tracked")
                out.append(replace(layer, gamma=stat("weight", layer.gamma), beta=stat("bias", layer.beta),
                                   mu=stat("running_mean", layer.mu), var=stat("running_var", layer.var),
                                   tracked=tracked))
            case Activation() | Dropout():
                out.append(layer)
            case _:
                assert_never(layer)
    extra = sorted(set(state) - used)
    if extra:
        biased = [i for i, layer in enumerate(like) if isinstance(layer, LinearNoBias) and f"{i}.bias" in state]
        raise ArgumentError(f"from_torch: the state has keys no layer of the template takes: {extra[:8]}; the "
                            "template must have one layer per module of the torch Sequential" + (
                                f" (layers {biased} are LinearNoBias, but their modules have a bias, torch's default: "
                                "make them Linear, or the modules bias=False)" if biased else ""))
    return out
