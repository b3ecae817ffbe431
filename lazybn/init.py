"""Weight initialisers, the multilayer-perceptron builder, and a network's summary.

Every draw is made in float64 from a ``numpy.random.Generator`` and then cast to the requested
dtype, so a network is a deterministic function of its seed, and float32 and float64 networks
built from one seed hold the same numbers up to rounding.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import assert_never

import numpy as np
from numpy.typing import DTypeLike

from .array import Comp, Matrix, Vector
from .construct import matrix, ones, vector, zeros
from .errors import ArgumentError, ValueRangeError, is_count
from .layers import Act, Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, Renorm, check_layers
from .report import markdown_table


class Init(enum.Enum):
    """How weights and biases are drawn (std of the weights, then the biases).

    * ``haskell``: weights 0.01·N(0,1), biases N(0,1): the seed's ``genWeights``/``genBiases``.
    * ``small``: weights 0.01·N(0,1), zero biases.
    * ``normal``: weights N(0,1) (the "bad init" of the batch-norm experiments), zero biases.
    * ``xavier``: weights N(0, 2/(nin+nout)) (Glorot normal), zero biases.
    * ``he``: weights N(0, 2/nin) (Kaiming normal, for ReLU), zero biases.
    """

    haskell = "haskell"
    small = "small"
    normal = "normal"
    xavier = "xavier"
    he = "he"


def _count(name: str, n: object) -> int:
    if not is_count(n, 1):
        raise ValueRangeError(f"{name}: must be an integer >= 1, got {n!r}")
    return int(n)


def weight_std(init: Init, nin: int, nout: int) -> float:
    """The standard deviation ``weights`` draws with (before ``gain``)."""
    match init:
        case Init.haskell | Init.small:
            return 0.01
        case Init.normal:
            return 1.0
        case Init.xavier:
            return math.sqrt(2.0 / (nin + nout))
        case Init.he:
            return math.sqrt(2.0 / nin)


def weights(init: Init, nin: int, nout: int, rng: np.random.Generator, dtype: DTypeLike = np.float32,
            gain: float = 1.0, comp: Comp = Comp.Seq) -> Matrix:
    """A (nin, nout) weight matrix: ``gain * weight_std(init) * N(0, 1)``, drawn in float64, then cast.

    Raises:
        ValueRangeError: ``nin``/``nout`` not integers >= 1, or ``gain`` not finite > 0.
        DTypeError: ``dtype`` is not float32 or float64.
    """
    if not isinstance(init, Init):
        raise ArgumentError(f"weights: expected a member of lazybn.init.Init, got {init!r}")
    nin, nout = _count("weights.nin", nin), _count("weights.nout", nout)
    g: object = gain
    ok = isinstance(g, (int, float, np.integer, np.floating)) and not isinstance(g, bool)
    if not (ok and math.isfinite(gain) and gain > 0):
        raise ValueRangeError(f"weights.gain: must be a finite number > 0, got {gain!r}")
    draw = rng.standard_normal((nin, nout), dtype=np.float64)
    return matrix(draw * (gain * weight_std(init, nin, nout)), dtype=dtype, comp=comp)


def biases(init: Init, n: int, rng: np.random.Generator, dtype: DTypeLike = np.float32,
           comp: Comp = Comp.Seq) -> Vector:
    """A bias vector of length ``n``: N(0, 1) for ``Init.haskell`` (drawn from ``rng``), else zeros
    (``rng`` is not advanced).

    Raises:
        ValueRangeError: ``n`` is not an integer >= 1.
    """
    if not isinstance(init, Init):
        raise ArgumentError(f"biases: expected a member of lazybn.init.Init, got {init!r}")
    n = _count("biases.n", n)
    if init is Init.haskell:
        return vector(rng.standard_normal(n, dtype=np.float64), dtype=dtype, comp=comp)
    return zeros(n, dtype, comp)


def mlp(sizes: Sequence[int], *, batchnorm: bool, act: Act = Act.relu, init: Init = Init.he, seed: int = 0,
        dtype: DTypeLike = np.float32, dropout: float = 0.0, gain: float = 1.0, eps: float = 1e-5,
        momentum: float | None = 0.1, renorm: Renorm | None = None, comp: Comp = Comp.Seq) -> list[Layer]:
    """A multilayer perceptron: ``sizes[0]`` inputs, ``sizes[-1]`` outputs (logits).

    With ``batchnorm=True`` (the seed's BN network, no bias anywhere)::

        [LinearNoBias, Batchnorm1d, Activation, (Dropout), ..., LinearNoBias]

    with ``batchnorm=False``::

        [Linear, Activation, (Dropout), ..., Linear]

    Dropout layers appear only when ``dropout > 0``. Batch norm starts at mu=0, var=1, gamma=1,
    beta=0. All weight matrices are drawn first, in layer order, then the biases, so for one
    ``seed`` both variants get bit-identical weights and a comparison starts from the same point.

    Arguments:
        sizes: layer widths, at least two entries, each >= 1.
        batchnorm: build the batch-norm variant.
        act, init, gain: hidden activation, initialiser and weight gain.
        seed: seeds ``numpy.random.default_rng``; the network is a function of it.
        dtype, comp: float32 or float64, and the computation strategy of every array.
        dropout: drop probability after each hidden activation (0 = no Dropout layers).
        eps, momentum: batch norm's (PyTorch convention: momentum weights the new batch; None keeps a
            cumulative average).
        renorm: batch renormalisation's bounds for every batch-norm layer (None: batch norm).

    Raises:
        ValueRangeError: invalid sizes, seed, dropout or gain; invalid eps or momentum when the network
            has batch-norm layers (``batchnorm=True`` and at least one hidden layer).
        ArgumentError: ``act`` is not an :class:`Act` or ``init`` not an :class:`Init`; ``renorm``
            without ``batchnorm=True`` (a network without batch-norm layers has nothing to renormalise).
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueRangeError(f"mlp.sizes: need at least two sizes (inputs and outputs), got {sizes!r}")
    sizes = [_count(f"mlp.sizes[{i}]", n) for i, n in enumerate(sizes)]
    if not isinstance(act, Act):
        raise ArgumentError(f"mlp.act: expected a member of lazybn.Act, got {act!r}")
    if renorm is not None and not batchnorm:
        raise ArgumentError("mlp.renorm: batch renormalisation needs batch-norm layers; pass batchnorm=True, or "
                            "leave renorm at None")
    if not is_count(seed):  # numpy's own error for -1, and None would make a network of no seed
        raise ValueRangeError(f"mlp.seed: must be an integer >= 0 (the network is a function of it), got {seed!r}")
    rng = np.random.default_rng(seed)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    ws = [weights(init, nin, nout, rng, dtype, gain, comp) for nin, nout in pairs]
    bs = [] if batchnorm else [biases(init, nout, rng, dtype, comp) for _, nout in pairs]
    drop = Dropout(dropout)  # validates p even when it is 0
    hidden: list[Layer] = [Activation(act), drop] if drop.p > 0 else [Activation(act)]
    layers: list[Layer] = []
    for i, w in enumerate(ws):
        if batchnorm:
            layers.append(LinearNoBias(w))
        else:
            layers.append(Linear(w, bs[i]))
        if i == len(ws) - 1:
            break
        if batchnorm:
            n = w.shape[1]
            layers.append(Batchnorm1d(zeros(n, dtype, comp), ones(n, dtype, comp), ones(n, dtype, comp),
                                      zeros(n, dtype, comp), eps=eps, momentum=momentum, renorm=renorm))
        layers.extend(hidden)
    return layers


