"""Batch norm folded into linear layers for inference (``lb.fold_batchnorm``): the folded
network's logits against a plain-numpy float64 inference of the unfolded one, torch's own
folding as a second oracle, and the errors."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias

from .helpers import F
from .net_helpers import networks, numpy_inference

LINEAR = (Linear, LinearNoBias)


def _magnitude(layers: list[Layer], x: F) -> tuple[F, int]:
    """A bound on the size of every term the logits are made of (absolute values through the
    unfolded network; activations are 1-Lipschitz, and a sigmoid's output, near 0.5 for inputs
    near 0, is at most 1), and the number of roundings along a path (one per activation)."""
    m, steps = np.abs(x), 1
    for layer in layers:
        match layer:
            case Linear(w=w, b=b):
                m, steps = m @ np.abs(w.array.astype(np.float64)) + np.abs(b.array), steps + w.shape[0] + 1
            case LinearNoBias(w=w):
                m, steps = m @ np.abs(w.array.astype(np.float64)), steps + w.shape[0]
            case Batchnorm1d(mu=mu, var=var, gamma=gamma, beta=beta, eps=eps):
                s = np.abs(gamma.array.astype(np.float64)) / np.sqrt(var.array.astype(np.float64) + eps)
                m, steps = s * (m + np.abs(mu.array)) + np.abs(beta.array), steps + 4
            case Activation(f=f):
                m, steps = np.maximum(m, 1.0) if f is lb.Act.sigmoid else m, steps + 1
            case Dropout():
                pass
    return m, steps


def _expect_folded(layers: list[Layer], x: F) -> None:
    folded = lb.fold_batchnorm(layers)
    dtype = x.dtype
    want, _ = numpy_inference(layers, x.astype(np.float64))
    got = lb.logits(folded, lb.matrix(x, dtype)).array
    m, steps = _magnitude(layers, x.astype(np.float64))
    tol = 4 * steps * np.finfo(dtype).eps * m + np.finfo(dtype).tiny
    assert got.dtype == dtype
    bad = ~(np.abs(got - want) <= tol)
    assert not bad.any(), f"{bad.sum()} logits differ; got {got[bad][:3]}, want {want[bad][:3]}"
    # every batch-norm layer with a linear neighbour is gone, so is dropout, and nothing else changed
    kinds = [type(layer) for layer in folded]
    assert Dropout not in kinds
    for i, kind in enumerate(kinds):
        if kind is Batchnorm1d:
            assert kinds[i - 1] not in LINEAR if i else True, f"batch norm {i} left after a linear layer"
            assert kinds[i + 1] not in LINEAR if i + 1 < len(kinds) else True, f"batch norm {i} left before one"
    others = [layer for layer in layers if not isinstance(layer, (Batchnorm1d, Dropout, *LINEAR))]
    assert [layer for layer in folded if not isinstance(layer, (Batchnorm1d, *LINEAR))] == others
    n_linear = sum(isinstance(layer, LINEAR) for layer in layers)
    assert sum(isinstance(layer, LINEAR) for layer in folded) == n_linear
    assert len(folded) == len(layers) - (sum(isinstance(layer, Batchnorm1d) for layer in layers)
                                         - kinds.count(Batchnorm1d)) - sum(isinstance(la, Dropout) for la in layers)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([np.float32, np.float64]).flatmap(
    lambda d: st.tuples(st.just(np.dtype(d)), networks(np.dtype(d)))), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_folded_logits_match_the_unfolded_network(net: tuple[np.dtype[Any], list[Layer]], rows: int,
                                                   seed: int) -> None:
    dtype, layers = net
    width = next((layer.w.shape[0] if isinstance(layer, LINEAR) else layer.features
                  for layer in layers if isinstance(layer, (*LINEAR, Batchnorm1d))), 3)
    x = np.random.default_rng(seed).normal(0.5, 2.0, (rows, width)).astype(dtype)
    _expect_folded(layers, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_mnist_networks_fold_completely(dtype: Any) -> None:
    """``mlp``'s batch-norm network with trained-looking statistics: every batch-norm layer folds,
    a LinearNoBias before one becomes a Linear, and the logits stay those of the network."""
    rng = np.random.default_rng(3)
    layers = [replace_stats(layer, rng) for layer in lb.mlp([20, 16, 8, 4], batchnorm=True, dtype=dtype)]
    folded = lb.fold_batchnorm(layers)
    assert [type(layer).__name__ for layer in folded] == ["Linear", "Activation", "Linear", "Activation",
                                                           "LinearNoBias"]
    _expect_folded(layers, rng.normal(0.0, 1.0, (7, 20)).astype(dtype))
    assert lb.fold_batchnorm(folded) == folded  # nothing left to fold: the same layers
    assert [type(layer) for layer in layers][:3] == [LinearNoBias, Batchnorm1d, Activation]  # left as it was


def replace_stats(layer: Layer, rng: np.random.Generator) -> Layer:
    if not isinstance(layer, Batchnorm1d):
        return layer
    n, dtype = layer.features, layer.mu.dtype
    return Batchnorm1d(lb.vector(rng.normal(0, 2, n), dtype), lb.vector(rng.uniform(0.01, 5, n), dtype),
                       lb.vector(rng.normal(1, 0.5, n), dtype), lb.vector(rng.normal(0, 1, n), dtype), eps=1e-3)


def test_a_chain_of_batch_norms_before_a_linear_layer_folds_into_it() -> None:
    """Input normalisation (batch norm as the first layer) and two batch-norm layers in a row."""
    rng = np.random.default_rng(5)
    bn = [replace_stats(Batchnorm1d(lb.zeros(3, np.float64), lb.ones(3, np.float64), lb.ones(3, np.float64),
                                    lb.zeros(3, np.float64)), rng) for _ in range(2)]
    lin = Linear(lb.matrix(rng.normal(0, 1, (3, 2)), np.float64), lb.vector(rng.normal(0, 1, 2), np.float64))
    last = replace_stats(Batchnorm1d(lb.zeros(2, np.float64), lb.ones(2, np.float64), lb.ones(2, np.float64),
                                     lb.zeros(2, np.float64)), rng)
    layers: list[Layer] = [bn[0], bn[1], lin, Activation(lb.Act.tanh), last]
    folded = lb.fold_batchnorm(layers)
    assert [type(layer) for layer in folded] == [Linear, Activation, Batchnorm1d]
    _expect_folded(layers, rng.normal(0, 3, (4, 3)))


def test_matches_torchs_folding() -> None:
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_linear_bn_eval
    rng = np.random.default_rng(11)
    lin = torch.nn.Linear(6, 4, dtype=torch.float64).eval()
    bn = torch.nn.BatchNorm1d(4, eps=1e-3, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 2, 4)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.1, 3, 4)))
        bn.weight.copy_(torch.from_numpy(rng.normal(1, 0.5, 4)))
        bn.bias.copy_(torch.from_numpy(rng.normal(0, 1, 4)))
    want = fuse_linear_bn_eval(lin, bn)
    mu, var, gamma, beta = (lb.vector(t.detach().numpy(), np.float64)
                            for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    layers: list[Layer] = [Linear(lb.matrix(lin.weight.detach().numpy().T, np.float64),
                                  lb.vector(lin.bias.detach().numpy(), np.float64)),
                           Batchnorm1d(mu, var, gamma, beta, eps=1e-3)]
    (got,) = lb.fold_batchnorm(layers)
    assert isinstance(got, Linear)
    np.testing.assert_allclose(got.w.array, want.weight.detach().numpy().T, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(got.b.array, want.bias.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_bad_networks_are_named() -> None:
    f32, f64 = np.float32, np.float64
    bn3 = Batchnorm1d(lb.zeros(3, f32), lb.ones(3, f32), lb.ones(3, f32), lb.zeros(3, f32))
    with pytest.raises(lb.ShapeError, match="layer 1 .Batchnorm1d. normalises 3 features, but the layer before it "
                                            "has 2 outputs"):
        lb.fold_batchnorm([LinearNoBias(lb.ones((4, 2), f32)), bn3])
    with pytest.raises(lb.ShapeError, match="layer 0 .Batchnorm1d. normalises 3 features, but the layer after it "
                                            "takes 4 inputs"):
        lb.fold_batchnorm([bn3, LinearNoBias(lb.ones((4, 2), f32))])
    with pytest.raises(lb.DTypeError, match="layer 1 .Batchnorm1d. holds float32 but its linear neighbour holds "
                                            "float64"):
        lb.fold_batchnorm([LinearNoBias(lb.ones((2, 3), f64)), bn3])
    tiny = Batchnorm1d(lb.zeros(3, f32), lb.zeros(3, f32), lb.vector([1e36, 1.0, 1.0], f32), lb.zeros(3, f32), eps=1e-6)
    with pytest.raises(lb.NumericalError, match="layer 1 .Batchnorm1d. makes weights beyond float32's range"):
        lb.fold_batchnorm([LinearNoBias(lb.ones((2, 3), f32)), tiny])
    with pytest.raises(lb.ArgumentError, match="layers"):
        lb.fold_batchnorm(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("comp", [lb.Comp.Seq, lb.Comp.Par])
def test_a_folded_layer_keeps_the_linear_layers_dtype_comp_and_trainable(dtype: Any, comp: lb.Comp) -> None:
    """The merged ``Linear`` is the linear layer's: its dtype, its ``Comp`` (for w and b) and its
    ``trainable`` (not the batch-norm layer's); the list handed in is left as it was."""
    rng = np.random.default_rng(13)

    def bn(n: int, trainable: bool) -> Batchnorm1d:
        layer = replace_stats(Batchnorm1d(lb.zeros(n, dtype), lb.ones(n, dtype), lb.ones(n, dtype), lb.zeros(n, dtype)),
                              rng)
        assert isinstance(layer, Batchnorm1d)
        return replace(layer, trainable=trainable)

    for trainable in (True, False):
        first = LinearNoBias(lb.matrix(rng.normal(0, 1, (4, 3)), dtype, comp), trainable)
        last = Linear(lb.matrix(rng.normal(0, 1, (3, 2)), dtype, comp), lb.vector(rng.normal(0, 1, 2), dtype, comp),
                      trainable)
        layers: list[Layer] = [first, bn(3, not trainable), Activation(lb.Act.relu), bn(3, not trainable), last]
        given_layers = list(layers)
        folded = lb.fold_batchnorm(layers)
        assert layers == given_layers and all(a is b for a, b in zip(layers, given_layers))
        assert [type(layer) for layer in folded] == [Linear, Activation, Linear]
        for got in (folded[0], folded[2]):
            assert isinstance(got, Linear)
            assert got.trainable is trainable
            assert (got.w.dtype, got.b.dtype) == (np.dtype(dtype), np.dtype(dtype))
            assert (got.w.comp, got.b.comp) == (comp, comp)
        _expect_folded(layers, rng.normal(0, 1, (5, 4)).astype(dtype))


def test_a_bias_beyond_the_dtype_or_a_float64_overflow_is_a_numerical_error() -> None:
    """The bias overflows alone (a running mean far from 0, the weights small): still refused;
    and a scale beyond float64 is the NumericalError, not numpy's RuntimeWarning first."""
    f32, f64 = np.float32, np.float64
    far = Batchnorm1d(lb.vector([1e30, 0.0], f32), lb.zeros(2, f32), lb.ones(2, f32), lb.zeros(2, f32), eps=1e-20)
    with pytest.raises(lb.NumericalError, match="layer 1 .Batchnorm1d. makes weights beyond float32's range"):
        lb.fold_batchnorm([LinearNoBias(lb.matrix(np.full((2, 2), 1e-20), f32)), far])
    huge = Batchnorm1d(lb.zeros(2, f64), lb.zeros(2, f64), lb.vector([1e300, 1.0], f64), lb.zeros(2, f64), eps=1e-300)
    nets: list[list[Layer]] = [[LinearNoBias(lb.ones((3, 2), f64)), huge], [huge, LinearNoBias(lb.ones((2, 3), f64))]]
    for layers in nets:
        with pytest.raises(lb.NumericalError, match="beyond float64's range"):
            lb.fold_batchnorm(layers)


def test_dropout_between_a_linear_layer_and_batch_norm_is_left_out_and_the_layer_folds() -> None:
    rng = np.random.default_rng(9)
    lin = Linear(lb.matrix(rng.normal(0, 1, (4, 3)), np.float64), lb.vector(rng.normal(0, 1, 3), np.float64))
    bn = replace_stats(Batchnorm1d(lb.zeros(3, np.float64), lb.ones(3, np.float64), lb.ones(3, np.float64),
                                   lb.zeros(3, np.float64)), rng)
    layers: list[Layer] = [lin, Dropout(0.5), bn, Activation(lb.Act.relu), Dropout(0.2)]
    assert [type(layer) for layer in lb.fold_batchnorm(layers)] == [Linear, Activation]
    _expect_folded(layers, rng.normal(0, 2, (5, 4)))
