"""What a replay's signature sees of a network: the layers without the values that change from
step to step, so that a training loop replays its step instead of tracing it again.

A cumulative average's count (``Batchnorm1d.tracked``) and batch renormalisation's bounds
(``Renorm.rmax``, ``dmax``) change every step; :func:`steady` takes them out of the layers (the
count as the running statistics' weights, the bounds as values handed to the replay) and
:func:`restored` puts them back in the layers a replay returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

from .batchnorm import running_weights
from .layers import Batchnorm1d, Layer, Renorm, _unchecked, one_more

Bounds = tuple[tuple[float | None, float | None], ...]  # (rmax, dmax) of each renormalising layer, in order


_PATTERNS: dict[tuple[bool, bool], Renorm] = {}


def pattern(renorm: Renorm | None) -> Renorm | None:
    """What a replay's signature keeps of renormalisation bounds: which of them are set."""
    if renorm is None:
        return None
    key = (renorm.rmax is not None, renorm.dmax is not None)
    got = _PATTERNS.get(key)
    if got is None:
        got = _PATTERNS[key] = Renorm(1.0 if key[0] else None, 0.0 if key[1] else None)
    return got


def cumulative(layer: Layer) -> TypeGuard[Batchnorm1d]:
    """A layer whose running statistics are a cumulative average that a step extends."""
    return isinstance(layer, Batchnorm1d) and layer.momentum is None and not layer.frozen


def renormalises(layer: Layer) -> TypeGuard[Batchnorm1d]:
    return isinstance(layer, Batchnorm1d) and layer.renorm is not None


def bounded(layers: tuple[Layer, ...], bounds: Bounds) -> tuple[Layer, ...]:
    """The renormalising layers with their bounds taken from ``bounds``, in order (in a trace, the
    dynamic values' stand-ins: the checks of ``Renorm`` ran on the layers the caller was given)."""
    given = iter(bounds)
    return tuple(_unchecked(layer, renorm=_unchecked(layer.renorm, **dict(zip(("rmax", "dmax"), next(given)))))
                 if renormalises(layer) and layer.renorm is not None else layer for layer in layers)


def steady(layers: Sequence[Layer]) -> tuple[tuple[Layer, ...], tuple[tuple[float, float], ...], Bounds]:
    """The layers as a replay's signature sees them, without the values that change from step to
    step: a cumulative average's count (0, with its :func:`running_weights` returned in order) and
    batch renormalisation's bounds (which of them are set, with the bounds returned in order: they
    reach the replay as dynamic values, so a ramp traces nothing new)."""
    weights: list[tuple[float, float]] = []
    bounds: list[tuple[float | None, float | None]] = []
    bare: list[Layer] = []
    for layer in layers:
        if isinstance(layer, Batchnorm1d) and (cumulative(layer) or layer.renorm is not None):
            if cumulative(layer):
                weights.append(running_weights(layer))
            if layer.renorm is not None:
                bounds.append((layer.renorm.rmax, layer.renorm.dmax))
            layer = _unchecked(layer, tracked=0, renorm=pattern(layer.renorm))
        bare.append(layer)
    return tuple(bare), tuple(weights), tuple(bounds)


def restored(new: Layer, old: Layer, counted: bool) -> Layer:
    """A layer of a replay's result with what :func:`steady` took out of ``old`` put back: its
    renormalisation bounds and its cumulative count, one more if the replay ``counted`` a batch
    into the running statistics (a training step) and the layer keeps a cumulative average."""
    if not isinstance(new, Batchnorm1d) or not isinstance(old, Batchnorm1d):
        return new
    return _unchecked(new, tracked=one_more(old.tracked) if counted and cumulative(old) else old.tracked, renorm=old.renorm)
