"""The delayed-expression graph: small frozen nodes built by the public operations.

A node knows its shape and dtype from the moment it is built (shapes are checked by the
public operations before a node is made). Nodes are immutable named tuples (the cheapest
frozen record in Python: building the graph is on the hot path of every training step).
Structural equality (for common-subexpression elimination and the kernel cache key) is worked
out once per ``compute`` in :mod:`lazybn.fuse.lower`, by object identity of the nodes.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

Shape = tuple[int, ...]
FloatArray = NDArray[np.floating[Any]]


class Fn(enum.Enum):
    """The closed set of element functions for :func:`lazybn.amap`.

    The ``d``-prefixed members are derivatives evaluated at the function's *input*:
    ``amap(Fn.drelu, x)`` is 1 where x > 0 else 0, ``Fn.dsigmoid`` is s(x)(1 - s(x)),
    ``Fn.dtanh`` is 1 - tanh(x)^2.
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


class BinOp(enum.Enum):
    add = "+"
    sub = "-"
    mul = "*"
    div = "/"


class RedOp(enum.Enum):
    sum_rows = "sum_rows"  # over rows: one value per column
    sum_cols = "sum_cols"  # over columns: one value per row
    max_cols = "max_cols"  # max over columns: one value per row


class Leaf(NamedTuple):
    """A manifest array read by the kernel."""

    array: FloatArray
    shape: Shape
    dtype: np.dtype[Any]


class Const(NamedTuple):
    """A Python scalar; passed to the kernel as an argument, never baked into its source."""

    value: float
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
        case Zip(op=op, a=a, b=b):
            return f"({describe(a, d)} {op.value} {describe(b, d)})"
        case Br(a=a, shape=shape):
            return f"br({shape[0]}, {describe(a, d)})"
        case ColsLike(a=a, shape=shape):
            return f"cols_like({describe(a, d)}, {shape[1]} cols)"
        case Reduce(op=op, a=a):
            return f"{op.value}({describe(a, d)})"
