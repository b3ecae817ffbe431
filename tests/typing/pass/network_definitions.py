# Networks built by hand, matched exhaustively, trained for one pass: mypy accepts it and it runs.
from collections.abc import Sequence
from dataclasses import replace
from typing import assert_never, assert_type

import numpy as np

import lazybn as lb
from lazybn.layers import (
    BN1,
    Act,
    Activation,
    Batchnorm1d,
    Dropout,
    Gradients,
    Layer,
    Linear,
    LinearGradients,
    LinearNoBias,
    LinearNoBiasGradients,
    NoGrad,
)
from lazybn.network import _pass, cross_entropy, forward, update_running

rng = np.random.default_rng(0)
n_in, hidden, classes = 4, 3, 2
w1 = lb.matrix(0.1 * rng.standard_normal((n_in, hidden)), np.float32)
w2 = lb.matrix(0.1 * rng.standard_normal((hidden, classes)), np.float32)
b2 = lb.vector(rng.standard_normal(classes), np.float32)
assert_type(w1, lb.Matrix)
assert_type(lb.zeros(hidden), lb.Vector)

bn = Batchnorm1d(lb.zeros(hidden), lb.ones(hidden), lb.ones(hidden), lb.zeros(hidden), momentum=0.1)
net: list[Layer] = [LinearNoBias(w1), bn, Activation(Act.relu), Dropout(0.25), Linear(w2, b2)]


def n_params(layers: Sequence[Layer]) -> int:
    """Trainable numbers in a network: one case per layer kind."""
    total = 0
    for layer in layers:
        match layer:
            case Linear(w=w, b=b):
                total += w.array.size + b.array.size
            case LinearNoBias(w=w):
                total += w.array.size
            case Batchnorm1d(gamma=gamma, beta=beta):
                total += gamma.array.size + beta.array.size
            case Activation() | Dropout():
                pass
            case _:
                assert_never(layer)
    return total


def shape_of(g: Gradients) -> str:
    match g:
        case LinearGradients(dw=dw, db=db):
            return f"dw {dw.shape} db {db.shape}"
        case LinearNoBiasGradients(dw=dw):
            return f"dw {dw.shape}"
        case BN1(dgamma=dgamma, n=n):
            return f"dgamma {dgamma.shape} over {n} samples"
        case NoGrad():
            return "-"
        case _:
            assert_never(g)


assert n_params(net) == n_in * hidden + 2 * hidden + hidden * classes + classes
x = lb.matrix(rng.random((5, n_in)), np.float32)
tgt = lb.matrix(np.eye(classes)[[0, 1, 1, 0, 1]], np.float32)
dx, pred, grads = _pass(x, tgt, net, key=0)
assert_type(dx, lb.Matrix)
assert_type(grads, list[Gradients])
assert dx.shape == (5, n_in) and pred.shape == (5, classes) and len(grads) == len(net)
assert [shape_of(g) for g in grads][1] == f"dgamma {(hidden,)} over 5 samples"
g1 = grads[1]
assert isinstance(g1, BN1)
trained = update_running(bn, g1)
assert_type(trained, Batchnorm1d)
probs = forward([*net[:1], trained, *net[2:]], x)
assert np.allclose(probs.array.sum(axis=1), 1.0, atol=1e-6)
assert cross_entropy(pred, tgt) > 0.0

# The batch-norm variants are fields of the same layer: a cumulative average, renormalisation,
# ghost batches. Each trains through the same _pass and gives the same kind of gradients.
from lazybn.batchnorm import reset_running  # noqa: E402

variants: list[Batchnorm1d] = [
    replace(bn, momentum=None),
    replace(bn, renorm=lb.Renorm(rmax=3.0, dmax=5.0)),
    replace(bn, ghost_batch=5),
]
for layer in variants:
    _, _, g = _pass(x, tgt, [LinearNoBias(w1), layer, Activation(Act.relu), Linear(w2, b2)])
    gb = g[1]
    assert isinstance(gb, BN1)
    assert_type(update_running(layer, gb).tracked, int)
    assert_type(reset_running(layer), Batchnorm1d)
