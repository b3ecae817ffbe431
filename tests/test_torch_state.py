"""Networks to and from PyTorch state dicts (``lb.to_torch``, ``lb.from_torch``).

The oracle without torch is torch's own definition of the modules, written in numpy from a state
dict (``nn.Linear``: ``x @ weight.T + bias``; ``nn.BatchNorm1d`` in eval mode:
``(x - running_mean) / sqrt(running_var + eps) * weight + bias``). With torch installed (an
optional oracle), the state dict loads into the matching ``nn.Sequential`` and a training step in
both libraries ends in the same state.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias

from .net_helpers import ACT_NUMPY, assert_same_network, assert_torch_steps_agree, networks

F = np.ndarray[Any, Any]

mlps = st.builds(
    lambda sizes, bn, act, dropout, dtype, momentum: (sizes, dict(
        batchnorm=bn, act=act, dropout=dropout, dtype=dtype, momentum=momentum)),
    st.lists(st.integers(1, 6), min_size=2, max_size=4), st.booleans(), st.sampled_from(list(lb.Act)),
    st.sampled_from([0.0, 0.25]), st.sampled_from([np.float32, np.float64]), st.sampled_from([0.1, None]),
)


def torch_eval_numpy(state: dict[str, F], like: list[Layer], x: F) -> F:
    """Inference of the nn.Sequential whose state is ``state``, as torch defines each module."""
    x = x.astype(np.float64)
    for i, layer in enumerate(like):
        s = {k.split(".", 1)[1]: v.astype(np.float64) for k, v in state.items() if k.split(".")[0] == str(i)}
        match layer:
            case Linear() | LinearNoBias():
                x = x @ s["weight"].T + s.get("bias", 0.0)
            case Batchnorm1d(eps=eps):
                x = (x - s["running_mean"]) / np.sqrt(s["running_var"] + eps) * s["weight"] + s["bias"]
            case Activation(f=f):
                x = ACT_NUMPY[f](x)
            case Dropout():
                pass
    return x


def _perturbed(layers: list[Layer], seed: int) -> list[Layer]:
    """The same network, settings and all, with every array drawn afresh (running variances
    positive) and another count."""
    rng = np.random.default_rng(seed)

    def new(a: lb.Manifest[Any], low: float = -1.0) -> Any:
        return lb.Manifest(np.array(rng.uniform(low, 1.0, a.shape), a.dtype), a.comp)

    out: list[Layer] = []
    for layer in layers:
        match layer:
            case Linear(w=w, b=b):
                out.append(replace(layer, w=new(w), b=new(b)))
            case LinearNoBias(w=w):
                out.append(replace(layer, w=new(w)))
            case Batchnorm1d():
                out.append(replace(layer, mu=new(layer.mu), var=new(layer.var, 0.1), gamma=new(layer.gamma),
                                   beta=new(layer.beta), tracked=int(rng.integers(0, 50))))
            case _:
                out.append(layer)
    return out


@given(st.sampled_from([np.float32, np.float64]).flatmap(lambda dt: networks(np.dtype(dt))), st.integers(0, 2**16))
def test_round_trip_takes_every_array_from_the_state(net: list[Layer], seed: int) -> None:
    """Every layer kind and setting (renormalisation, ghost batches, cumulative averages): the state
    carries every array, and a layer's count when it keeps a cumulative average."""
    like = _perturbed(net, seed)
    if any(isinstance(layer, Batchnorm1d) and not layer.unbiased for layer in net):
        with pytest.raises(lb.ArgumentError, match="unbiased=False"):
            lb.to_torch(net)
        return
    expected = [replace(layer, tracked=other.tracked) if isinstance(layer, Batchnorm1d) and isinstance(
        other, Batchnorm1d) and layer.momentum is not None else layer for layer, other in zip(net, like)]
    assert_same_network(lb.from_torch(lb.to_torch(net), like=like), expected)


