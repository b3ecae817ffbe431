"""Running statistics as a cumulative average (``momentum=None``), its count and its reset,
against plain numpy oracles (and PyTorch's ``momentum=None`` where it is installed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.errors import ArgumentError, ValueRangeError
from lazybn.fuse import cache
from lazybn.layers import BN1, Batchnorm1d
from lazybn.batchnorm import bn_forward, reset_running, update_running
from lazybn.network import _pass
from lazybn.optim import init_state

from .helpers import F


def _layer(c: int, dtype: Any = np.float64, *, mu: float = 0.0, var: float = 1.0, unbiased: bool = True,
           momentum: float | None = None, tracked: int = 0) -> Batchnorm1d:
    rng = np.random.default_rng(c)
    return Batchnorm1d(lb.vector(np.full(c, mu), dtype), lb.vector(np.full(c, var), dtype),
                       lb.vector(rng.uniform(0.5, 2.0, c), dtype), lb.vector(rng.uniform(-1.0, 1.0, c), dtype),
                       momentum=momentum, unbiased=unbiased, tracked=tracked)


def _stats(x: F, layer: Batchnorm1d) -> BN1:
    """The batch statistics a training pass hands to ``update_running``."""
    m = lb.matrix(x, x.dtype)
    _, mu, var = bn_forward(m, layer)
    return BN1(mu, var, mu, mu, x.shape[0])


def test_known_answer_two_batches() -> None:
    """Batches [1, 2, 3, 4] and [10, 20]: the mean of the batch means and of the unbiased batch
    variances, equally weighted; the first batch replaces the initial (5, 7)."""
    layer = _layer(1, mu=5.0, var=7.0)
    a, b = np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([[10.0], [20.0]])
    first = update_running(layer, _stats(a, layer))
    assert first.tracked == 1
    np.testing.assert_allclose(first.mu.array, [2.5], rtol=1e-15)
    np.testing.assert_allclose(first.var.array, [5.0 / 3.0], rtol=1e-15)
    second = update_running(first, _stats(b, first))
    assert second.tracked == 2 and layer.tracked == 0 and second.momentum is None
    np.testing.assert_allclose(second.mu.array, [8.75], rtol=1e-15)
    np.testing.assert_allclose(second.var.array, [(5.0 / 3.0 + 50.0) / 2], rtol=1e-15)  # 25.8333
    biased = update_running(update_running(replace(layer, unbiased=False), _stats(a, layer)), _stats(b, layer))
    np.testing.assert_allclose(biased.var.array, [(1.25 + 25.0) / 2], rtol=1e-15)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 9), min_size=1, max_size=6), c=st.integers(1, 5),
       start=st.integers(0, 50), unbiased=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_cumulative_average_equals_the_mean_of_the_batch_statistics(sizes: list[int], c: int, start: int,
                                                                    unbiased: bool, seed: int) -> None:
    """From a count of ``start`` batches with running (m0, v0), k more batches give
    (start·m0 + Σ means) / (start + k), and the same for the variances."""
    rng = np.random.default_rng(seed)
    layer = _layer(c, mu=0.3, var=2.0, unbiased=unbiased, tracked=start)
    means, variances = [], []
    for n in sizes:
        x = rng.normal(rng.uniform(-5, 5), rng.uniform(0.1, 3), (n, c))
        means.append(x.mean(axis=0))
        variances.append(x.var(axis=0, ddof=1 if unbiased else 0))
        layer = update_running(layer, _stats(x, layer))
    total = start + len(sizes)
    assert layer.tracked == total
    np.testing.assert_allclose(layer.mu.array, (start * 0.3 + np.sum(means, axis=0)) / total, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.var.array, (start * 2.0 + np.sum(variances, axis=0)) / total, rtol=1e-12)


def test_a_momentum_layer_does_not_count() -> None:
    layer = _layer(3, momentum=0.1, tracked=4)
    x = np.random.default_rng(0).standard_normal((5, 3))
    new = update_running(layer, _stats(x, layer))
    assert new.tracked == 4
    np.testing.assert_allclose(new.mu.array, 0.1 * x.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_zero_keeps_the_running_statistics_and_one_replaces_them(momentum: float) -> None:
    """The two ends of the momentum range (the weight of the new batch), through a whole training
    step: 0 leaves the running statistics bit for bit (it is not the cumulative average of
    ``momentum=None``), 1 makes them the batch's mean and unbiased variance (numpy oracle)."""
    rng = np.random.default_rng(4)
    layers = lb.mlp([6, 5, 3], batchnorm=True, seed=1, dtype=np.float64, momentum=momentum)
    bn = layers[1]
    assert isinstance(bn, Batchnorm1d) and bn.momentum == momentum
    start = replace(bn, mu=lb.vector(rng.standard_normal(5)), var=lb.vector(rng.uniform(0.5, 2.0, 5)))
    layers = [layers[0], start, *layers[2:]]
    x, tgt = rng.standard_normal((8, 6)), np.eye(3)[rng.integers(0, 3, 8)]
    h = x @ layers[0].w.array  # type: ignore[union-attr]  # the batch-norm layer's input
    step = lb.train_step(layers, lb.SGD(0.05), init_state(lb.SGD(0.05), layers), lb.matrix(x), lb.matrix(tgt))
    new = step.layers[1]
    assert isinstance(new, Batchnorm1d) and new.tracked == 0
    if momentum == 0.0:
        np.testing.assert_array_equal(new.mu.array, start.mu.array)
        np.testing.assert_array_equal(new.var.array, start.var.array)
    else:
        np.testing.assert_allclose(new.mu.array, h.mean(axis=0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new.var.array, h.var(axis=0, ddof=1), rtol=1e-12)


def test_training_steps_keep_the_count_and_one_replay() -> None:
    """``train_step`` on a cumulative network: after k steps each batch-norm layer's running mean
    is the mean of the k batch means of its input (numpy oracle from the weights of each step),
    its count is k, and the step is traced once (the count is not part of the signature)."""
    rng = np.random.default_rng(3)
    layers = lb.mlp([6, 5, 3], batchnorm=True, seed=2, dtype=np.float64, momentum=None)
    opt = lb.SGD(0.05)
    state = init_state(opt, layers)
    cache.reset_stats()
    means = []
    for _ in range(4):
        x = rng.standard_normal((8, 6))
        tgt = np.eye(3)[rng.integers(0, 3, 8)]
        w = layers[0].w.array  # type: ignore[union-attr]
        means.append((x @ w).mean(axis=0))
        step = lb.train_step(layers, opt, state, lb.matrix(x, np.float64), lb.matrix(tgt, np.float64))
        layers, state = step.layers, step.opt_state
    bn = layers[1]
    assert isinstance(bn, Batchnorm1d) and bn.tracked == 4 and bn.momentum is None
    np.testing.assert_allclose(bn.mu.array, np.mean(means, axis=0), rtol=1e-10, atol=1e-12)
    assert cache.stats().traces <= 1  # the first step's trace only (none if an earlier test made it)


def test_skipped_step_keeps_the_count() -> None:
    """A step refused for an overflowing weight keeps the layers it was given, count included."""
    bn = replace(_layer(3, tracked=5), gamma=lb.vector(np.full(3, 1e10), np.float64))
    layers: list[lb.Layer] = [bn, lb.LinearNoBias(lb.matrix(np.ones((3, 2)), np.float64))]
    opt = lb.SGD(1e300)  # gamma times the normalised batch is ~1e10: the weight's update overflows
    x = lb.matrix(np.random.default_rng(0).standard_normal((5, 3)), np.float64)
    tgt = lb.matrix(np.eye(2)[[0, 1, 0, 1, 0]], np.float64)
    step = lb.train_step(layers, opt, init_state(opt, layers), x, tgt, on_nonfinite="skip")
    assert step.skipped and step.layers[0] is bn
    ok = lb.train_step(layers, lb.SGD(0.1), init_state(opt, layers), x, tgt)
    assert not ok.skipped and ok.layers[0].tracked == 6  # type: ignore[union-attr]


def test_reset_restores_the_start_and_leaves_training_outputs_alone() -> None:
    rng = np.random.default_rng(1)
    layer = _layer(4, np.float32, mu=1.5, var=3.0, tracked=7)
    fresh = reset_running(layer)
    assert fresh.tracked == 0 and fresh.mu.dtype == np.float32 and fresh.gamma is layer.gamma
    np.testing.assert_array_equal(fresh.mu.array, np.zeros(4))
    np.testing.assert_array_equal(fresh.var.array, np.ones(4))
    x = lb.matrix(rng.standard_normal((6, 4)), np.float32)
    tgt = lb.matrix(rng.standard_normal((6, 4)), np.float32)
    before, after = _pass(x, tgt, [layer]), _pass(x, tgt, [fresh])
    assert before[1].array.tobytes() == after[1].array.tobytes()  # training normalises with the batch
    assert before[0].array.tobytes() == after[0].array.tobytes()


def test_validation_of_momentum_and_count() -> None:
    with pytest.raises(ValueRangeError, match="tracked"):
        _layer(2, tracked=-1)
    for bad in (1.5, True, np.int64(3)):
        with pytest.raises(ArgumentError, match="tracked"):
            _layer(2, tracked=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueRangeError, match="or None"):
        _layer(2, momentum=1.5)
    with pytest.raises(ArgumentError, match="cumulative average"):
        lb.to_keras(_layer(2), batch_size=8, steps=3)


def test_save_and_load_keep_the_count_and_an_old_file_loads_it_as_zero(tmp_path: Path) -> None:
    layer = _layer(3, np.float32, tracked=12)
    lb.save(tmp_path / "n.npz", [layer])
    got = lb.load(tmp_path / "n.npz").layers[0]
    assert isinstance(got, Batchnorm1d) and got.momentum is None and got.tracked == 12
    with np.load(tmp_path / "n.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header.json"].tobytes())
    assert header["layers"][0]["momentum"] is None
    del header["layers"][0]["tracked"]
    header["layers"][0]["momentum"] = 0.1
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    old = lb.load(tmp_path / "old.npz").layers[0]
    assert isinstance(old, Batchnorm1d) and old.tracked == 0 and old.momentum == 0.1
    header["layers"][0]["tracked"] = -3
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(lb.PersistenceError):
        lb.load(tmp_path / "bad.npz")


