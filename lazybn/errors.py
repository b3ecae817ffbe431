"""The exceptions lazybn raises. Every one derives from :class:`LazybnError`.

Each error carries the facts as fields (like massiv's ``SizeMismatchException``), and its
message names the operation, the values involved and, where there is one, the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13


def is_count(v: object, low: int = 0) -> TypeIs[int | np.integer[Any]]:
    """Whether ``v`` is a whole number (a Python or numpy integer, not a bool) of at least ``low``:
    the check of every size, step count and seed lazybn takes from untyped callers."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and bool(v >= low)


def is_real(v: object) -> TypeIs[int | float | np.integer[Any] | np.floating[Any]]:
    """Whether ``v`` is a real number (a Python or numpy int or float, not a bool): the check of
    every hyperparameter and setting lazybn takes from untyped callers."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def as_float(v: int | float | np.integer[Any] | np.floating[Any], what: str) -> float:
    """``float(v)``, with an int beyond the float range (10**400) a :class:`ValueRangeError`
    saying "{what} is an integer beyond the float range", not Python's ``OverflowError``."""
    try:
        return float(v)
    except OverflowError:
        raise ValueRangeError(f"{what} is an integer beyond the float range (about 1.8e308)") from None


def a_kind(v: object) -> str:
    """``v``'s type with its article, for messages: "a str", "an int", "an Activation"."""
    name = type(v).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class LazybnError(Exception):
    """Base class of every error raised by lazybn."""


class ShapeError(LazybnError, ValueError):
    """Two shapes that must agree do not (or a shape is invalid for the operation)."""

    def __init__(self, op: str, left: tuple[int, ...], right: tuple[int, ...] | None, hint: str = "") -> None:
        self.op, self.left, self.right = op, left, right
        what = f"shape {left}" if right is None else f"shapes {left} and {right} do not match"
        super().__init__(f"{op}: {what}" + (f"; {hint}" if hint else ""))


class ArgumentError(LazybnError, TypeError):
    """An argument of the wrong kind: not a lazybn array, not a member of the expected enum, ..."""


class RankError(LazybnError, TypeError):
    """An array of the wrong rank (vector vs matrix) reached an operation."""


class DTypeError(LazybnError, TypeError):
    """An unsupported or mismatched dtype (lazybn computes in float32 and float64)."""


class ValueRangeError(LazybnError, ValueError):
    """An argument is outside its valid range (a learning rate <= 0, eps <= 0, NaN in input, ...)."""


class CompileError(LazybnError, RuntimeError):
    """A kernel could not be compiled or loaded (LAZYBN_NO_COMPILE=1 forbids new compiles)."""


class DataError(LazybnError, ValueError):
    """A data set or data file is missing, truncated, corrupt or inconsistent."""


class NumericalError(LazybnError, FloatingPointError):
    """A training step or pass produced NaN or infinity (a step's batch is not applied).
    ``train_step`` and ``train_epoch`` skip such a batch instead with ``on_nonfinite="skip"``."""


class PersistenceError(LazybnError, ValueError):
    """A saved network file is unreadable, from another version, or does not match."""


class ReplayWarning(UserWarning):
    """A ``@fused`` function cannot replay a signature, so every call with it runs the body (as
    slowly as undecorated); warned once per function, naming it and the reason."""
