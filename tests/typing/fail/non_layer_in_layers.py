# A layer sequence holds layers only: a matrix, a string or an Act is not a Layer.
from collections.abc import Sequence

import numpy as np

import lazybn as lb
from lazybn.layers import Act, Activation, Dropout, Layer, LinearNoBias
from lazybn.network import _pass, forward

x = lb.matrix(np.ones((2, 3)))
w = lb.matrix(np.ones((3, 3)))


def depth(layers: Sequence[Layer]) -> int:
    return len(layers)


_pass(x, x, [LinearNoBias(w), Act.relu])  # type: ignore[list-item]
depth([Dropout(0.5), w])  # type: ignore[list-item]
net: list[Layer] = [Activation(Act.tanh), "relu"]  # type: ignore[list-item]
forward((LinearNoBias(w), Act.relu), x)  # type: ignore[arg-type]
