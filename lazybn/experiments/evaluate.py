"""``lazybn eval``: the accuracy of saved networks on MNIST, at inference (batch norm with its
running statistics), as they are and with batch norm folded into the linear layers
(``lb.fold_batchnorm``), how far the two networks' logits are apart, and the mean cross-entropy.

Each file must hold a network of 784 inputs and 10 outputs. Its inputs are the pixels scaled as
``--pixels`` says, else as the preset named in the file's metadata (``lazybn train`` records it),
in the network's dtype. Every file is loaded and checked before MNIST is: a file that cannot be
read, a network of other sizes, or one without a known preset and no ``--pixels`` is an error
before anything is evaluated. Nothing is written.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, final

import numpy as np
from numpy.typing import NDArray

from ..construct import matrix
from ..data import load_mnist_split
from ..errors import ArgumentError, LazybnError, NumericalError, PersistenceError
from ..fold import fold_batchnorm
from ..layers import Batchnorm1d, Layer, Linear, LinearNoBias
from ..loss import label_losses
from ..network import logits
from ..persist import Saved, load
from ..preprocess import Pixels, prepare
from ..train import batches
from .common import add_blas_threads, add_data_dir, progress
from .train_settings import PRESETS, SIZES

INPUTS, CLASSES = SIZES[0], SIZES[-1]
BATCH = 1000  # rows per inference call


@final
@dataclass(frozen=True, slots=True)
class Evaluand:
    """A saved network ready to evaluate: its layers, their folded version and its inputs' scaling."""

    path: str
    layers: list[Layer]
    folded: list[Layer]
    pixels: Pixels
    dtype: np.dtype[Any]
    epoch: str  # from the metadata, "-" if none


def _sizes(layers: list[Layer]) -> tuple[int, int, np.dtype[Any]] | None:
    """(inputs, outputs, dtype) of the layers holding parameters; None if no layer holds any."""
    shapes = [(layer.w.shape[0], layer.w.shape[1], layer.w.dtype) if isinstance(layer, (Linear, LinearNoBias))
              else (layer.features, layer.features, layer.mu.dtype)
              for layer in layers if isinstance(layer, (Linear, LinearNoBias, Batchnorm1d))]
    return (shapes[0][0], shapes[-1][1], shapes[0][2]) if shapes else None


def checked(path: str, saved: Saved, pixels: Pixels | None) -> Evaluand:
    """``saved`` (loaded from ``path``) as ``lazybn eval`` runs it, with ``pixels`` or its preset's.

    Raises:
        ArgumentError: not a network of 784 inputs and 10 outputs, or no ``pixels`` and no known preset.
        NumericalError, ShapeError, DTypeError: ``fold_batchnorm``'s, the message prefixed with ``path``.
    """
    sizes = _sizes(saved.layers)
    if sizes is None or sizes[:2] != (INPUTS, CLASSES):
        has = "has no layer with parameters" if sizes is None else f"takes {sizes[0]} inputs and gives {sizes[1]} outputs"
        raise ArgumentError(f"{path}: the network {has}; lazybn eval needs {INPUTS} inputs (MNIST's pixels) and "
                            f"{CLASSES} outputs (its classes)")
    if pixels is None:
        preset = saved.meta.get("preset")
        if preset is None:
            raise ArgumentError(f"{path}: saved without a preset: pass --pixels (unit, centered or standard)")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ArgumentError(f"{path}: saved with the preset {preset!r}, which this lazybn does not know "
                                f"({', '.join(sorted(PRESETS))}): pass --pixels")
        pixels = PRESETS[preset].pixels
    try:
        folded = fold_batchnorm(saved.layers)
    except LazybnError as exc:  # the library's own error, naming the file
        exc.args = (f"{path}: {exc}",)
        raise
    epoch = saved.meta.get("epoch")
    return Evaluand(path, saved.layers, folded, pixels, sizes[2], "-" if epoch is None else str(epoch))


