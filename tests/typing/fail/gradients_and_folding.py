# Clipping takes the gradients, not the pass that made them; folding takes a network, not a layer.
import numpy as np

import lazybn as lb

layers = lb.mlp((3, 4, 2), batchnorm=True, dtype=np.float64)
p = lb.gradients(layers, lb.matrix(np.ones((2, 3))), lb.matrix(np.eye(2)))
lb.grad_norm(p)  # type: ignore[arg-type]
lb.clip_grad_norm(p.grads, "1.0")  # type: ignore[arg-type]
lb.fold_batchnorm(layers[1])  # type: ignore[arg-type]
folded: list[lb.Linear] = lb.fold_batchnorm(layers)  # type: ignore[assignment]
