"""The optimizers' hyperparameters: four frozen dataclasses, checked when they are made.

What they do to a network is :func:`lazybn.optim.update`'s business; this module only says
what each field means. Every optimizer has two parameter groups, as a PyTorch training loop
with two ``param_groups`` would: the linear layers' weights and biases, and batch norm's gamma
and beta, whose learning rate is ``lr * bn_lr_multiplier`` and whose weight decay is
``bn_weight_decay``.

Weight decay is an L2 penalty ``wd/2 * ||p||^2`` added to the loss. It is applied as PyTorch's
optimizers apply their ``weight_decay``: ``wd * p`` is added to the parameter's gradient before
anything else (so momentum and the moment averages see it), except in
``Adam(decoupled_weight_decay=True)``, which is AdamW (Loshchilov & Hutter): the parameter
shrinks by ``lr * wd * p`` beside the Adam step, and the moments see the plain gradient. For SGD
the two are the same. ``bn_weight_decay`` is 0 by default, unlike a single PyTorch group: decaying
gamma pulls the layer's output scale towards 0 while the layer itself stays scale-invariant, and
decaying beta pulls its shift towards 0, so common practice leaves both out. Set it equal to
``weight_decay`` for PyTorch's one-group behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, final, get_args

import numpy as np

from .errors import ArgumentError, ValueRangeError, as_float, is_real


def as_number(cls: str, name: str, x: object) -> float:
    """``x`` as a float if it is a number (not a bool), else a ``ValueRangeError`` naming ``cls.name``."""
    if not is_real(x):
        raise ValueRangeError(f"{cls}.{name}: expected a number, got {x!r}")
    return as_float(x, f"{cls}.{name}")


# finite and > 0 (or >= 0); the others in [0, 1) (_UNIT) or a bool (_FLAGS)
_LOWER = {"lr": ">", "eps": ">", "bn_lr_multiplier": ">=", "weight_decay": ">=", "bn_weight_decay": ">="}
_UNIT = ("beta", "beta1", "beta2", "rho")
_FLAGS = ("decoupled_weight_decay",)


def _validate(opt: Optimizer) -> None:
    """Check every hyperparameter of an optimizer by its field name."""
    cls = type(opt).__name__
    for f in fields(opt):
        x = getattr(opt, f.name)
        if f.name in _FLAGS:
            if not isinstance(x, bool):
                raise ValueRangeError(f"{cls}.{f.name}: expected True or False, got {x!r}")
            continue
        v = as_number(cls, f.name, x)
        low = _LOWER.get(f.name)
        if low is not None and not (math.isfinite(v) and (v > 0 or (low == ">=" and v == 0))):
            raise ValueRangeError(f"{cls}.{f.name}: must be a finite number {low} 0, got {x!r}")
        if f.name in _UNIT and not 0.0 <= v < 1.0:
            raise ValueRangeError(f"{cls}.{f.name}: must be in [0, 1), got {x!r}")


@final
@dataclass(frozen=True, slots=True)
class SGD:
    """Plain gradient descent: ``p <- p - lr * (g + wd * p)``.

    ``bn_lr_multiplier`` (in every optimizer) multiplies the learning rate of batch norm's gamma
    and beta only: it is lazybn's per-parameter-group learning rate. The seed's Haskell summed
    dgamma and dbeta over the batch (no 1/m) while the weights got mean-loss gradients, so its
    batch-norm parameters stepped batch-size times further than lazybn's mean-loss gradients
    would; ``SGD(lr=0.1, bn_lr_multiplier=1000.0)`` with batches of 1000 reproduces that run
    (so does Momentum; Adam and RMSProp are invariant to a gradient's scale, so there the
    multiplier just scales batch norm's step). 0 keeps gamma and beta: PyTorch's ``affine=False``
    (from 1 and 0), or with ``Batchnorm1d(frozen=True)`` Keras's ``trainable=False``.

    ``weight_decay`` (wd; every optimizer has it) is the L2 coefficient of the linear layers'
    weights and biases, ``bn_weight_decay`` that of gamma and beta (see the module doc).

    Raises:
        ValueRangeError: ``lr`` not finite > 0, or ``bn_lr_multiplier`` or a weight decay not finite >= 0.
    """

    lr: float
    bn_lr_multiplier: float = 1.0
    weight_decay: float = 0.0
    bn_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _validate(self)


@final
@dataclass(frozen=True, slots=True)
class Momentum:
    """Heavy-ball momentum, PyTorch's form: ``v <- beta * v + (g + wd * p); p <- p - lr * v`` (v starts at 0).

    Raises:
        ValueRangeError: ``lr``/``bn_lr_multiplier``/a weight decay not finite > 0 (>= 0), or
            ``beta`` outside [0, 1).
    """

    lr: float
    beta: float = 0.9
    bn_lr_multiplier: float = 1.0
    weight_decay: float = 0.0
    bn_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _validate(self)


@final
@dataclass(frozen=True, slots=True)
class Adam:
    """Adam with bias correction (Kingma & Ba, Algorithm 1), step t = state.step + 1::

        g <- g + wd p   (not with decoupled_weight_decay)
        m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
        p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
        p <- p - lr * wd * p   (only with decoupled_weight_decay: AdamW; both from the old p)

    Raises:
        ValueRangeError: ``lr``/``eps``/``bn_lr_multiplier``/a weight decay not finite > 0
            (>= 0), a beta outside [0, 1), or ``decoupled_weight_decay`` not a bool.
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    bn_lr_multiplier: float = 1.0
    weight_decay: float = 0.0
    bn_weight_decay: float = 0.0
    decoupled_weight_decay: bool = False

    def __post_init__(self) -> None:
        _validate(self)


@final
@dataclass(frozen=True, slots=True)
class RMSProp:
    """RMSProp, PyTorch's form (eps added after the square root), with ``g <- g + wd * p`` first::

        s <- rho s + (1 - rho) g^2;   p <- p - lr * g / (sqrt(s) + eps)

    Raises:
        ValueRangeError: ``lr``/``eps``/``bn_lr_multiplier``/a weight decay not finite > 0
            (>= 0), or ``rho`` outside [0, 1).
    """

    lr: float = 1e-3
    rho: float = 0.9
    eps: float = 1e-8
    bn_lr_multiplier: float = 1.0
    weight_decay: float = 0.0
    bn_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _validate(self)


Optimizer = SGD | Momentum | Adam | RMSProp
_OPTIMIZERS: tuple[type, ...] = get_args(Optimizer)  # looked up once: every training step checks


def require_optimizer(op: str, opt: object) -> None:
    """Refuse what is not an optimizer (untyped callers: a name such as "sgd")."""
    if not isinstance(opt, _OPTIMIZERS):
        raise ArgumentError(f"{op}: the optimizer must be an lb.SGD, Momentum, RMSProp or Adam, got {opt!r}")


def negligible_root(dtype: np.dtype[np.floating[Any]], eps: float, most: float) -> bool:
    """Whether a second moment below ``dtype``'s smallest normal number, times a correction of at
    most ``most``, has a square root below half an ulp of ``eps``: then ``sqrt(v) + eps`` is ``eps``
    whether v is stored or flushed to 0. Not so for a tiny eps (float32 Adam: eps below 1.2e-10):
    a gradient of 1e-20 has v = 1e-40 and steps by about 1, but by m / eps were v flushed."""
    info = np.finfo(dtype)
    return math.sqrt(float(info.tiny) * most) < eps * float(info.eps) / 4