def summary(layers: Sequence[Layer]) -> str:
    """A network as a markdown table, one row per layer: its kind, output width, parameter
    count, whether the optimizers train it, and its settings; then the totals (parameters, and
    batch norm's running statistics, which are state, not parameters).

    Raises:
        ArgumentError: an element is not a lazybn layer.
    """
    check_layers("summary", layers)
    rows: list[dict[str, object]] = []
    width: object = "?"  # the input's width is unknown until a layer with weights fixes it
    total = trainable = stats = 0
    for i, layer in enumerate(layers):
        match layer:
            case Linear(w=w, b=b):
                width, n, notes = w.shape[1], math.prod(w.shape) + b.shape[0], f"w {w.shape[0]}x{w.shape[1]}, bias"
            case LinearNoBias(w=w):
                width, n, notes = w.shape[1], math.prod(w.shape), f"w {w.shape[0]}x{w.shape[1]}, no bias"
            case Batchnorm1d():
                width, n = layer.features, 2 * layer.features
                stats += 2 * layer.features
                variant = ("frozen (running statistics)" if layer.frozen else
                           f"renorm rmax {layer.renorm.rmax}, dmax {layer.renorm.dmax}" if layer.renorm else
                           f"ghost batches of {layer.ghost_batch}" if layer.ghost_batch else "batch statistics")
                momentum = "cumulative" if layer.momentum is None else f"momentum {layer.momentum:g}"
                notes = f"eps {layer.eps:g}, {momentum}, {variant}"
            case Activation(f=f):
                n, notes = 0, f.value
            case Dropout(p=p):
                n, notes = 0, f"p {p:g}"
            case _:
                assert_never(layer)
        trains = getattr(layer, "trainable", None)
        total += n
        trainable += n if trains else 0
        rows.append({"#": i, "layer": type(layer).__name__, "outputs": width, "parameters": n,
                     "trainable": "" if trains is None else "yes" if trains else "no", "settings": notes})
    table = markdown_table(rows) if rows else "(no layers)\n"
    return (f"{table}\nparameters: {total} ({trainable} trainable, {total - trainable} not); "
            f"batch norm's running statistics: {stats} values\n")
