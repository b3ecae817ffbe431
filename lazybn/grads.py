"""A network's gradients as one vector: its norm, and clipping it (PyTorch's ``clip_grad_norm_``).

For loops of your own (see :func:`lazybn.network.gradients`): the parameter gradients of every
layer (``dw``, ``db``, ``dgamma``, ``dbeta``) count; a ``BN1``'s batch statistics are not
gradients and pass through untouched, as do the empty gradients of ``trainable=False`` layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, assert_never

import numpy as np

from .array import Comp, Manifest, compute_all
from .fuse.graph import FloatArray
from .errors import ArgumentError, NumericalError, ValueRangeError, a_kind
from .layers import BN1, Gradients, LinearGradients, LinearNoBiasGradients, NoGrad
from .ops import scale
from .optimizers import as_number

_TINY = float(np.finfo(np.float64).tiny)


def require_list(op: str, grads: object) -> None:
    """Refuse what is not a sequence of gradients (an untyped caller: the PassResult itself, say)."""
    if not isinstance(grads, Sequence):
        raise ArgumentError(f"{op}: grads must be a list with one gradient per layer (a PassResult's .grads), "
                            f"got {type(grads).__name__}")


def _arrays(op: str, grads: Sequence[Gradients]) -> list[Manifest[Any]]:
    require_list(op, grads)
    out: list[Manifest[Any]] = []
    for i, g in enumerate(grads):
        named: list[tuple[str, object]]
        match g:
            case LinearGradients(dw=dw, db=db):
                named = [("dw", dw), ("db", db)]
            case LinearNoBiasGradients(dw=dw):
                named = [("dw", dw)]
            case BN1(dgamma=dgamma, dbeta=dbeta):
                named = [("dgamma", dgamma), ("dbeta", dbeta)]
            case NoGrad():
                named = []
            case _:
                raise ArgumentError(f"{op}: grads[{i}] is {a_kind(g)}, not a lazybn gradient")
        for name, a in named:
            if not isinstance(a, Manifest):  # a numpy array, or a Delayed not computed (as update refuses them)
                raise ArgumentError(f"{op}: grads[{i}].{name} must be a computed lazybn array (lb.compute(...) makes "
                                    f"one), got {type(a).__name__}")
            out.append(a)
    return out


def _norm(arrays: list[FloatArray]) -> tuple[float, float]:
    """``(big, r)`` with the norm ``big·r``: the sum of squares in float64 when it neither
    overflows nor underflows (``big`` = 1), else the arrays divided by their largest magnitude
    ``big`` first (finite float64 gradients with squares beyond float64, or below its normal
    range). NaN or inf in ``big`` if a gradient holds one."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        total = sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)
        if _TINY < total < math.inf or total == 0.0 and not any(a.any() for a in arrays):
            return 1.0, math.sqrt(total)
        big = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
        if not 0.0 < big < math.inf:  # NaN/inf in a gradient (or all zeros)
            return (big, 1.0) if big != 0.0 else (1.0, 0.0)
        return big, math.sqrt(sum(float(np.sum(np.square(np.divide(a, big, dtype=np.float64)))) for a in arrays))


def grad_norm(grads: Sequence[Gradients]) -> float:
    """The L2 norm of all parameter gradients together, in float64 without overflow or underflow
    in between (inf only where the norm itself is beyond float64); NaN or inf if a gradient holds
    one. ``grads`` is one gradient per layer (a PassResult's ``.grads``); anything else, or a
    gradient array that is not a computed lazybn array, is an ``ArgumentError``."""
    big, r = _norm([a.array for a in _arrays("grad_norm", grads)])
    return big * r


def clip_grad_norm(grads: Sequence[Gradients], max_norm: float) -> tuple[list[Gradients], float]:
    """``(clipped, norm)``: the gradients scaled by ``max_norm / norm`` if their norm (see
    :func:`grad_norm`) exceeds ``max_norm``, else the same gradients; and the norm before
    clipping. As PyTorch's ``clip_grad_norm_`` (without its 1e-6 in the divisor, so a clipped
    norm is ``max_norm`` up to rounding). One kernel scales every array (one per dtype and Comp).

    Raises:
        ValueRangeError: ``max_norm`` is not a finite number > 0.
        NumericalError: a gradient holds NaN/inf.
        ArgumentError: ``grads`` is not a list of gradients, as :func:`grad_norm` says.
    """
    limit = as_number("clip_grad_norm", "max_norm", max_norm)  # a float: np.float32(0.5) would make c a float32
    if not 0 < limit < math.inf:
        raise ValueRangeError(f"clip_grad_norm.max_norm: must be a finite number > 0, got {max_norm!r}")
    arrays = _arrays("clip_grad_norm", grads)
    big, r = _norm([a.array for a in arrays])
    if not math.isfinite(big):
        raise NumericalError(f"clip_grad_norm: the gradients' norm is {big}; a gradient holds NaN or infinity")
    norm = big * r  # inf if beyond float64: still clipped, by the scaled parts
    if norm <= limit:
        return list(grads), norm
    c = limit / big / r
    groups: dict[tuple[np.dtype[Any], Comp], list[int]] = {}  # one kernel per dtype and Comp: usually one
    for k, a in enumerate(arrays):
        groups.setdefault((a.dtype, a.comp), []).append(k)
    scaled: dict[int, Manifest[Any]] = {}
    for ks in groups.values():
        scaled.update(zip(ks, compute_all(*(scale(c, arrays[k]) for k in ks))))
    new = iter(scaled[k] for k in range(len(arrays)))
    clipped: list[Gradients] = []
    for g in grads:
        match g:
            case LinearGradients():
                clipped.append(LinearGradients(next(new), next(new)))
            case LinearNoBiasGradients():
                clipped.append(LinearNoBiasGradients(next(new)))
            case BN1():
                clipped.append(replace(g, dgamma=next(new), dbeta=next(new)))
            case NoGrad():
                clipped.append(g)
            case _:
                assert_never(g)
    return clipped, norm
