"""A network in another dtype (``lb.to_dtype``): every array as numpy's ``astype`` makes it, every
other field kept, the network given untouched; the result infers, trains and passes gradcheck, with
plain numpy, the float64 builder and torch's own ``.double()`` as oracles."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import Act, Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias

from .helpers import DTYPES
from .net_helpers import ARRAY_FIELDS, SCALAR_FIELDS, assert_same_network, assert_torch_steps_agree, networks, \
    numpy_inference, params_of

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def _snapshot(layers: list[Layer]) -> list[list[tuple[np.dtype[Any], bytes]]]:
    return [[(a.dtype, a.array.tobytes()) for a in params_of(layer)] for layer in layers]


def _input_width(layers: list[Layer]) -> int:
    for layer in layers:
        match layer:
            case Linear(w=w) | LinearNoBias(w=w):
                return w.shape[0]
            case Batchnorm1d():
                return layer.features
    return 3  # activations and dropout only: any width


@given(data=st.data(), source=st.sampled_from(DTYPES), target=st.sampled_from(DTYPES))
def test_every_array_is_numpys_astype_and_all_else_is_kept(data: st.DataObject, source: np.dtype[Any],
                                                          target: np.dtype[Any]) -> None:
    layers = data.draw(networks(source))
    before = _snapshot(layers)
    got = lb.to_dtype(layers, target)
    assert _snapshot(layers) == before  # the network given is untouched
    assert got is not layers and [type(x) for x in got] == [type(x) for x in layers]
    for i, (g, old) in enumerate(zip(got, layers)):
        for f in SCALAR_FIELDS[type(g)]:
            assert getattr(g, f) == getattr(old, f) and type(getattr(g, f)) is type(getattr(old, f)), f"{i}.{f}"
        for f in ARRAY_FIELDS[type(g)]:
            new, was = getattr(g, f), getattr(old, f)
            want = was.array.astype(target)
            assert new.dtype == target and new.shape == was.shape and new.comp is was.comp, f"{i}.{f}"
            assert new.array.tobytes() == want.tobytes(), f"layer {i}.{f}: values are not astype's"
            assert not new.array.flags.writeable
    if source == target:
        assert_same_network(got, layers)
    if source == F32:  # float32 -> float64 -> float32 is exact
        assert_same_network(lb.to_dtype(lb.to_dtype(layers, F64), F32), layers)


@given(layers=networks(F32), seed=st.integers(0, 2**32 - 1))
def test_a_float32_network_in_float64_infers_and_trains(layers: list[Layer], seed: int) -> None:
    """Inference against plain numpy in float64 on the converted values; a training step runs in
    float64 (a batch that every ghost batch divides) and hands back float64 layers."""
    wide = lb.to_dtype(layers, np.float64)
    rng = np.random.default_rng(seed)
    ghosts = [x.ghost_batch for x in wide if isinstance(x, Batchnorm1d) and x.ghost_batch is not None]
    n = math.lcm(2, *ghosts)
    x = rng.normal(size=(n, _input_width(wide)))
    want, _ = numpy_inference(wide, x)
    got = lb.logits(wide, lb.matrix(x, np.float64)).array
    assert got.dtype == F64
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(want).max(initial=0.0))))
    if n > 512:
        return
    targets = lb.matrix(np.eye(got.shape[1])[rng.integers(0, got.shape[1], n)], np.float64)
    opt = lb.Adam(1e-3)
    step = lb.train_step(wide, opt, lb.init_state(opt, wide), lb.matrix(x, np.float64), targets, key=seed)
    assert math.isfinite(step.loss)
    assert all(a.dtype == F64 for layer in step.layers for a in params_of(layer))


def test_a_float64_network_in_float32_is_the_float32_network_of_its_seed() -> None:
    """lb.mlp draws in float64 and rounds to the dtype asked for: to_dtype rounds the same way, so
    the two float32 networks are one, and they train to the same bits."""
    kw: dict[str, Any] = dict(batchnorm=True, dropout=0.25, seed=3)
    narrow = lb.to_dtype(lb.mlp((6, 5, 4, 3), dtype=np.float64, **kw), np.float32)
    built = lb.mlp((6, 5, 4, 3), dtype=np.float32, **kw)
    assert_same_network(narrow, built)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = lb.one_hot(rng.integers(0, 3, 40), 3)
    opt = lb.Momentum(0.05)
    a, _, _ = lb.train_epoch(narrow, opt, lb.init_state(opt, narrow), x, y, 10, np.random.default_rng(1))
    b, _, _ = lb.train_epoch(built, opt, lb.init_state(opt, built), x, y, 10, np.random.default_rng(1))
    assert_same_network(a, b)


@pytest.mark.parametrize("variant", [{}, {"frozen": True}, {"ghost_batch": 4}, {"momentum": None, "unbiased": False}])
def test_gradcheck_passes_on_a_float32_network_taken_to_float64(variant: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)

    def v(a: np.ndarray[Any, Any]) -> lb.Vector:
        return lb.vector(a, np.float32)

    n = 4
    layers: list[Layer] = [LinearNoBias(lb.matrix(rng.normal(size=(5, n)) / 2, np.float32)),
                           Batchnorm1d(v(rng.normal(size=n)), v(rng.uniform(0.5, 2.0, n)), v(rng.uniform(0.5, 2.0, n)),
                                       v(rng.normal(size=n)), **variant),
                           Activation(Act.tanh), Dropout(0.25),
                           Linear(lb.matrix(rng.normal(size=(n, 3)), np.float32), v(rng.normal(size=3)))]
    x = lb.matrix(rng.normal(size=(8, 5)), np.float64)
    t = lb.matrix(np.eye(3)[rng.integers(0, 3, 8)], np.float64)
    with pytest.raises(lb.DTypeError, match=re.escape("take the network to float64 (lb.to_dtype(layers, "
                                                      "np.float64)) and pass lb.matrix(x, np.float64)")):
        lb.gradcheck(layers, lb.matrix(x.array, np.float32), lb.matrix(t.array, np.float32))
    with pytest.raises(lb.DTypeError):  # nor the float64 batch
        lb.gradcheck(layers, x, t)
    errors = lb.gradcheck(lb.to_dtype(layers, np.float64), x, t, entries=8)
    assert [(e.layer, e.name) for e in errors] == [(0, "w"), (1, "gamma"), (1, "beta"), (4, "w"), (4, "b"),
                                                   (None, "x")]
    assert max(e.error for e in errors) < 1e-6, errors


def test_torchs_double_of_the_float32_network_trains_as_the_converted_one() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    nn = torch.nn
    layers = lb.mlp((5, 4, 3), batchnorm=True, seed=0)  # float32
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3, bias=False))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in lb.to_torch(layers).items()}, strict=True)
    model = model.double()  # torch's own float32 -> float64
    wide = lb.to_dtype(layers, np.float64)
    rng = np.random.default_rng(2)
    x, labels = rng.normal(size=(8, 5)), rng.integers(0, 3, 8)
    model.train()
    assert_torch_steps_agree(torch, model, wide, x, labels, steps=2)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.longdouble, np.complex128, np.bool_, "int32", "nope",
                                   None, 3, object])
def test_a_dtype_other_than_float32_or_float64_is_refused(dtype: Any) -> None:
    with pytest.raises(lb.DTypeError, match=r"to_dtype: dtype must be float32 or float64 .*got "):
        lb.to_dtype(lb.mlp((3, 2), batchnorm=True), dtype)


def test_what_float32_cannot_hold_is_refused_naming_the_layer() -> None:
    v = lb.vector([1.0, 2.0], np.float64)
    big: list[Layer] = [Activation(Act.relu), Linear(lb.matrix([[1.0, 2.0], [1e300, 0.0]], np.float64), v)]
    with pytest.raises(lb.ValueRangeError, match=r"layer 1 \(Linear\)\.w holds values beyond float32's range"):
        lb.to_dtype(big, np.float32)
    tiny_eps: list[Layer] = [Batchnorm1d(v, v, v, v, eps=1e-40)]  # a normal float64, subnormal in float32
    with pytest.raises(lb.ValueRangeError, match=r"to_dtype: layer 0 \(Batchnorm1d\): Batchnorm1d\.eps: must be a "
                                                 r"normal float32 number"):
        lb.to_dtype(tiny_eps, np.float32)
    assert_same_network(lb.to_dtype(tiny_eps, np.float64), tiny_eps)
    with pytest.raises(lb.ArgumentError, match="to_dtype: layers must be a list of lazybn layers"):
        lb.to_dtype(Linear(lb.matrix([[1.0]]), lb.vector([1.0])), np.float64)  # type: ignore[arg-type]
