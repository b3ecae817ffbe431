"""A network in another float dtype: ``to_dtype(layers, np.float64)``.

Every parameter and running statistic is converted as numpy's ``astype`` converts it (rounded to
nearest for float64 to float32, exact the other way), each array keeping its computation strategy
(:class:`~lazybn.array.Comp`); every other field (``eps``, ``momentum``, ``tracked``, the flags) is
kept. A float32 network taken to float64 and back is the same network, bit for bit. The layers
are frozen, so the network given is left as it is; an array that already holds the dtype is
shared (arrays are read-only), not copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, assert_never

import numpy as np
from numpy.typing import DTypeLike

from .array import _FLOATS, Manifest
from .errors import DTypeError, ValueRangeError
from .layers import Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, check_layers


def _float_dtype(dtype: DTypeLike) -> np.dtype[np.floating[Any]]:
    given: object = dtype  # untyped callers: np.dtype(None) is float64, and a dtype equals None
    try:
        dt = None if given is None else np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    for f in _FLOATS:
        if dt is not None and dt == f:
            return f
    raise DTypeError(f"to_dtype: dtype must be float32 or float64 (lazybn computes in those), got {dtype!r}")


def _cast(i: int, layer: Layer, name: str, a: Manifest[Any], dtype: np.dtype[np.floating[Any]]) -> Manifest[Any]:
    if a.dtype == dtype:
        return a
    with np.errstate(over="ignore"):  # reported below, naming the array
        arr = a.array.astype(dtype, order="C")
    if (np.isinf(arr) & np.isfinite(a.array)).any():
        raise ValueRangeError(f"to_dtype: layer {i} ({type(layer).__name__}).{name} holds values beyond {dtype}'s "
                              "range (they would become infinity)")
    arr.setflags(write=False)
    return Manifest(arr, a.comp)


def to_dtype(layers: Sequence[Layer], dtype: DTypeLike) -> list[Layer]:
    """A new network: ``layers`` with every parameter and running statistic converted to ``dtype``
    (float32 or float64) as ``astype`` converts it, all else kept. For instance, a float32 network
    in float64 for :func:`~lazybn.gradcheck.gradcheck`, or a float64 one in float32 to deploy.

    Raises:
        DTypeError: ``dtype`` is not float32 or float64.
        ValueRangeError: a value is beyond float32's range (it would become infinity), or a batch-norm
            layer's ``eps`` is not a normal float32 number (names the layer).
        ArgumentError: ``layers`` is not a list of lazybn layers.
    """
    check_layers("to_dtype", layers)
    dt = _float_dtype(dtype)
    out: list[Layer] = []
    for i, layer in enumerate(layers):
        match layer:
            case Linear(w=w, b=b):
                out.append(replace(layer, w=_cast(i, layer, "w", w, dt), b=_cast(i, layer, "b", b, dt)))
            case LinearNoBias(w=w):
                out.append(replace(layer, w=_cast(i, layer, "w", w, dt)))
            case Batchnorm1d(mu=mu, var=var, gamma=gamma, beta=beta):
                m, v, g, b = (_cast(i, layer, k, a, dt) for k, a in (("mu", mu), ("var", var), ("gamma", gamma),
                                                                      ("beta", beta)))
                try:
                    out.append(replace(layer, mu=m, var=v, gamma=g, beta=b))
                except ValueRangeError as exc:  # eps: a normal number of float64, subnormal in float32
                    raise ValueRangeError(f"to_dtype: layer {i} (Batchnorm1d): {exc}") from None
            case Activation() | Dropout():
                out.append(layer)
            case _:
                assert_never(layer)
    return out