def test_matches_pytorch_momentum_none() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    ref = torch.nn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    layer = _layer(3)
    for n in (4, 9, 2, 6):
        x = rng.normal(2.0, 3.0, (n, 3))
        ref.train()
        ref(torch.from_numpy(x))
        layer = update_running(layer, _stats(x, layer))
    assert layer.tracked == int(ref.num_batches_tracked)
    np.testing.assert_allclose(layer.mu.array, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.var.array, ref.running_var.numpy(), rtol=1e-12)


def test_a_new_count_keeps_every_other_field() -> None:
    """``update_running`` with a cumulative average sets the count without the constructor: every
    field but the statistics and the count must come through as it was."""
    layer = replace(_layer(3, np.float32, tracked=2), renorm=lb.Renorm(2.0, None), eps=1e-3, unbiased=False)
    new = update_running(layer, _stats(np.arange(12.0, dtype=np.float32).reshape(4, 3), layer))
    assert new.tracked == 3 and layer.tracked == 2
    assert replace(new, mu=layer.mu, var=layer.var) == replace(layer, tracked=3)  # dataclass equality, field by field
    with pytest.raises(ValueRangeError, match="tracked"):
        replace(layer, tracked=-1)
    for bad in (1.0, True):
        with pytest.raises(ArgumentError, match="tracked"):
            replace(layer, tracked=bad)  # type: ignore[arg-type]


