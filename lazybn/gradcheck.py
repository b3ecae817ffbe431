"""Check a network's gradients against central finite differences, on your own network and batch.

:func:`gradcheck` runs the training pass (batch statistics, the key's dropout masks) once for
its gradients and then, for a sample of entries of every parameter and of the input, twice more
with that entry moved by ``±step``: the slope of the mean cross-entropy between the two is the
numerical derivative. Each array's error is the largest difference between the two gradients
over its checked entries, relative to the largest numerical derivative among them (or 1e-8).
Correct gradients give errors of about 1e-9 in float64; a dropped term gives errors near 1.

Batch renormalisation treats its r and d as constants (the paper's stop-gradient), so the
gradient that flows back past a renormalising layer is not the loss's derivative, and the
arrays before it show errors far above rounding; gamma, beta and the later layers do not.
Where the loss has a kink within ``step`` of the point (a ReLU input at 0, a clip of batch
renormalisation at its bound) the difference quotient straddles it and disagrees with either
one-sided derivative; draw another batch or key if one entry stands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, final

import numpy as np

from .array import Matrix
from .construct import matrix, vector
from .errors import DTypeError, ValueRangeError
from .layers import Layer, trains
from .network import _pass, _train_pass, check_batch_values, mean_loss
from .optim import param_grads, parameters


@final
@dataclass(frozen=True, slots=True)
class GradError:
    """How far one array's gradient is from finite differences: ``layer`` is the layer's index
    (None for the input), ``name`` its field (``w``, ``b``, ``gamma``, ``beta``; ``x`` for the input)."""

    layer: int | None
    name: str
    error: float
    checked: int


def gradcheck(layers: Sequence[Layer], x: Matrix, targets: Matrix, *, key: int = 0, step: float = 1e-6,
              entries: int = 20, seed: int = 0) -> list[GradError]:
    """The gradient errors of every parameter of ``layers`` and of the input ``x``, one per array,
    in layer order (the input last). A layer with ``trainable=False`` has no gradient to check.

    Arguments:
        layers, x, targets: a float64 network, a batch and its one-hot targets (as for ``train_step``).
        key: the dropout key of the training pass.
        step: the finite-difference step (absolute).
        entries: how many entries of each array to check, drawn at random with ``seed`` (all of
            them when the array has no more).

    Raises:
        DTypeError: the batch is not float64 (finite differences in float32 measure rounding).
        ValueRangeError: ``step`` not finite > 0 or ``entries`` < 1.
        The training pass's errors for a batch that does not fit the network.
    """
    check_batch_values("gradcheck", x, targets, layers)  # matrices of one dtype, finite, probability targets
    if x.dtype != np.float64:
        raise DTypeError(f"gradcheck: finite differences need float64, got a {x.dtype} batch; take the network "
                         "to float64 (lb.to_dtype(layers, np.float64)) and pass lb.matrix(x, np.float64)")
    if not (np.isfinite(step) and step > 0):
        raise ValueRangeError(f"gradcheck.step: must be a finite number > 0, got {step!r}")
    if type(entries) is not int or entries < 1:
        raise ValueRangeError(f"gradcheck.entries: must be an integer >= 1, got {entries!r}")
    layers = list(layers)
    dx, _, grads = _pass(x, targets, layers, key)
    rng = np.random.default_rng(seed)

    def loss(net: list[Layer], inp: Matrix) -> float:
        return mean_loss(_train_pass(inp, targets, net, key, input_grad=False)[2])

    def check(where: int | None, name: str, at: np.ndarray[Any, Any], analytic: np.ndarray[Any, Any],
              loss_at: Any) -> GradError:
        flat = rng.choice(at.size, min(entries, at.size), replace=False) if at.size else np.zeros(0, np.int64)
        numeric = np.empty(flat.size)
        for k, i in enumerate(flat):
            plus, minus = at.copy(), at.copy()
            plus.flat[i] += step
            minus.flat[i] -= step
            numeric[k] = (loss_at(plus) - loss_at(minus)) / (plus.flat[i] - minus.flat[i])
        got = analytic.ravel()[flat]
        scale = max(float(np.abs(numeric).max(initial=0.0)), 1e-8)
        return GradError(where, name, float(np.abs(got - numeric).max(initial=0.0)) / scale, int(flat.size))

    out = []
    for i, (layer, g) in enumerate(zip(layers, grads)):
        if not trains(layer):  # no parameters, or trainable=False: no gradient is computed
            continue
        for (name, p), dp in zip(parameters(layer), param_grads(i, layer, g)):
            def at_value(v: np.ndarray[Any, Any], i: int = i, name: str = name) -> float:
                new: dict[str, Any] = {name: matrix(v, np.float64) if v.ndim == 2 else vector(v, np.float64)}
                return loss([replace(lay, **new) if k == i else lay for k, lay in enumerate(layers)], x)

            out.append(check(i, name, p.array, dp.array, at_value))
    out.append(check(None, "x", x.array, dx.array, lambda v: loss(layers, matrix(v, np.float64))))
    return out
