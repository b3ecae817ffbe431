# A pass's dx is a Matrix only when it was asked for (input_grad=True).
import numpy as np

import lazybn as lb

layers = lb.mlp((3, 4, 2), batchnorm=True, dtype=np.float64)
x, y = lb.matrix(np.ones((2, 3))), lb.matrix(np.eye(2))
plain = lb.gradients(layers, x, y)
plain.dx.shape  # type: ignore[attr-defined]
flag = bool(np.random.default_rng(0).integers(2))
dx: lb.Matrix = lb.gradients(layers, x, y, input_grad=flag).dx  # type: ignore[assignment]
with_dx: lb.PassResult[lb.Matrix] = plain  # type: ignore[assignment]
lb.gradients(layers, x, y, input_grad=None)  # type: ignore[call-overload]
