"""``lb.evaluate``: accuracy and the validation loss in inference mode, against oracles of their
own (the logits' arg-max; the cross-entropy in long double from the logits, and PyTorch's where
installed), the training pass's loss where inference and training agree, and its errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import Linear


def _trained(sizes: tuple[int, ...], bn: bool, dtype: Any, seed: int) -> tuple[list[lb.Layer], Any, Any]:
    """A network trained for one short epoch (so that its running statistics are its own) and
    data of its input width."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(40, sizes[0])) * 3 + 1).astype(dtype)
    labels = rng.integers(0, sizes[-1], 40)
    layers = lb.mlp(sizes, batchnorm=bn, seed=seed, dtype=dtype)
    opt = lb.SGD(0.5)
    layers, _, _ = lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, lb.one_hot(labels, sizes[-1], dtype),
                                  10, rng)
    return layers, x, labels


def _loss_oracle(z: Any, labels: Any) -> float:
    """The mean of -log softmax(z)[label], in long double."""
    z = z.astype(np.longdouble)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


@settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(2, 9), min_size=0, max_size=2), inputs=st.integers(1, 6),
       classes=st.integers(2, 5), bn=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       batch_size=st.integers(1, 50), seed=st.integers(0, 1000))
def test_evaluate_gives_the_accuracy_and_cross_entropy_of_the_logits(hidden: list[int], inputs: int, classes: int,
                                                                      bn: bool, dtype: Any, batch_size: int,
                                                                      seed: int) -> None:
    layers, x, labels = _trained((inputs, *hidden, classes), bn, dtype, seed)
    got = lb.evaluate(layers, x, labels, batch_size=batch_size)
    z = lb.logits(layers, lb.matrix(x)).array  # the whole data at once, whatever batch_size
    assert got.accuracy == np.mean(np.argmax(z, axis=1) == labels) == lb.accuracy(layers, x, labels, batch_size)
    tol = 1e-5 if dtype == np.float32 else 1e-12  # batches of another size: the logits' rounding may differ
    assert got.loss == pytest.approx(_loss_oracle(z, labels), rel=tol, abs=tol)


def test_the_loss_matches_pytorch_cross_entropy_on_the_logits() -> None:
    torch = pytest.importorskip("torch")
    layers, x, labels = _trained((5, 8, 4), True, np.float64, 3)
    z = lb.logits(layers, lb.matrix(x)).array
    want = float(torch.nn.functional.cross_entropy(torch.from_numpy(np.array(z)), torch.from_numpy(labels)))
    assert lb.evaluate(layers, x, labels).loss == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_batch_norm_the_loss_is_the_training_pass_loss(dtype: Any) -> None:
    """With no batch norm and no dropout, inference computes what training does."""
    layers, x, labels = _trained((3, 7, 3), False, dtype, 1)
    want = lb.gradients(layers, lb.matrix(x), lb.matrix(lb.one_hot(labels, 3, dtype))).loss
    assert lb.evaluate(layers, x, labels).loss == pytest.approx(want, rel=1e-5 if dtype == np.float32 else 1e-12)


def test_a_confidently_wrong_sample_counts_with_its_whole_loss() -> None:
    """Logits 0 and 1e4: the label 0's probability underflows to 0, its loss is still 1e4 (not
    inf, nor capped); the other sample's loss is log(1 + e^-1e4) = 0 to float64."""
    net: list[lb.Layer] = [Linear(lb.matrix(np.eye(2)), lb.vector(np.zeros(2)))]
    x = np.array([[0.0, 1e4], [0.0, 1e4]])
    got = lb.evaluate(net, x, np.array([0, 1]))
    assert got.accuracy == 0.5 and got.loss == 1e4 / 2


@pytest.mark.parametrize("call, error, message", [
    (lambda net, x: lb.evaluate(net, x, np.zeros(3, np.float32)), lb.DTypeError,
     "evaluate: labels must be integer class indices"),
    (lambda net, x: lb.evaluate(net, x, np.array([0, 1, 5])), lb.ValueRangeError,
     r"evaluate: labels must be classes of the network's 2 outputs, in \[0, 2\)"),
    (lambda net, x: lb.evaluate(net, x[:, :1], np.zeros(3, np.int64)), lb.ShapeError, "evaluate: "),
    (lambda net, x: lb.evaluate(net, np.where(x > 1, np.nan, x), np.zeros(3, np.int64)), lb.NumericalError,
     r"evaluate: x contains NaN or infinity \(first at row 1, column 1: nan\)"),
])
def test_evaluate_names_itself_in_its_errors(call: Any, error: type[Exception], message: str) -> None:
    net: list[lb.Layer] = [Linear(lb.matrix(np.eye(2)), lb.vector(np.zeros(2)))]
    x = np.array([[0.0, 1.0], [1.0, 2.0], [0.5, 0.5]])
    with pytest.raises(error, match=message):
        call(net, x)
    assert math.isfinite(lb.evaluate(net, x, np.zeros(3, np.int64)).loss)