def test_running_updates_of_another_layer_are_argument_errors() -> None:
    linear = lb.LinearNoBias(lb.matrix(np.ones((2, 2))))
    g = BN1(lb.vector([0.0, 0.0]), lb.vector([1.0, 1.0]), lb.vector([0.0, 0.0]), lb.vector([0.0, 0.0]), 4)
    with pytest.raises(ArgumentError, match="expected a Batchnorm1d and its BN1 gradients, got LinearNoBias"):
        update_running(linear, g)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="got LinearNoBias"):
        reset_running(linear)  # type: ignore[arg-type]


def test_a_training_step_counts_only_the_layers_that_keep_a_cumulative_average() -> None:
    """One step through a momentum layer with renormalisation bounds (whose bounds the step puts
    back), a frozen layer without momentum, and a cumulative one: only the last counts the batch,
    and the momentum layer's running mean is numpy's 0.9 mu + 0.1 batch mean."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3))
    y = np.eye(2)[[0, 1, 0, 1, 1, 0]]
    w = lb.matrix(np.eye(3), np.float64)
    momentum = replace(_layer(3, momentum=0.1, tracked=4), renorm=lb.Renorm(3.0, 5.0))
    frozen = replace(_layer(3, momentum=None, tracked=9), frozen=True)
    counting = _layer(3, momentum=None, tracked=2)
    net: list[lb.Layer] = [lb.LinearNoBias(w), momentum, lb.LinearNoBias(w), frozen, lb.LinearNoBias(w), counting,
                           lb.LinearNoBias(lb.matrix(np.ones((3, 2)), np.float64))]
    opt = lb.SGD(0.1)
    step = lb.train_step(net, opt, init_state(opt, net), lb.matrix(x), lb.matrix(y))
    new = [layer for layer in step.layers if isinstance(layer, Batchnorm1d)]
    assert [layer.tracked for layer in new] == [4, 9, 3]
    assert new[0].renorm == lb.Renorm(3.0, 5.0)
    np.testing.assert_allclose(new[0].mu.array, 0.1 * x.mean(axis=0), rtol=1e-12)  # mu was 0


@pytest.mark.parametrize("tracked", [2**63, 10**5000, -(10**5000)], ids=["2**63", "10**5000", "-10**5000"])
def test_a_count_beyond_int64_is_refused_by_name(tracked: int) -> None:
    """PyTorch and a saved file hold the count as an int64; a count beyond it is named (not printed
    digit by digit: Python refuses to write an int of over 4300 digits as text)."""
    with pytest.raises(ValueRangeError, match=r"tracked: must be >= 0 and < 2\*\*63"):
        _layer(2, momentum=None, tracked=tracked)


def test_the_largest_int64_count_saves_and_loads(tmp_path: Path) -> None:
    layer = _layer(3, momentum=None, tracked=2**63 - 1)
    lb.save(tmp_path / "n.npz", [layer])
    loaded = lb.load(tmp_path / "n.npz").layers[0]
    assert isinstance(loaded, Batchnorm1d) and loaded.tracked == 2**63 - 1
