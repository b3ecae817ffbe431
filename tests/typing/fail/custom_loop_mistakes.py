# A loop of one's own: the mistakes mypy catches before a run (each line is one).
import numpy as np

import lazybn as lb

rng = np.random.default_rng(0)
x_all = rng.random((8, 4)).astype(np.float32)
labels = rng.integers(0, 2, 8)
y_all = lb.one_hot(labels, 2)
layers = lb.mlp((4, 3, 2), batchnorm=True, seed=0)
opt = lb.SGD(0.1)
state = lb.init_state(opt, layers)
x, y = lb.matrix(x_all), lb.matrix(y_all)
p = lb.gradients(layers, x, y)

lb.forward(layers, lb.vector(x_all[0]))  # type: ignore[arg-type]
lb.gradients(layers, x, lb.vector(y_all[0]))  # type: ignore[arg-type]
lb.update(opt, opt, layers, p.grads)  # type: ignore[arg-type]
lb.train_step(layers, opt, state.slots, x, y)  # type: ignore[arg-type]
lb.train_epoch(layers, state, opt, x_all, y_all, 4, rng)  # type: ignore[arg-type]
new_layers: list[lb.Layer] = lb.update(opt, state, layers, p.grads)  # type: ignore[assignment]
lb.update(opt, state, layers, lb.clip_grad_norm(p.grads, 1.0))  # type: ignore[arg-type]
lb.update_running(layers[1], p.grads[1])  # type: ignore[arg-type]
lb.accuracy(layers, x_all, y_all)  # type: ignore[arg-type]
saved = lb.load("net.npz")
lb.train_epoch(saved.layers, opt, saved.opt_state, x_all, y_all, 4, rng)  # type: ignore[arg-type]
lb.save("net.npz", layers, state, meta={"sizes": [4, 3, 2]})  # type: ignore[dict-item]


@lb.fused
def logits_of(layers: tuple[lb.Layer, ...], x: lb.Matrix) -> lb.Matrix:
    return lb.logits(layers, x)


logits_of(layers, x)  # type: ignore[arg-type]