def evaluand(path: str, pixels: Pixels | None) -> Evaluand:
    """The network saved at ``path``, loaded and :func:`checked`. A file that cannot be read (missing,
    unreadable, corrupt, not a lazybn network) is a :class:`PersistenceError` naming it."""
    try:
        saved = load(path)
    except OSError as exc:
        raise PersistenceError(f"{path}: {exc.strerror or exc}") from None
    return checked(path, saved, pixels)


def network_logits(e: Evaluand, x: NDArray[np.floating[Any]], folded: bool) -> NDArray[np.floating[Any]]:
    """The logits of ``e``'s network (or its folded version) for the rows of ``x``, at inference.

    Raises:
        NumericalError: an output is NaN or infinity (the network overflows), naming the file.
    """
    layers = e.folded if folded else e.layers
    parts = []
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, as an error
        for idx in batches(x.shape[0], BATCH, None):
            parts.append(logits(layers, matrix(x[idx[0]: idx[-1] + 1])).array)  # consecutive rows: one copy
    out = np.concatenate(parts)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        which = "once batch norm is folded, " if folded else ""
        raise NumericalError(f"{e.path}: {which}the network's outputs for row {int(np.argmax(bad))} are not finite "
                             "(they overflow)")
    return out


def per_class(predicted: NDArray[np.intp], labels: NDArray[np.integer[Any]]) -> list[float | None]:
    """Each class's accuracy (None for a class without samples)."""
    return [float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else None for k in range(CLASSES)]


def add_eval_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="accuracy of saved networks (.npz) on MNIST, with batch norm as trained and folded",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE.npz", help="networks saved by lazybn train or lb.save")
    p.add_argument("--pixels", choices=[m.value for m in Pixels],
                   help="scaling of the pixels: unit x/255, centered x/255-0.5, standard (x/255-0.1307)/0.3081 "
                        "(default: that of the preset in the file's metadata)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="the MNIST split (default: test)")
    p.add_argument("--per-class", action="store_true", help="also each class's accuracy, for every file")
    add_data_dir(p)
    p.add_argument("--no-progress", action="store_true", help="no messages while MNIST is fetched")
    add_blas_threads(p)
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    pixels = None if args.pixels is None else Pixels(args.pixels)
    nets = [evaluand(path, pixels) for path in args.files]  # every file, before MNIST is loaded
    data, source = load_mnist_split(args.split, args.data_dir, progress=progress(args))  # only that split's files
    print(f"lazybn eval: MNIST {args.split} split, {len(data.labels)} samples ({source}); batch norm with its "
          "running statistics")
    width = max(len("file"), *(len(e.path) for e in nets))
    print(f"{'file':<{width}} {'epoch':>5} {'pixels':>8} {'accuracy':>8} {'folded':>8} {'max diff':>8} {'loss':>7}")
    inputs: dict[tuple[Pixels, np.dtype[Any]], NDArray[np.floating[Any]]] = {}
    for e in nets:
        x = inputs.get((e.pixels, e.dtype))
        if x is None:
            x = inputs[e.pixels, e.dtype] = prepare(data.images, e.pixels, e.dtype)
        out, folded = network_logits(e, x, folded=False), network_logits(e, x, folded=True)
        predicted = np.argmax(out, axis=1)
        acc, acc_folded = (float(np.mean(np.argmax(o, axis=1) == data.labels)) for o in (out, folded))
        top = float(np.max(np.abs(out.astype(np.float64))))
        diff = float(np.max(np.abs(out.astype(np.float64) - folded.astype(np.float64))))
        loss = math.fsum(label_losses(out, data.labels).tolist()) / len(data.labels)
        print(f"{e.path:<{width}} {e.epoch:>5} {e.pixels.value:>8} {100 * acc:>7.2f}% {100 * acc_folded:>7.2f}% "
              f"{diff / top if top > 0 else diff:>8.1e} {loss:>7.4f}", flush=True)
        if args.per_class:
            print("  per class (%): " + "  ".join(f"{k}: " + ("-" if a is None else f"{100 * a:.2f}")
                                                 for k, a in enumerate(per_class(predicted, data.labels))))
    print("max diff: the largest |difference| between the logits of the network and of its folded version, "
          "relative to its largest |logit|; loss: the network's mean cross-entropy of the labels")
    return 0
