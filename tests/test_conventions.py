"""Running statistics in lazybn's (PyTorch) convention vs Keras/Flax's, simulated in plain numpy.

Behaviours 12-14 in docs/reliability.md ("Batch-norm behaviours the tests check"): the simulations
below are the oracles, the converters must map one convention's state onto the other's to 1e-12
in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazybn as lb
from lazybn.conventions import KerasBatchNorm, from_keras, momentum_from_keras, momentum_to_keras, to_keras
from lazybn.errors import ValueRangeError
from lazybn.layers import Batchnorm1d

F64 = np.ndarray[Any, np.dtype[np.float64]]


def torch_run(batches: list[F64], m: float, v0: float, unbiased: bool = True) -> tuple[F64, F64]:
    """PyTorch: r <- (1 - m) r + m b, with the unbiased batch variance."""
    c = batches[0].shape[1] if batches else 1
    mean, var = np.zeros(c), np.full(c, v0)
    for x in batches:
        mean = (1 - m) * mean + m * x.mean(axis=0)
        var = (1 - m) * var + m * x.var(axis=0, ddof=1 if unbiased else 0)
    return mean, var


def keras_run(batches: list[F64], decay: float, v0: float) -> tuple[F64, F64]:
    """Keras/Flax: r <- d r + (1 - d) b, with the biased batch variance."""
    c = batches[0].shape[1] if batches else 1
    mean, var = np.zeros(c), np.full(c, v0)
    for x in batches:
        mean = decay * mean + (1 - decay) * x.mean(axis=0)
        var = decay * var + (1 - decay) * x.var(axis=0)
    return mean, var


def _layer(mean: F64, var: F64, m: float, unbiased: bool = True) -> Batchnorm1d:
    c = mean.shape[0]
    rng = np.random.default_rng(0)
    return Batchnorm1d(lb.vector(mean, np.float64), lb.vector(var, np.float64),
                       lb.vector(rng.uniform(0.5, 2, c), np.float64), lb.vector(rng.normal(size=c), np.float64),
                       eps=1e-5, momentum=m, unbiased=unbiased)


X = np.array([[1.0], [2.0], [3.0], [4.0]])


def test_known_answers_items_12_and_13() -> None:
    mean, var = torch_run([X], 0.1, 1.0)  # item 12
    np.testing.assert_allclose([mean[0], var[0]], [0.25, 0.9 + 0.1 * 5 / 3], rtol=1e-15)
    mean, var = keras_run([X], 0.99, 1.0)  # item 13
    np.testing.assert_allclose([mean[0], var[0]], [0.025, 0.99 + 0.01 * 1.25], rtol=1e-15)
    # the converter turns item 12's layer into Keras's state after the same step at decay 0.9
    k = to_keras(_layer(*torch_run([X], 0.1, 1.0), 0.1), batch_size=4, steps=1)
    assert k.momentum == pytest.approx(0.9, abs=1e-16)
    np.testing.assert_allclose([k.moving_mean[0], k.moving_variance[0]], [0.25, 0.9 + 0.1 * 1.25], rtol=1e-14)
    # and item 13's Keras state into lazybn's after the same step at momentum 0.01
    back = from_keras(KerasBatchNorm(np.ones(1), np.zeros(1), *keras_run([X], 0.99, 1.0)), 4, 1)
    assert back.momentum == pytest.approx(0.01, abs=1e-16) and back.unbiased and back.eps == 1e-3
    np.testing.assert_allclose(back.var.array, [0.99 + 0.01 * 5 / 3], rtol=1e-14)


@given(data=st.data(), k=st.integers(0, 25), n=st.integers(2, 40), c=st.integers(1, 4),
       m=st.floats(0.0, 1.0), v0=st.floats(0.0, 5.0), loc=st.floats(-100, 100), spread=st.floats(1e-3, 30))
def test_converters_map_one_convention_onto_the_other(data: st.DataObject, k: int, n: int, c: int, m: float,
                                                      v0: float, loc: float, spread: float) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batches = [rng.normal(loc, spread * rng.uniform(0.1, 1, c), (n, c)) for _ in range(k)]
    t_mean, t_var = torch_run(batches, m, v0)
    k_mean, k_var = keras_run(batches, 1 - m, v0)
    scale = v0 + spread**2 + 1e-300
    keras = to_keras(_layer(t_mean, t_var, m), batch_size=n, steps=k, initial_var=v0)
    assert keras.momentum == 1 - m and keras.epsilon == 1e-5
    np.testing.assert_allclose(keras.moving_mean, k_mean, rtol=1e-12, atol=1e-12 * (abs(loc) + spread))
    np.testing.assert_allclose(keras.moving_variance, k_var, rtol=1e-12, atol=1e-12 * scale)
    torch = from_keras(KerasBatchNorm(keras.gamma, keras.beta, k_mean, k_var, 1 - m, 1e-5), n, k, v0)
    assert torch.var.dtype == np.float64
    assert torch.momentum is not None and abs(torch.momentum - m) <= 2**-53
    np.testing.assert_allclose(torch.mu.array, t_mean, rtol=1e-12, atol=1e-12 * (abs(loc) + spread))
    np.testing.assert_allclose(torch.var.array, t_var, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_array_equal(torch.gamma.array, keras.gamma)


@given(data=st.data(), k=st.integers(0, 10), m=st.floats(0.0, 1.0))
def test_biased_layers_convert_the_momentum_only(data: st.DataObject, k: int, m: float) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batches = [rng.normal(3.0, 2.0, (5, 3)) for _ in range(k)]
    t_mean, t_var = torch_run(batches, m, 1.0, unbiased=False)
    _, k_var = keras_run(batches, 1 - m, 1.0)
    keras = to_keras(_layer(t_mean, t_var, m, unbiased=False), batch_size=5, steps=k)
    np.testing.assert_array_equal(keras.moving_variance, t_var)
    np.testing.assert_allclose(keras.moving_variance, k_var, rtol=1e-12)
    back = from_keras(keras, 5, k, unbiased=False)
    assert not back.unbiased
    np.testing.assert_array_equal(back.var.array, t_var)


def test_unequal_batch_sizes_are_only_approximate() -> None:
    rng = np.random.default_rng(7)
    batches = [rng.normal(0, 1, (n, 2)) for n in (32, 32, 5)]
    t_mean, t_var = torch_run(batches, 0.1, 1.0)
    _, k_var = keras_run(batches, 0.9, 1.0)
    got = to_keras(_layer(t_mean, t_var, 0.1), batch_size=32, steps=3).moving_variance
    assert not np.allclose(got, k_var, rtol=1e-12)
    np.testing.assert_allclose(got, k_var, rtol=0.05)


def test_float32_layers_stay_float32() -> None:
    layer = Batchnorm1d(lb.zeros(3), lb.ones(3), lb.ones(3), lb.zeros(3))
    keras = to_keras(layer, 8, 0)
    assert keras.moving_variance.dtype == np.float32 and keras.gamma.dtype == np.float32
    assert from_keras(keras, 8, 0).var.dtype == np.float32
    assert from_keras(keras, 8, 0, dtype=np.float64).var.dtype == np.float64


@given(m=st.floats(0.0, 1.0))
def test_momentum_converters_round_trip(m: float) -> None:
    assert momentum_to_keras(m) == 1 - m
    assert abs(momentum_from_keras(momentum_to_keras(m)) - m) <= 2**-53  # 1 - (1 - m) rounds once
    assert abs(momentum_to_keras(momentum_from_keras(m)) - m) <= 2**-53
    assert momentum_to_keras(0.1) == pytest.approx(0.9) and momentum_from_keras(0.99) == pytest.approx(0.01)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_momentum_converters_reject_out_of_range(bad: float) -> None:
    with pytest.raises(ValueRangeError, match="momentum_to_keras"):
        momentum_to_keras(bad)
    with pytest.raises(ValueRangeError, match="momentum_from_keras"):
        momentum_from_keras(bad)


def test_a_network_or_another_object_where_one_layer_is_converted_is_named() -> None:
    net = lb.mlp((3, 4, 2), batchnorm=True)
    with pytest.raises(lb.ArgumentError, match="^to_keras: layer must be a Batchnorm1d \\(one layer\\), got a list$"):
        to_keras(net, batch_size=4, steps=1)  # type: ignore[arg-type]
    with pytest.raises(lb.ArgumentError, match="^from_keras: k must be a KerasBatchNorm .*got a Batchnorm1d$"):
        from_keras(net[1], batch_size=4, steps=1)  # type: ignore[arg-type]
    layer = net[1]
    assert isinstance(layer, Batchnorm1d)
    back = from_keras(to_keras(layer, 4, 1), 4, 1)  # the layers themselves convert, and back
    assert np.allclose(back.var.array, layer.var.array) and back.momentum == pytest.approx(layer.momentum)


def test_invalid_histories_are_rejected() -> None:
    layer = _layer(np.zeros(2), np.ones(2), 0.1)
    with pytest.raises(ValueRangeError, match="batch_size"):
        to_keras(layer, batch_size=1, steps=3)
    with pytest.raises(ValueRangeError, match="steps"):
        to_keras(layer, batch_size=4, steps=-1)
    for bad in (-1.0, math.inf, math.nan):  # an infinite initial variance would make every variance inf or NaN
        with pytest.raises(ValueRangeError, match="to_keras.initial_var: must be a finite number >= 0"):
            to_keras(layer, batch_size=4, steps=1, initial_var=bad)
        with pytest.raises(ValueRangeError, match="from_keras.initial_var: must be a finite number >= 0"):
            from_keras(to_keras(layer, 4, 1), batch_size=4, steps=1, initial_var=bad)
    k = KerasBatchNorm(np.ones(2), np.zeros(2), np.zeros(2), np.array([0.1, 2.0]), 0.99, 1e-3)
    with pytest.raises(ValueRangeError, match="negative running variance.*at least momentum"):
        from_keras(k, 4, 1)  # one step from v0 = 1 leaves at least 0.99: 0.1 is impossible
    with pytest.raises(ValueRangeError, match="epsilon"):
        KerasBatchNorm(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), 0.99, 0.0)
    with pytest.raises(ValueRangeError, match="momentum"):
        KerasBatchNorm(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), 1.5, 1e-3)


def keras_inference(k: KerasBatchNorm, x: F64) -> F64:
    """Keras's BatchNormalization at inference, in numpy (float64)."""
    out: F64 = k.gamma * (x - k.moving_mean) / np.sqrt(k.moving_variance + k.epsilon) + k.beta
    return out


