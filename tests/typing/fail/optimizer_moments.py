# The optimizer's moments have their parameters' ranks, vectors or matrices: not Any. A function generic
# over the rank needs the rank known (is_vector/is_matrix narrow it), and the narrowing is checked.
import numpy as np

import lazybn as lb

layers = lb.mlp((3, 4, 2), batchnorm=True, dtype=np.float64)
state = lb.init_state(lb.Adam(), layers)
m: lb.Vector = state.slots[0][0]  # type: ignore[assignment]
lb.matmul(state.slots[0][0], lb.matrix(np.ones((4, 3))))  # type: ignore[arg-type]
lb.OptState(0, [()])  # type: ignore[arg-type]
either = state.slots[0][0]
if lb.is_vector(either):
    lb.matmul(either, lb.matrix(np.ones((4, 3))))  # type: ignore[arg-type]
else:
    v: lb.Vector = either  # type: ignore[assignment]
