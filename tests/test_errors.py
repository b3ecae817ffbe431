"""Bad input gets a lazybn error whose message names the problem (the table in docs/reliability.md).

``python -m tests.test_errors`` prints that table from these very cases.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.batchnorm import bn_backward, bn_forward
from lazybn.layers import Batchnorm1d, Dropout, Linear, LinearNoBias
from lazybn.optim import SGD, Momentum, RMSProp, UpdateMismatchError, init_state
from lazybn.errors import NumericalError
from lazybn.experiments.evaluate import checked, evaluand
from lazybn.persist import Saved
from lazybn.train import train_step
from lazybn.preprocess import one_hot

M = lb.matrix(np.ones((3, 2)))
V = lb.vector(np.ones(3))
F32 = np.float32


def _bn(n: int = 3, dtype: Any = F32, **kw: Any) -> Batchnorm1d:
    return Batchnorm1d(lb.zeros(n, dtype), lb.ones(n, dtype), lb.ones(n, dtype), lb.zeros(n, dtype), **kw)


def _net() -> list[lb.Layer]:
    return [LinearNoBias(lb.matrix(np.ones((2, 3), F32))), _bn()]


def _pass_result() -> lb.PassResult:
    return lb.gradients(_net(), lb.matrix(np.ones((2, 2), F32)), lb.matrix(np.eye(3, dtype=F32)[:2]))


def _nan_step() -> object:
    opt = SGD(0.1)
    x = lb.matrix(np.array([[1, np.nan], [0, 1]], F32))
    return train_step(_net(), opt, init_state(opt, _net()), x, lb.matrix(np.eye(3, dtype=F32)[:2]))


def _nan_epoch() -> object:
    """Data whose row 7 holds -inf, and later rows NaN, in one batch: the error names row 7 of x,
    wherever the shuffle put it in the batch."""
    opt = SGD(0.1)
    x = np.ones((12, 2), F32)
    x[7, 0], x[9:, 1] = -np.inf, np.nan
    return lb.train_epoch(_net(), opt, init_state(opt, _net()), x, np.eye(3, dtype=F32)[np.arange(12) % 3], 12,
                          np.random.default_rng(3))


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("vector + matrix (untyped caller)", lambda: V + M, lb.RankError, "rows_like(v, m)"),  # type: ignore[operator]
    ("mismatched shapes", lambda: M + lb.matrix(np.ones((2, 3))), lb.ShapeError, "(3, 2) and (2, 3)"),
    ("mixed dtypes", lambda: M + lb.matrix(np.ones((3, 2), F32)), lb.DTypeError, "float64 and float32"),
    ("complex data", lambda: lb.matrix(np.ones((2, 2), complex)), lb.DTypeError, "complex128"),
    ("float16 data", lambda: lb.matrix(np.ones((2, 2), np.float16)), lb.DTypeError, "dtype=np.float32"),
    ("a list value beyond float32's range", lambda: lb.vector([1e39]), lb.ValueRangeError, "dtype=np.float64"),
    ("rank-3 data", lambda: lb.matrix(np.ones((2, 2, 2))), lb.RankError, "(2, 2, 2)"),
    ("a delayed array made a matrix", lambda: lb.matrix(M + M), lb.ArgumentError,  # type: ignore[arg-type]
     "matrix: got a Delayed array, which holds no values yet; compute(d) makes it a Manifest"),
    ("a delayed array made a vector, dtype given", lambda: lb.vector(lb.sum_rows(M), np.float64),  # type: ignore[arg-type]
     lb.ArgumentError, "vector: got a Delayed array"),
    ("a comp that is not a Comp", lambda: lb.matrix(np.ones((2, 2)), comp="Par"),  # type: ignore[arg-type]
     lb.ArgumentError, "comp must be lb.Comp.Seq or lb.Comp.Par, got 'Par'"),
    ("another computation strategy that is not a Comp", lambda: lb.set_comp(M, 1),  # type: ignore[arg-type]
     lb.ArgumentError, "got 1"),
    ("load with a comp that is not a Comp", lambda: lb.load("net.npz", comp="Seq"),  # type: ignore[arg-type]
     lb.ArgumentError, "load: comp must be lb.Comp.Seq, lb.Comp.Par or None, got 'Seq'"),
    ("ragged nested lists", lambda: lb.matrix([[1.0, 2.0], [3.0]]), lb.RankError, "matrix: the nested lists are ragged"),
    ("ragged lists, dtype given", lambda: lb.vector([[1.0], []], np.float64), lb.RankError,
     "vector: the nested lists are ragged"),
    ("a numpy array where a lazybn array is needed", lambda: lb.sum_rows(np.ones((2, 2))),  # type: ignore[arg-type]
     lb.ArgumentError, "ndarray"),
    ("a shape that is not n or (rows, cols)", lambda: lb.zeros(3.0),  # type: ignore[call-overload]
     lb.ValueRangeError, "non-negative integers"),
    ("an integer scalar beyond float64's range", lambda: M + 10**400, lb.ValueRangeError,
     "add: the scalar is an integer beyond the float range"),
    ("an integer fill value beyond float64's range", lambda: lb.replicate(2, 10**400, np.float64), lb.ValueRangeError,
     "replicate: value is an integer beyond the float range"),
    ("max over zero columns", lambda: lb.max_cols(lb.matrix(np.ones((2, 0)))), lb.ShapeError, "zero columns"),
    ("min over zero rows", lambda: lb.min_rows(lb.matrix(np.ones((0, 2)))), lb.ShapeError, "zero rows"),
    ("@ of a delayed matrix", lambda: (M * 2.0) @ M, lb.ArgumentError, "compute it first"),  # type: ignore[operator]
    ("matmul inner dimensions", lambda: lb.matmul(M, M), lb.ShapeError, "inner dimensions"),
    ("Linear with a vector weight", lambda: Linear(V, V), lb.RankError, "Linear.w"),  # type: ignore[arg-type]
    ("Batchnorm1d lengths differ", lambda: Batchnorm1d(lb.zeros(3), lb.ones(3), lb.ones(4), lb.zeros(3)),
     lb.ShapeError, "one length"),
    ("Batchnorm1d mixing dtypes", lambda: Batchnorm1d(lb.zeros(3), lb.ones(3), lb.ones(3, np.float64), lb.zeros(3)),
     lb.DTypeError, "Batchnorm1d: parameters mix dtypes ['float32', 'float64']"),
    ("Linear bias of another length than w's columns", lambda: Linear(lb.ones((3, 2)), lb.zeros(3)), lb.ShapeError,
     "b needs one entry per column"),
    ("Batchnorm1d eps <= 0", lambda: _bn(eps=0.0), lb.ValueRangeError, "eps"),
    ("Batchnorm1d eps infinite", lambda: _bn(eps=float("inf")), lb.ValueRangeError,
     "Batchnorm1d.eps: must be a finite number > 0, got inf"),
    ("Batchnorm1d eps that is 0 in float32", lambda: _bn(eps=1e-50), lb.ValueRangeError,
     "eps: must be a normal float32 number"),
    ("Batchnorm1d momentum outside [0, 1]", lambda: _bn(momentum=1.5), lb.ValueRangeError, "momentum"),
    ("Batchnorm1d NaN parameter", lambda: Batchnorm1d(lb.zeros(3), lb.ones(3), lb.vector([1, np.nan, 1]), lb.zeros(3)),
     lb.ValueRangeError, "gamma"),
    ("negative running variance", lambda: Batchnorm1d(lb.zeros(3), lb.vector([1, -1, 1]), lb.ones(3), lb.zeros(3)),
     lb.ValueRangeError, "negative"),
    ("Batchnorm1d negative cumulative count", lambda: _bn(momentum=None, tracked=-1), lb.ValueRangeError, "tracked"),
    ("batch renormalisation with rmax < 1", lambda: _bn(renorm=lb.Renorm(rmax=0.5)), lb.ValueRangeError, "rmax"),
    ("moments of shards with different features", lambda: lb.merge(lb.Moments.empty(3), lb.Moments.empty(4)),
     lb.ShapeError, "3 and 4"),
    ("merging no moments", lambda: lb.merge_all([]), lb.ValueRangeError, "no moments"),
    ("Dropout p outside [0, 1)", lambda: Dropout(1.0), lb.ValueRangeError, "Dropout.p"),
    ("learning rate <= 0", lambda: SGD(0.0), lb.ValueRangeError, "SGD.lr"),
    ("learning rate NaN", lambda: SGD(float("nan")), lb.ValueRangeError, "nan"),
    ("batch of one in training", lambda: lb.gradients(_net(), lb.matrix(np.ones((1, 2), F32)),
                                                        lb.matrix(np.eye(3, dtype=F32)[:1])), lb.ValueRangeError, "more than 1 sample"),
    ("empty batch into batch norm's step code", lambda: bn_forward(lb.matrix(np.ones((0, 3), F32)), _bn()),
     lb.ValueRangeError, "batch norm's forward: the batch is empty (0 rows)"),
    ("empty batch into batch norm's backward",
     lambda: bn_backward(lb.matrix(np.ones((0, 3), F32)), lb.matrix(np.ones((0, 3), F32)), _bn(), lb.zeros(3, F32),
                         lb.ones(3, F32)),
     lb.ValueRangeError, "batch norm's backward: the batch is empty (0 rows)"),
    ("labels out of range", lambda: one_hot(np.array([0, 12]), 10), lb.ValueRangeError, "[0, 10)"),
    ("the PassResult itself given to update as its gradients",
     lambda: lb.update(SGD(0.1), init_state(SGD(0.1), _net()), _net(), _pass_result()),  # type: ignore[arg-type]
     lb.ArgumentError, "(a PassResult's .grads), got PassResult"),
    ("a gradient holding a numpy array",
     lambda: lb.update(SGD(0.1), init_state(SGD(0.1), _net()), _net(),
                       [lb.LinearNoBiasGradients(np.ones((2, 3), F32)), _pass_result().grads[1]]),  # type: ignore[arg-type]
     lb.ArgumentError, "update: layer 0 (LinearNoBias.w): the gradient must be a computed lazybn array"),
    ("targets that are not probabilities",
     lambda: lb.gradients(_net(), lb.matrix(np.ones((2, 2), F32)), lb.matrix(np.array([[1, 1, 0], [0, 1, 0]], F32))),
     lb.ValueRangeError, "row 0 is [1.0, 1.0, 0.0]"),
    ("NaN in a training batch", _nan_step, NumericalError, "NaN or infinity (first at row 0, column 1: nan)"),
    ("NaN in the training data", _nan_epoch, NumericalError,
     "train_epoch: step 0's batch holds NaN or infinity: x[7, 0] is -inf (the batch's first such row of x)"),
    ("target with the wrong number of classes",
     lambda: lb.gradients(_net(), lb.matrix(np.ones((2, 2), F32)), lb.matrix(np.eye(4, dtype=F32)[:2])),
     lb.ShapeError, "one column per class"),
    ("input of another dtype than the network", lambda: lb.forward(_net(), lb.matrix(np.ones((2, 2)), np.float64)),
     lb.DTypeError, "forward: the input is float64 but layer 0 (LinearNoBias) holds float32; convert one of them"),
    ("float64 data into a float32 network's training step (float32 targets)",
     lambda: train_step(_net(), SGD(0.1), init_state(SGD(0.1), _net()), lb.matrix(np.ones((2, 2))),
                        lb.matrix(np.eye(3, dtype=F32)[:2])),
     lb.DTypeError, "train_step: the input is float64 but layer 0 (LinearNoBias) holds float32"),
    ("float64 data into a float32 network's epoch",
     lambda: lb.train_epoch(_net(), SGD(0.1), init_state(SGD(0.1), _net()), np.ones((4, 2)),
                            np.eye(3, dtype=F32)[[0, 1, 2, 0]], 2, None),
     lb.DTypeError, "train_epoch: the input is float64 but layer 0 (LinearNoBias) holds float32; convert one of "
     "them (x.astype(np.float32), or a network built with dtype=np.float64)"),
    ("float64 targets (np.eye(k)[labels]) for float32 data in an epoch",
     lambda: lb.train_epoch(_net(), SGD(0.1), init_state(SGD(0.1), _net()), np.ones((4, 2), F32),
                            np.eye(3)[[0, 1, 2, 0]], 2, None),
     lb.DTypeError, "train_epoch: y (targets) is float64 but x is float32; they must agree (y.astype(np.float32))"),
    ("input with the wrong number of features", lambda: lb.forward(_net(), lb.matrix(np.ones((2, 5), F32))),
     lb.ShapeError, "takes 2 features, the input has 5"),
    ("a layer of another width than the layers before it give",
     lambda: lb.gradients([*_net(), LinearNoBias(lb.matrix(np.ones((4, 3), F32)))], lb.matrix(np.ones((2, 2), F32)),
                          lb.matrix(np.eye(3, dtype=F32)[:2])), lb.ShapeError,
     "layer 2 (LinearNoBias) takes 4 features, the layers before it give 3"),
    ("a layer of another dtype than the layers before it",
     lambda: lb.forward([LinearNoBias(lb.matrix(np.ones((2, 3), F32))), _bn(3, np.float64)],
                        lb.matrix(np.ones((2, 2), F32))), lb.DTypeError,
     "layer 1 (Batchnorm1d) holds float64 but the layers before it give float32"),
    ("train_epoch with targets for fewer samples than x",
     lambda: lb.train_epoch(_net(), SGD(0.1), init_state(SGD(0.1), _net()), np.ones((4, 2), F32),
                            np.eye(3, dtype=F32)[:3], 2, None), lb.ShapeError, "one row per sample"),
    ("accuracy with labels of another length", lambda: lb.accuracy(_net(), np.ones((4, 2), F32), np.zeros(3, int)),
     lb.ShapeError, "x has 4 samples and labels 3"),
    ("an array of rank 3 made a Manifest", lambda: lb.Manifest(np.ones((2, 2, 2), F32)), lb.RankError,
     "shape (2, 2, 2)"),
    ("an optimizer state another optimizer made",
     lambda: train_step(_net(), Momentum(0.1), init_state(RMSProp(), _net()), lb.matrix(np.ones((2, 2), F32)),
                        lb.matrix(np.eye(3, dtype=F32)[:2])), UpdateMismatchError, "made by RMSProp, not Momentum"),
    ("an optimizer given by name", lambda: init_state("sgd", _net()), lb.ArgumentError,  # type: ignore[arg-type]
     "must be an lb.SGD"),
    ("a missing optimizer state (a network saved without one)",
     lambda: lb.train_epoch(_net(), SGD(0.1), None, np.ones((4, 2), F32),  # type: ignore[arg-type]
                            np.eye(3, dtype=F32)[[0, 1, 2, 0]], 2, None), lb.ArgumentError, "lb.init_state(opt, layers)"),
    ("a numpy array as the network's input", lambda: lb.forward(_net(), np.ones((2, 2), F32)),  # type: ignore[arg-type]
     lb.ArgumentError, "forward: the input must be a lazybn Matrix"),
    ("something in the layers that is not a layer",
     lambda: lb.forward([*_net(), "softmax"], lb.matrix(np.ones((2, 2), F32))),  # type: ignore[list-item]
     lb.ArgumentError, "layers[2] is a str, not a lazybn layer"),
    ("uint8 pixels where inputs are needed", lambda: lb.accuracy(_net(), np.ones((2, 2), np.uint8), np.zeros(2, int)),
     lb.DTypeError, "lb.prepare(images, pixels)"),
    ("a string where an enum member is needed",
     lambda: lb.prepare(np.zeros((1, 2), np.uint8), "standard"),  # type: ignore[arg-type]
     lb.ArgumentError, "member of lb.Pixels"),
    ("labels that are not integers", lambda: one_hot(np.array([0.5, 1.0]), 2), lb.DTypeError,
     "integer class indices"),
    ("ghost batches that do not divide every batch of an epoch",
     lambda: lb.train_epoch([LinearNoBias(lb.matrix(np.ones((2, 3), F32))), _bn(ghost_batch=2)], SGD(0.1),
                            init_state(SGD(0.1), _net()), np.ones((5, 2), F32), np.eye(3, dtype=F32)[[0, 1, 2, 0, 1]],
                            2, None), lb.ValueRangeError, "give batches of [2, 3] rows"),
    ("saving onto a directory", lambda: lb.save(".", _net()), lb.ArgumentError,
     "is a directory"),
    ("target of another dtype than the input",
     lambda: lb.gradients(_net(), lb.matrix(np.ones((2, 2), F32)), lb.matrix(np.eye(3)[:2], np.float64)),
     lb.DTypeError, "the target is float64"),
    ("folding batch norm into a linear layer of another width",
     lambda: lb.fold_batchnorm([LinearNoBias(lb.matrix(np.ones((3, 2)))), _bn()]), lb.ShapeError,
     "layer 1 (Batchnorm1d) normalises 3 features, but the layer before it has 2 outputs"),
    ("folding batch norm into weights beyond float32",
     lambda: lb.fold_batchnorm([LinearNoBias(lb.matrix(np.ones((2, 3), F32))),
                                Batchnorm1d(lb.zeros(3), lb.zeros(3), lb.vector([1e36, 1, 1]), lb.zeros(3), eps=1e-6)]),
     NumericalError, "makes weights beyond float32's range"),
    ("clipping gradients to a norm of 0", lambda: lb.clip_grad_norm(_pass_result().grads, 0.0), lb.ValueRangeError,
     "max_norm: must be a finite number > 0"),
    ("`lazybn eval` of a file that is not there", lambda: evaluand("no-such.npz", None), lb.PersistenceError,
     "no-such.npz: No such file or directory"),
    ("`lazybn eval` of a network that is not 784 -> 10", lambda: checked("net.npz", Saved(_net(), None), None),
     lb.ArgumentError, "net.npz: the network takes 2 inputs and gives 3 outputs"),
    ("`lazybn eval` of a network saved without a preset, no --pixels",
     lambda: checked("net.npz", Saved(lb.mlp((784, 10), batchnorm=False, seed=0), None), None), lb.ArgumentError,
     "net.npz: saved without a preset: pass --pixels"),
]


@pytest.mark.parametrize("name,call,error,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_lazybn_error(name: str, call: Callable[[], object], error: type[Exception],
                                             fragment: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, lb.LazybnError)
    assert fragment in str(info.value)


if __name__ == "__main__":
    for name, call, *_ in CASES:
        try:
            call()
        except lb.LazybnError as exc:
            print(f"| {name} | `{type(exc).__name__}`: {exc} |")


def test_train_epoch_and_accuracy_check_their_data() -> None:
    """The data of ``train_epoch`` and ``accuracy`` (numpy arrays, one target or label per sample)
    is checked before any step: a mismatch never trains on part of it or fails inside numpy."""
    opt = SGD(0.1)
    x, y, labels = np.ones((4, 2), F32), np.eye(3, dtype=F32)[[0, 1, 2, 0]], np.array([0, 1, 2, 0])

    def epoch(x: Any, y: Any, rng: Any = None) -> object:
        return lb.train_epoch(_net(), opt, init_state(opt, _net()), x, y, 2, rng)

    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: epoch(x.tolist(), y), lb.ArgumentError, "x must be a numpy array, got list"),
        (lambda: epoch(x, y.tolist()), lb.ArgumentError, "y (targets) must be a numpy array"),
        (lambda: epoch(x[:, 0], y), lb.RankError, "x must be a matrix"),
        (lambda: epoch(x, labels), lb.RankError, "y (targets) must have rank 2, got shape (4,) (one-hot rows: "
         "lb.one_hot(labels, classes) makes them)"),
        (lambda: epoch(x, np.concatenate([y, y])), lb.ShapeError, "x has 4 samples and y (targets) 8"),
        (lambda: epoch(x, y, 3), lb.ArgumentError, "numpy Generator"),
        (lambda: lb.train_epoch(None, opt, init_state(opt, _net()), x, y, 2, None),  # type: ignore[arg-type]
         lb.ArgumentError, "train_epoch: layers must be a list of lazybn layers, got NoneType"),
        (lambda: lb.train_epoch(_net()[0], opt, init_state(opt, _net()), x, y, 2, None),  # type: ignore[arg-type]
         lb.ArgumentError, "train_epoch: layers must be a list of lazybn layers, got LinearNoBias"),
        (lambda: lb.train_epoch([*_net(), "softmax"], opt,  # type: ignore[list-item]
                                init_state(opt, _net()), x, y, 2, None),
         lb.ArgumentError, "train_epoch: layers[2] is a str, not a lazybn layer"),
        (lambda: epoch(x[:0], y[:0]), lb.ValueRangeError, "train_epoch: no samples (x has 0 rows)"),
        (lambda: epoch(np.ones((4, 5), F32), y), lb.ShapeError, "train_epoch: shapes (4, 5) and (2, 3) do not match; "
         "layer 0 (LinearNoBias) takes 2 features, the input has 5 columns"),
        (lambda: lb.gradients(_net(), lb.matrix(np.ones((4, 2))), lb.matrix(y)), lb.DTypeError,
         "gradients: the input is float64 but layer 0 (LinearNoBias) holds float32"),
        (lambda: lb.accuracy(_net(), x, labels[:, None]), lb.RankError, "labels must have rank 1"),
        (lambda: lb.accuracy(_net(), x, y), lb.RankError,  # type: ignore[arg-type]
         "labels must have rank 1, got shape (4, 3) (one integer "
         "class per sample, not one-hot rows: y.argmax(axis=1) gives them)"),
        (lambda: lb.accuracy(_net(), x[:0], labels[:0]), lb.ValueRangeError, "no samples"),
        (lambda: lb.accuracy(_net(), x.astype(np.float64), labels), lb.DTypeError, "accuracy: the input is float64 "
         "but layer 0 (LinearNoBias) holds float32; convert one of them (x.astype(np.float32), or a network built "
         "with dtype=np.float64)"),
        (lambda: lb.accuracy(_net(), np.ones((4, 5), F32), labels), lb.ShapeError, "accuracy: shapes (4, 5) and "
         "(2, 3) do not match; layer 0 (LinearNoBias) takes 2 features, the input has 5 columns"),
        # never a silently wrong score: NaN rows would count as class 0, label 7 as a miss
        (lambda: lb.accuracy(_net(), x, labels.astype(F32)), lb.DTypeError, "labels must be integer class indices"),
        (lambda: lb.accuracy(_net(), x, np.array([0, 1, 7, 0])), lb.ValueRangeError,
         "labels must be classes of the network's 3 outputs, in [0, 3); got values from 0 to 7"),
        (lambda: lb.accuracy(_net(), x, np.array([0, -1, 2, 0])), lb.ValueRangeError, "from -1 to 2"),
        (lambda: lb.accuracy(_net(), x, np.array([0, 1, 3, 0])), lb.ValueRangeError, "in [0, 3); got values from 0 to 3"),
        (lambda: lb.accuracy(_net(), np.where(np.arange(8).reshape(4, 2) == 5, np.nan, x), labels), NumericalError,
         "x contains NaN or infinity (first at row 2, column 1: nan)"),
        (lambda: lb.accuracy(_net(), np.full((4, 2), np.inf, F32), labels), NumericalError,
         "first at row 0, column 0: inf"),
        (lambda: lb.accuracy([Linear(lb.matrix(np.full((2, 3), 3e38, F32)), lb.vector(np.zeros(3, F32)))], x, labels),
         NumericalError, "outputs for rows 0..3 are not finite"),
    ]
    saved_without_state = None  # what lb.load gives for a network saved without its optimizer state
    cases.append((lambda: train_step(_net(), opt, saved_without_state, lb.matrix(x), lb.matrix(y)),  # type: ignore[arg-type]
                  lb.ArgumentError, "the optimizer state must be an OptState (lb.init_state(opt, layers) makes a "
                  "fresh one), got NoneType"))
    for call, error, fragment in cases:
        with pytest.raises(error) as info:
            call()
        assert fragment in str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_train_epoch_takes_integer_targets_in_the_data_dtype_and_refuses_other_float_targets(dtype: Any) -> None:
    """One-hot targets of integers (or bools) train as the same targets in x's dtype would; float
    targets of another dtype are refused in train_epoch's name, before any step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2)).astype(dtype)
    y = np.eye(3, dtype=dtype)[np.arange(12) % 3]
    net: list[lb.Layer] = [LinearNoBias(lb.matrix(rng.normal(size=(2, 3)), dtype)), _bn(3, dtype)]
    opt = SGD(0.1)

    def epoch(targets: Any) -> tuple[list[lb.Layer], lb.OptState, float]:
        return lb.train_epoch(net, opt, init_state(opt, net), x, targets, 4, None)

    want_layers, _, want_loss = epoch(y)
    for targets in (y.astype(np.int64), y.astype(np.uint8), y.astype(bool)):
        got_layers, _, got_loss = epoch(targets)
        assert got_loss == want_loss
        assert all(np.array_equal(a, b) for a, b in zip(lb.to_torch(got_layers).values(),
                                                        lb.to_torch(want_layers).values()))
    for other in (np.float16, np.float64 if dtype == np.float32 else np.float32):
        with pytest.raises(lb.DTypeError, match=re.escape(f"train_epoch: y (targets) is {np.dtype(other)} but x is "
                                                          f"{np.dtype(dtype)}; they must agree")):
            epoch(y.astype(other))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(4, 24), seed=st.integers(0, 2**32 - 1),
       poison=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_train_epoch_names_the_row_of_x_that_holds_nan(data: st.DataObject, n: int, seed: int, poison: float) -> None:
    """NaN/inf in the data stops train_epoch at the first batch holding one, naming the entry of x:
    of that batch's bad rows the first in x, and that row's first bad column."""
    batch = data.draw(st.integers(2, n))
    bad = data.draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, 1)), min_size=1, max_size=4))
    x = np.ones((n, 2), F32)
    for r, c in bad:
        x[r, c] = poison
    order = list(lb.batches(n, batch, np.random.default_rng(seed)))  # the epoch's batches, drawn as it draws them
    step = next(k for k, idx in enumerate(order) if any(r in idx for r, _ in bad))
    row = min(r for r, _ in bad if r in order[step])
    col = min(c for r, c in bad if r == row)
    opt = SGD(0.1)
    with pytest.raises(NumericalError, match=re.escape(f"train_epoch: step {step}'s batch holds NaN or infinity: "
                                                       f"x[{row}, {col}] is {poison}")):
        lb.train_epoch(_net(), opt, init_state(opt, _net()), x, np.eye(3, dtype=F32)[np.arange(n) % 3], batch,
                       np.random.default_rng(seed))