@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 5), m=st.floats(0.0, 1.0), unbiased=st.booleans(),
       eps=st.floats(1e-6, 1e-1), k=st.integers(0, 20))
def test_gamma_beta_and_the_mean_keep_their_meaning_in_both_directions(seed: int, c: int, m: float,
                                                                      unbiased: bool, eps: float, k: int) -> None:
    """Only the variance and the momentum change convention: gamma (the scale), beta (the shift)
    and the running mean are the same arrays on both sides, so a layer whose variance needs no
    conversion (``unbiased=False``) infers in lazybn what Keras's formula gives, either way."""
    rng = np.random.default_rng(seed)
    gamma, beta = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c), rng.normal(0.0, 3.0, c)
    mean, var = rng.normal(0.0, 2.0, c), rng.uniform(0.5, 3.0, c)
    layer = Batchnorm1d(lb.vector(mean, np.float64), lb.vector(var, np.float64), lb.vector(gamma, np.float64),
                        lb.vector(beta, np.float64), eps=eps, momentum=m, unbiased=unbiased)
    keras = to_keras(layer, batch_size=8, steps=k)
    np.testing.assert_array_equal(keras.gamma, gamma)
    np.testing.assert_array_equal(keras.beta, beta)
    np.testing.assert_array_equal(keras.moving_mean, mean)
    x = rng.normal(0.0, 3.0, (6, c))
    if not unbiased:
        np.testing.assert_allclose(keras_inference(keras, x), lb.logits([layer], lb.matrix(x)).array, rtol=1e-12,
                                   atol=1e-12)
    theirs = KerasBatchNorm(gamma, beta, mean, var, 1.0 - m, eps)
    back = from_keras(theirs, 8, k, unbiased=unbiased)
    np.testing.assert_array_equal(back.gamma.array, gamma)
    np.testing.assert_array_equal(back.beta.array, beta)
    np.testing.assert_array_equal(back.mu.array, mean)
    if not unbiased:
        np.testing.assert_allclose(lb.logits([back], lb.matrix(x)).array, keras_inference(theirs, x), rtol=1e-12,
                                   atol=1e-12)
