# A match over Layer must handle every kind: leave one out and assert_never reports it.
from typing import assert_never

from lazybn.layers import Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias


def describe(layer: Layer) -> str:
    match layer:
        case Linear():
            return "affine"
        case LinearNoBias():
            return "linear"
        case Batchnorm1d():
            return "batch norm"
        case Activation():
            return "activation"
        case _:
            assert_never(layer)  # type: ignore[arg-type]


def trainable(layer: Layer) -> bool:
    match layer:
        case Linear() | LinearNoBias() | Batchnorm1d():
            return True
        case Dropout():
            return False
        case _:
            assert_never(layer)  # type: ignore[arg-type]
