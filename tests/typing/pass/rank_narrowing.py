"""``is_vector``/``is_matrix`` narrow a ``Vector | Matrix`` (an optimizer's moments, compute_all of a
list) so the functions generic over the rank take it: both branches of the ``if``."""

from typing import assert_type

import numpy as np

import lazybn as lb

layers = lb.mlp((3, 4, 2), batchnorm=True, dtype=np.float64)
state = lb.init_state(lb.Adam(), layers)
halves: list[lb.Vector | lb.Matrix] = []
ranks = []
for layer_slots in state.slots:
    for slot in layer_slots:
        if lb.is_vector(slot):
            assert_type(slot, lb.Vector)
            halves.append(lb.compute(lb.scale(0.5, lb.delay(slot))))
            ranks.append(1)
        else:
            assert_type(slot, lb.Matrix)
            halves.append(lb.compute(lb.scale(0.5, lb.delay(slot))))
            ranks.append(2)
assert ranks == [len(m.shape) for s in state.slots for m in s] and halves
d = lb.compute_all(*[lb.delay(m) if lb.is_matrix(m) else lb.delay(m) for m in halves])
either = d[0]
if lb.is_matrix(either):
    assert_type(either, lb.Matrix)
    assert lb.matmul(either, lb.transpose(either)).shape[0] == either.shape[0]
else:
    assert_type(either, lb.Vector)
lazy: lb.Delayed[lb.Ix1] | lb.Delayed[lb.Ix2] = lb.delay(halves[0]) if lb.is_vector(halves[0]) else lb.delay(halves[0])
if lb.is_vector(lazy):
    assert_type(lazy, lb.Delayed[lb.Ix1])
