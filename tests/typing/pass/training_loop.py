# A training loop through the top-level API, with the types mypy infers: it checks and it runs.
from typing import assert_type

import numpy as np
from numpy.typing import NDArray

import lazybn as lb

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (64, 12)).astype(np.uint8)
labels = rng.integers(0, 3, 64)
x = lb.prepare(images, lb.Pixels.unit)
y = lb.one_hot(labels, 3)
layers = lb.mlp((12, 8, 3), batchnorm=True, seed=0)
opt = lb.SGD(0.1)
state = lb.init_state(opt, layers)
assert_type(state, lb.OptState)
losses: list[float] = []
layers, state, loss = lb.train_epoch(layers, opt, state, x, y, 16, rng, progress=losses.append)
assert_type(layers, list[lb.Layer])
assert_type(loss, float)
acc = lb.accuracy(layers, x, labels)
assert_type(acc, float)
assert np.array_equal(lb.one_hot([2, 0], 3), lb.one_hot(np.array([2, 0]), 3))  # a list of labels, or an array
ev = lb.evaluate(layers, x, labels)
assert_type(ev, lb.Evaluation)
assert_type(ev.loss, float)
assert ev.accuracy == acc and ev.loss > 0.0
step = lb.train_step(layers, opt, state, lb.matrix(x[:16]), lb.matrix(y[:16]))
assert_type(step, lb.StepResult)
torch_state = lb.to_torch(step.layers)
assert_type(torch_state, dict[str, NDArray[np.generic]])
assert lb.accuracy(lb.from_torch(torch_state, like=layers), x, labels) == lb.accuracy(step.layers, x, labels)
assert len(losses) == 4
# The same step taken apart: the training pass, the optimizer, the running statistics.
p = lb.gradients(layers, lb.matrix(x[:16]), lb.matrix(y[:16]))
assert_type(p, lb.PassResult[None])  # no input gradient asked for: dx is None
assert_type(p.loss, float)
assert_type(p.grads, list[lb.Gradients])
assert_type(p.dx, None)
new, new_state = lb.update(opt, state, layers, p.grads)
assert_type(new, list[lb.Layer])
running = [lb.update_running(la, g) if isinstance(la, lb.Batchnorm1d) and isinstance(g, lb.BN1) else la
           for la, g in zip(new, p.grads)]
assert all(np.array_equal(a.gamma.array, b.gamma.array) for a, b in zip(running, step.layers)
           if isinstance(a, lb.Batchnorm1d) and isinstance(b, lb.Batchnorm1d))
# Clipping in between, and the trained network folded for deployment.
clipped, norm = lb.clip_grad_norm(p.grads, 0.5)
assert_type(clipped, list[lb.Gradients])
assert_type(norm, float)
assert_type(lb.grad_norm(clipped), float)
deploy = lb.fold_batchnorm(running)
assert_type(deploy, list[lb.Layer])
assert not any(isinstance(la, lb.Batchnorm1d) for la in deploy)
assert_type(lb.forward(deploy, lb.matrix(x[:4])), lb.Matrix)