@given(mlps, st.integers(0, 2**16))
@settings(max_examples=30)
def test_state_means_what_torch_modules_compute(net: tuple[list[int], dict[str, Any]], seed: int) -> None:
    sizes, kw = net
    layers = _perturbed(lb.mlp(sizes, seed=0, **kw), seed)
    x = np.random.default_rng(seed).normal(size=(7, sizes[0])).astype(kw["dtype"])
    state = lb.to_torch(layers)
    want = torch_eval_numpy(state, layers, x)
    got = lb.logits(layers, lb.matrix(x)).array
    tol = 1e-4 if kw["dtype"] == np.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_state_keys_follow_sequential_indices() -> None:
    layers = lb.mlp((4, 3, 2), batchnorm=True, seed=0)  # LinearNoBias, Batchnorm1d, ReLU, LinearNoBias
    state = lb.to_torch(layers)
    assert sorted(state) == ["0.weight", "1.bias", "1.num_batches_tracked", "1.running_mean", "1.running_var",
                             "1.weight", "3.weight"]
    w = layers[0]
    assert isinstance(w, LinearNoBias)
    assert state["0.weight"].shape == (3, 4) and np.array_equal(state["0.weight"], w.w.array.T)
    assert state["1.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("momentum", [0.1, None])
def test_num_batches_tracked_is_the_count_of_a_cumulative_average_only(momentum: float | None) -> None:
    """torch counts batches in every layer; a lazybn layer with a momentum keeps no count (its
    ``tracked`` stays the template's), one with a cumulative average takes torch's."""
    like = lb.mlp((4, 3, 2), batchnorm=True, seed=0, momentum=momentum)
    state = dict(lb.to_torch(like))
    state["1.num_batches_tracked"] = np.array(7, np.int64)
    bn = lb.from_torch(state, like=like)[1]
    assert isinstance(bn, Batchnorm1d) and bn.tracked == (7 if momentum is None else 0)


def test_bad_states_are_refused_naming_the_key() -> None:
    like = lb.mlp((4, 3, 2), batchnorm=False, seed=0)  # Linear, ReLU, Linear
    good = lb.to_torch(like)
    with pytest.raises(lb.ArgumentError, match="'2.bias'"):
        lb.from_torch({k: v for k, v in good.items() if k != "2.bias"}, like=like)
    with pytest.raises(lb.ArgumentError, match=r"5.weight'\]; the template must have one layer per module of the "
                                                r"torch Sequential$"):
        lb.from_torch({**good, "5.weight": np.zeros((2, 2))}, like=like)
    # torch's nn.Linear has a bias by default; mlp(batchnorm=True) makes LinearNoBias layers
    no_bias = lb.mlp((4, 3, 2), batchnorm=True, seed=0)
    with pytest.raises(lb.ArgumentError, match=re.escape("['0.bias', '3.bias']; the template must have one layer per "
                                                         "module of the torch Sequential (layers [0, 3] are "
                                                         "LinearNoBias, but their modules have a bias")):
        lb.from_torch({**lb.to_torch(no_bias), "0.bias": np.zeros(3), "3.bias": np.zeros(2)}, like=no_bias)
    with pytest.raises(lb.ShapeError, match=r"outputs, inputs"):
        lb.from_torch({**good, "0.weight": good["0.weight"].T}, like=like)
    with pytest.raises(lb.ValueRangeError, match="'2.weight' contains NaN"):
        lb.from_torch({**good, "2.weight": np.full((2, 3), np.nan)}, like=like)
    with pytest.raises(lb.DTypeError, match="'0.bias'"):
        lb.from_torch({**good, "0.bias": np.array(["a", "b", "c"])}, like=like)
    bn = lb.mlp((4, 3, 2), batchnorm=True, seed=0)
    with pytest.raises(lb.ValueRangeError, match="var"):
        lb.from_torch({**lb.to_torch(bn), "1.running_var": -np.ones(3, np.float32)}, like=bn)
    biased = [lb.Batchnorm1d(layer.mu, layer.var, layer.gamma, layer.beta, unbiased=False)
              if isinstance(layer, Batchnorm1d) else layer for layer in bn]
    with pytest.raises(lb.ArgumentError, match="unbiased=False"):
        lb.to_torch(biased)
    with pytest.raises(lb.ArgumentError, match=r"from_torch: layer 1 \(Batchnorm1d\) keeps a biased running variance"):
        lb.from_torch(lb.to_torch(bn), like=biased)  # it would mix torch's unbiased average with biased batches
    # what the modules lazybn cannot represent leave out, named
    with pytest.raises(lb.ArgumentError, match=r"needs '1.weight'.*BatchNorm1d\(affine=False\).*trainable=False"):
        lb.from_torch({k: v for k, v in lb.to_torch(bn).items() if k not in ("1.weight", "1.bias")}, like=bn)
    with pytest.raises(lb.ArgumentError, match=r"needs '1.running_mean'.*track_running_stats=False"):
        lb.from_torch({k: v for k, v in lb.to_torch(bn).items() if "running" not in k and "tracked" not in k},
                      like=bn)
    with pytest.raises(lb.ArgumentError, match=r"'2.bias', which the state does not have \(its keys: \[[^]]*\]\)$"):
        lb.from_torch({k: v for k, v in good.items() if k != "2.bias"}, like=like)  # no batch-norm advice there
    # a checkpoint older than num_batches_tracked loads where the count is unused (a momentum layer)
    old = {k: v for k, v in lb.to_torch(bn).items() if "tracked" not in k}
    back, want = lb.to_torch(lb.from_torch(old, like=bn)), lb.to_torch(bn)
    assert sorted(back) == sorted(want) and all(np.array_equal(back[k], want[k]) for k in want)
    cumulative = lb.mlp((4, 3, 2), batchnorm=True, seed=0, momentum=None)
    with pytest.raises(lb.ArgumentError, match="num_batches_tracked"):
        lb.from_torch({k: v for k, v in lb.to_torch(cumulative).items() if "tracked" not in k}, like=cumulative)


def test_a_template_that_is_not_a_network_and_ragged_values_are_named() -> None:
    good = lb.to_torch(lb.mlp((4, 3, 2), batchnorm=False, seed=0))
    with pytest.raises(lb.ArgumentError, match="from_torch: layers must be a list of lazybn layers, got NoneType"):
        lb.from_torch(good, like=None)  # type: ignore[arg-type]
    with pytest.raises(lb.ArgumentError, match=r"from_torch: layers\[1\] is a Module, not a lazybn layer"):
        lb.from_torch(good, like=[*lb.mlp((4, 3), batchnorm=False), Module()])  # type: ignore[list-item]
    like = lb.mlp((2, 2), batchnorm=False, seed=0)
    with pytest.raises(lb.DTypeError, match="needs '0.weight' as numbers"):
        lb.from_torch({**lb.to_torch(like), "0.weight": [[1.0, 2.0], [3.0]]}, like=like)


class Module:
    """Something else than a lazybn layer in a template (a torch module, say)."""


def test_tensors_numpy_cannot_read_are_a_dtype_error() -> None:
    torch = pytest.importorskip("torch")
    like = lb.mlp((4, 3, 2), batchnorm=False, seed=0)
    state: dict[str, Any] = {k: torch.from_numpy(np.array(v)) for k, v in lb.to_torch(like).items()}
    state["0.weight"] = state["0.weight"].to(torch.bfloat16)
    with pytest.raises(lb.DTypeError, match=r"needs '0.weight' as numbers .*convert the state first"):
        lb.from_torch(state, like=like)
    state["0.weight"] = state["0.weight"].float().requires_grad_()  # named_parameters(), not state_dict()
    with pytest.raises(lb.DTypeError, match="convert the state first"):
        lb.from_torch(state, like=like)


def test_torch_loads_the_state_and_trains_to_the_same_state() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    nn = torch.nn
    layers = _perturbed(lb.mlp((5, 4, 3), batchnorm=True, dtype=np.float64, seed=0), 1)
    modules = [nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4, eps=1e-5, momentum=0.1), nn.ReLU(),
               nn.Linear(4, 3, bias=False)]
    model = nn.Sequential(*modules).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in lb.to_torch(layers).items()}, strict=True)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 5))
    labels = rng.integers(0, 3, 8)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), lb.logits(layers, lb.matrix(x)).array,
                                   rtol=1e-12, atol=1e-12)
    model.train()
    assert_torch_steps_agree(torch, model, layers, x, labels)
