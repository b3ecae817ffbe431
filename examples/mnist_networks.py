"""The two MNIST networks of the batch-norm day, written out by hand: 784-300-50-10.

Both start from the same weights (0.01 * N(0, 1), as the seed's genWeights). The batch-norm one
has no bias anywhere (``LinearNoBias``; beta takes the bias's role) and normalises before each
ReLU; the plain one uses ``Linear(w, b)`` with biases N(0, 1). The softmax is not a layer: the
training pass ends with softmax and the cross-entropy gradient.

Run: python examples/mnist_networks.py   (a random batch of 100 "images", one training pass each)
"""

from __future__ import annotations

from typing import assert_never

import numpy as np

import lazybn as lb
from lazybn.layers import (
    BN1,
    Act,
    Activation,
    Batchnorm1d,
    Gradients,
    Layer,
    Linear,
    LinearGradients,
    LinearNoBias,
    LinearNoBiasGradients,
    NoGrad,
)

I, H1, H2, O = 784, 300, 50, 10


def gen_weights(rng: np.random.Generator, n_in: int, n_out: int) -> tuple[lb.Matrix, lb.Vector]:
    """Weights 0.01 * N(0, 1) of shape (inputs, outputs) and biases N(0, 1), in float32."""
    w = lb.matrix(0.01 * rng.standard_normal((n_in, n_out)), np.float32)
    b = lb.vector(rng.standard_normal(n_out), np.float32)
    return w, b


def batchnorm(n: int) -> Batchnorm1d:
    """Running mean 0, running variance 1, gamma 1, beta 0 (argument order: mu, var, gamma, beta)."""
    return Batchnorm1d(lb.zeros(n), lb.ones(n), lb.ones(n), lb.zeros(n))


def networks(seed: int = 0) -> tuple[list[Layer], list[Layer]]:
    """(with batch norm, without), sharing w1, w2 and w3."""
    rng = np.random.default_rng(seed)
    w1, b1 = gen_weights(rng, I, H1)
    w2, b2 = gen_weights(rng, H1, H2)
    w3, b3 = gen_weights(rng, H2, O)
    with_bn: list[Layer] = [
        LinearNoBias(w1), batchnorm(H1), Activation(Act.relu),
        LinearNoBias(w2), batchnorm(H2), Activation(Act.relu),
        LinearNoBias(w3),
    ]
    plain: list[Layer] = [
        Linear(w1, b1), Activation(Act.relu),
        Linear(w2, b2), Activation(Act.relu),
        Linear(w3, b3),
    ]
    return with_bn, plain


def describe(g: Gradients) -> str:
    match g:
        case LinearGradients(dw=dw, db=db):
            return f"Linear       dw {dw.shape}  db {db.shape}"
        case LinearNoBiasGradients(dw=dw):
            return f"LinearNoBias dw {dw.shape}"
        case BN1(dgamma=dgamma, dbeta=dbeta, n=n):
            return f"Batchnorm1d  dgamma {dgamma.shape}  dbeta {dbeta.shape}  (batch of {n})"
        case NoGrad():
            return "Activation   (no parameters)"
        case _:
            assert_never(g)


def main() -> None:
    rng = np.random.default_rng(1)
    x = lb.matrix(rng.random((100, I)), np.float32)  # pixels in [0, 1)
    tgt = lb.matrix(np.eye(O)[rng.integers(0, O, 100)], np.float32)  # one-hot labels
    for name, net in zip(("with batch norm", "without batch norm"), networks(), strict=True):
        p = lb.gradients(net, x, tgt, input_grad=True)
        print(f"{name}: loss {p.loss:.4f}, dx {p.dx.shape}")
        for g in p.grads:
            print("   ", describe(g))


if __name__ == "__main__":
    main()
