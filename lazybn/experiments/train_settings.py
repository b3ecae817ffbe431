"""The settings of ``lazybn train``: the two networks it compares (784-300-50-10 with and without
batch norm, from the same initial weights), its presets and the optimizer each network gets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, final

import numpy as np

from ..array import Comp
from ..init import Init, mlp
from ..layers import Batchnorm1d, Layer, Renorm
from ..optim import SGD, Adam, Momentum, Optimizer, RMSProp
from ..preprocess import Pixels
from .runner import Schedule

SIZES = (784, 300, 50, 10)


@final
@dataclass(frozen=True, slots=True)
class Settings:
    epochs: int = 10
    batch_size: int = 100
    lr: float = 0.1
    optimizer: Literal["sgd", "momentum", "adam", "adamw", "rmsprop"] = "sgd"  # adamw: Adam, decoupled weight decay
    schedule: Schedule = Schedule.constant
    init: Init = Init.small
    pixels: Pixels = Pixels.standard
    eps: float = 1e-5
    momentum: float | None = 0.1  # batch norm running-statistics momentum (weight of the new batch); None: cumulative
    unbiased: bool = True
    renorm: Renorm | None = None  # batch renormalisation's bounds
    renorm_ramp: tuple[int, int, int] | None = None  # (start, rmax steps, dmax steps) of the bounds' ramp
    ghost_batch: int | None = None  # rows per ghost batch
    bn_lr_multiplier: float = 1.0
    weight_decay: float = 0.0  # L2 coefficient of the linear layers' weights and biases
    bn_weight_decay: float = 0.0  # that of batch norm's gamma and beta
    shuffle: Literal["epoch", "once", "none"] = "epoch"
    dtype: Literal["float32", "float64"] = "float32"
    comp: Comp = Comp.Seq


PRESETS: dict[str, Settings] = {
    "default": Settings(),
    "haskell": Settings(lr=0.1, batch_size=1000, optimizer="sgd", init=Init.haskell, pixels=Pixels.centered,
                        eps=1e-12, unbiased=False, shuffle="once"),
    "article": Settings(lr=0.01, batch_size=100, optimizer="sgd", init=Init.haskell, pixels=Pixels.centered,
                        eps=1e-12, unbiased=False, shuffle="once"),
}

REFERENCE = {
    "haskell": "the Haskell project reports 98.1% (batch norm) vs 85.8% (no batch norm) validation accuracy "
               "after 10 epochs",
    "article": "the article reports about 98% in ten epochs with batch norm, while the network without it "
               "struggles to get there in fifty",
}


def make_optimizer(s: Settings, bn: bool) -> Optimizer:
    mult = s.bn_lr_multiplier if bn else 1.0
    decay = dict(weight_decay=s.weight_decay, bn_weight_decay=s.bn_weight_decay)
    match s.optimizer:
        case "sgd":
            return SGD(s.lr, bn_lr_multiplier=mult, **decay)
        case "momentum":
            return Momentum(s.lr, bn_lr_multiplier=mult, **decay)
        case "adam" | "adamw":
            return Adam(s.lr, bn_lr_multiplier=mult, decoupled_weight_decay=s.optimizer == "adamw", **decay)
        case "rmsprop":
            return RMSProp(s.lr, bn_lr_multiplier=mult, **decay)


def networks(s: Settings, seed: int) -> tuple[list[Layer], list[Layer]]:
    """The batch-norm and the plain network, with bit-identical initial weight matrices."""
    kw: dict[str, Any] = dict(init=s.init, seed=seed, dtype=np.dtype(s.dtype), eps=s.eps, momentum=s.momentum,
                              comp=s.comp)
    bn = mlp(SIZES, batchnorm=True, renorm=s.renorm, **kw)
    bn = [replace(layer, unbiased=s.unbiased, ghost_batch=s.ghost_batch) if isinstance(layer, Batchnorm1d) else layer
          for layer in bn]
    return bn, mlp(SIZES, batchnorm=False, **kw)
