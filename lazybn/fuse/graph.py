"""The delayed-expression graph: small frozen nodes built by the public operations.

A node knows its shape and dtype from the moment it is built (shapes are checked by the
public operations before a node is made). Nodes are immutable named tuples (the cheapest
frozen record in Python: building the graph is on the hot path of every training step).
Structural equality (for common-subexpression elimination and the kernel cache key) is worked
out once per ``compute`` in :mod:`lazybn.fuse.canon`, by object identity of the nodes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import ArgumentError, as_float, is_real

Shape = tuple[int, ...]
FloatArray = NDArray[np.floating[Any]]


class Fn(enum.Enum):
    """The closed set of element functions for :func:`lazybn.amap`.

    The ``d``-prefixed members are derivatives evaluated at the function's *input*:
    ``amap(Fn.drelu, x)`` is 1 where x > 0 else 0, ``Fn.dsigmoid`` is s(x)(1 - s(x)),
    ``Fn.dtanh`` is 1 - tanh(x)^2. ``Fn.flush_subnormal`` is x, or a zero of x's sign where |x|
    is below the dtype's smallest normal number (a subnormal); NaN and infinity pass through.
    ``Fn.erf`` is the error function (GELU is ``x * (1 + erf(x / sqrt(2))) / 2``).
    """

    exp = "exp"
    log = "log"
    sqrt = "sqrt"
    recip = "recip"
    negate = "negate"
    square = "square"
    abs = "abs"
    relu = "relu"
    drelu = "drelu"
    sigmoid = "sigmoid"
    dsigmoid = "dsigmoid"
    tanh = "tanh"
    dtanh = "dtanh"
    flush_subnormal = "flush_subnormal"
    erf = "erf"


class BinOp(enum.Enum):
    add = "+"
    sub = "-"
    mul = "*"
    div = "/"
    pow = "**"  # numpy's power: a negative number to a non-integer power is NaN
    maximum = "max"  # numpy's maximum and minimum: NaN in either operand gives NaN
    minimum = "min"


class RedOp(enum.Enum):
    sum_rows = "sum_rows"  # over rows: one value per column
    sum_cols = "sum_cols"  # over columns: one value per row
    max_cols = "max_cols"  # max over columns: one value per row
    min_cols = "min_cols"  # min over columns: one value per row
    max_rows = "max_rows"  # max over rows: one value per column
    min_rows = "min_rows"  # min over rows: one value per column


Derived = tuple[tuple[str, object], ...]
"""How a :class:`Scalar` is made from its dynamic value: ("neg", 0.0) negates, ("rdiv", c) divides c
(a Python or numpy number, kept as it is: its type is part of the division) by it."""


class Scalar:
    """A number that reaches kernels as a runtime argument of a replay (see :mod:`lazybn.trace`).

    While a ``@fused`` function is traced, each of its *dynamic* arguments (a per-step scalar
    such as a schedule factor) is this stand-in: lazybn operations accept it where they accept
    a number, and the replay passes each call's value to the kernels. Two pieces of Python
    arithmetic are repeated by the replay: negation (``-s``) and a number divided by it
    (``1.0 / s``), each a new stand-in whose ``ops`` say how it is made from the dynamic value.
    Any other arithmetic, comparison or conversion raises ``ArgumentError``, because the replay
    would not repeat it.
    """

    __slots__ = ("value", "index", "ops")
    __array_ufunc__ = None  # numpy defers: np.float32(1.0) / s reaches __rtruediv__ as a float32, not a float

    def __init__(self, value: Number, index: int, ops: Derived = ()) -> None:
        self.value = value
        self.index = index
        self.ops = ops  # applied in order

    def __repr__(self) -> str:
        return f"Scalar({self.value!r}, #{self.index}{''.join(f', {op} {c!r}' for op, c in self.ops)})"

    def _refuse(self, *_: object) -> Any:
        raise ArgumentError(
            f"{self!r} is a dynamic argument of a @fused function: pass it to lazybn operations "
            "(scale, add_c, + - * / with arrays) only, or negate it, or divide a number by it; other "
            "Python arithmetic or tests on it would be frozen into the replay. Compute such values "
            "outside, or make the argument static"
        )

    def _binary(self, other: object) -> Any:
        if hasattr(other, "_expr"):  # a lazybn array: let its reflected operator build the node
            return NotImplemented
        return self._refuse()

    def __neg__(self) -> Scalar:
        return Scalar(-self.value, self.index, (*self.ops, ("neg", 0.0)))

    def __rtruediv__(self, other: object) -> Any:
        if type(other) is float or type(other) is int or isinstance(other, (np.integer, np.floating)):
            return Scalar(other / self.value, self.index, (*self.ops, ("rdiv", other)))
        return self._binary(other)

    __bool__ = __float__ = __int__ = __index__ = __abs__ = __pos__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _binary
    __truediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _binary
    __pow__ = __rpow__ = __lt__ = __le__ = __gt__ = __ge__ = _binary
    __eq__ = __ne__ = _refuse
    __hash__ = None  # type: ignore[assignment]


def derive(x: str, ops: Derived, const: Callable[[object], str]) -> str:
    """The Python expression that makes a derived :class:`Scalar` from expression ``x`` of its
    dynamic value (``const`` names a number), as the trace computed it."""
    for op, c in ops:
        x = f"(-{x})" if op == "neg" else f"({const(c)} / {x})"
    return x


def scalar_value(x: object, op: str) -> float | Scalar:
    """The value a :class:`Const` holds for a number (or a :class:`Scalar` stand-in, kept as is)."""
    if type(x) is Scalar:
        return x
    if not is_number(x):
        raise ArgumentError(f"{op}: expected a number, got {type(x).__name__}")
    return as_float(x, f"{op}: the scalar")  # type: ignore[arg-type]


Number = float | np.floating[Any] | np.integer[Any]
"""What arithmetic with a scalar takes: a Python or numpy number (bool is not one)."""


def is_number(x: object) -> bool:
    """A plain number (not bool) or a :class:`Scalar` stand-in: what arithmetic accepts as a scalar."""
    return is_real(x) or type(x) is Scalar


class Leaf(NamedTuple):
    """A manifest array read by the kernel."""

    array: FloatArray
    shape: Shape
    dtype: np.dtype[Any]


class Const(NamedTuple):
    """A Python scalar; passed to the kernel as an argument, never baked into its source."""

    value: float | Scalar
    shape: Shape = ()
    dtype: None = None


class Map(NamedTuple):
    fn: Fn
    a: "Node"
    shape: Shape
    dtype: np.dtype[Any]


class Zip(NamedTuple):
    op: BinOp
    a: "Node"
    b: "Node"
    shape: Shape
    dtype: np.dtype[Any]


class Br(NamedTuple):
    """A vector used as every row of a matrix: ``out[i, j] = a[j]`` (massiv's ``br``)."""

    a: "Node"
    shape: Shape
    dtype: np.dtype[Any]


class ColsLike(NamedTuple):
    """A vector used as every column of a matrix: ``out[i, j] = a[i]``."""

    a: "Node"
    shape: Shape
    dtype: np.dtype[Any]


class Reduce(NamedTuple):
    op: RedOp
    a: "Node"
    shape: Shape
    dtype: np.dtype[Any]


Node = Leaf | Const | Map | Zip | Br | ColsLike | Reduce
ArrayNode = Leaf | Map | Zip | Br | ColsLike | Reduce


def describe(node: Node, depth: int = 3) -> str:
    """A short human-readable rendering of an expression (used in ``repr`` and kernel headers)."""
    if depth == 0:
        return "..."
    d = depth - 1
    match node:
        case Leaf(shape=shape):
            return f"array{shape}"
        case Const(value=value):
            return repr(value)
        case Map(fn=fn, a=a):
            return f"{fn.value}({describe(a, d)})"
        case Zip(op=BinOp.maximum | BinOp.minimum as op, a=a, b=b):
            return f"{op.name}({describe(a, d)}, {describe(b, d)})"
        case Zip(op=op, a=a, b=b):
            return f"({describe(a, d)} {op.value} {describe(b, d)})"
        case Br(a=a, shape=shape):
            return f"br({shape[0]}, {describe(a, d)})"
        case ColsLike(a=a, shape=shape):
            return f"cols_like({describe(a, d)}, {shape[1]} cols)"
        case Reduce(op=op, a=a):
            return f"{op.value}({describe(a, d)})"
