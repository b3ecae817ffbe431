# A float32 network taken to float64 for gradcheck, and back to float32: a network either way.
from typing import assert_type

import numpy as np

import lazybn as lb

net = lb.mlp((4, 3, 2), batchnorm=True, act=lb.Act.tanh, seed=0)
wide = lb.to_dtype(net, np.float64)
assert_type(wide, list[lb.Layer])
rng = np.random.default_rng(0)
x = lb.matrix(rng.normal(size=(6, 4)), np.float64)
t = lb.matrix(np.eye(2)[[0, 1, 0, 1, 1, 0]], np.float64)
assert max(e.error for e in lb.gradcheck(wide, x, t)) < 1e-6
narrow = lb.to_dtype(wide, "float32")
assert all(a.tobytes() == b.tobytes() for a, b in zip(lb.to_torch(narrow).values(), lb.to_torch(net).values()))
