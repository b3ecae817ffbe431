"""A user's own training loop through the public API, with no casts: the pass, clipping, the
optimizer, the running statistics, a checkpoint, inference and folding for deployment."""

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import assert_never, assert_type

import numpy as np

import lazybn as lb


def step_running(layers: Sequence[lb.Layer], grads: Sequence[lb.Gradients]) -> list[lb.Layer]:
    """Each batch-norm layer's running statistics after the batch; the others as they are."""
    out: list[lb.Layer] = []
    for layer, g in zip(layers, grads, strict=True):
        match layer, g:
            case lb.Batchnorm1d(), lb.BN1():
                out.append(lb.update_running(layer, g))
            case _:
                out.append(layer)
    return out


def trainable_numbers(grads: Sequence[lb.Gradients]) -> int:
    total = 0
    for g in grads:
        match g:
            case lb.LinearGradients(dw=dw, db=db):
                total += dw.array.size + db.array.size
            case lb.LinearNoBiasGradients(dw=dw):
                total += dw.array.size
            case lb.BN1(dgamma=dgamma, dbeta=dbeta):
                total += dgamma.array.size + dbeta.array.size
            case lb.NoGrad():
                pass
            case _:
                assert_never(g)
    return total


def warmup(step: int, steps: int = 4) -> float:
    return min(1.0, (step + 1) / steps)


rng = np.random.default_rng(0)
images = rng.integers(0, 256, (48, 6)).astype(np.uint8)
labels = rng.integers(0, 3, 48)
x_all = lb.prepare(images, lb.Pixels.centered)
y_all = lb.one_hot(labels, 3)
layers: list[lb.Layer] = lb.mlp((6, 5, 3), batchnorm=True, dropout=0.1, seed=1)
opt: lb.Optimizer = lb.Adam(1e-2, weight_decay=1e-4)
state = lb.init_state(opt, layers)
history: list[float] = []
for k, idx in enumerate(lb.batches(x_all.shape[0], 16, rng)):
    x, y = lb.matrix(x_all[idx]), lb.matrix(y_all[idx])
    p = lb.gradients(layers, x, y, key=k)
    clipped, norm = lb.clip_grad_norm(p.grads, max_norm=1.0)
    assert trainable_numbers(clipped) == trainable_numbers(p.grads)
    stepped, state = lb.update(opt, state, layers, clipped, lr_scale=warmup(state.step))
    layers = step_running(stepped, p.grads)
    history.append(p.loss)
assert_type(state, lb.OptState)
assert state.step == 3 and len(history) == 3

# The gradient with respect to the input, asked for: a Matrix, not an Optional.
with_dx = lb.gradients(layers, lb.matrix(x_all[:8]), lb.matrix(y_all[:8]), key=9, input_grad=True)
assert_type(with_dx, lb.PassResult[lb.Matrix])
assert with_dx.dx.shape == (8, 6)
saliency = lb.compute(lb.amap(lb.Fn.abs, with_dx.dx))
assert_type(saliency, lb.Matrix)
plain = lb.gradients(layers, lb.matrix(x_all[:8]), lb.matrix(y_all[:8]), key=9)
assert_type(plain.dx, None)
assert plain.loss == with_dx.loss
either: list[lb.PassResult] = [plain, with_dx]  # a bare PassResult holds both kinds
assert_type(either[1].dx, lb.Matrix | None)
made = lb.PassResult[lb.Matrix](with_dx.loss, with_dx.pred, with_dx.grads, with_dx.dx)
assert_type(made.dx, lb.Matrix)
assert made == with_dx

# The optimizer's moments, per layer: vectors and matrices.
moments = [a for layer_slots in state.slots for a in layer_slots]
assert_type(moments, list[lb.Vector | lb.Matrix])
assert all(np.isfinite(lb.to_numpy(a)).all() for a in moments)
assert all(np.array_equal(lb.to_numpy(a * 1.0), a.array) for a in moments)  # operators keep either rank

# A checkpoint, and training resumed from it.
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "net.npz"
    lb.save(path, layers, state, meta={"epoch": 1, "note": "warm-up done"})
    saved = lb.load(path)
assert_type(saved.layers, list[lb.Layer])
assert_type(saved.opt_state, lb.OptState | None)
assert saved.meta["epoch"] == 1 and saved.opt_state is not None
layers, state, loss = lb.train_epoch(saved.layers, opt, saved.opt_state, x_all, y_all, 16, rng, key=1,
                                     progress=history.append)
assert_type(loss, float)
assert len(history) == 6

# Inference, and the network folded for deployment.
probs = lb.forward(layers, lb.matrix(x_all))
deploy = lb.fold_batchnorm(layers)
assert not any(isinstance(la, lb.Batchnorm1d) for la in deploy)
np.testing.assert_allclose(lb.forward(deploy, lb.matrix(x_all)).array, probs.array, rtol=1e-4, atol=1e-6)
assert lb.accuracy(deploy, x_all, labels) == lb.accuracy(layers, x_all, labels)
