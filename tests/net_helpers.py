"""Strategies and comparisons for whole networks (lists of layers) and optimizer states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, assert_never

import numpy as np
from hypothesis import strategies as st

import lazybn as lb
from lazybn.layers import Act, Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, Renorm
from lazybn.optim import OptState

from .helpers import F

ARRAY_FIELDS = {Linear: ("w", "b"), LinearNoBias: ("w",), Batchnorm1d: ("mu", "var", "gamma", "beta"),
                Activation: (), Dropout: ()}
SCALAR_FIELDS = {Batchnorm1d: ("eps", "momentum", "unbiased", "tracked", "renorm", "ghost_batch", "frozen",
                               "trainable"),
                 Linear: ("trainable",), LinearNoBias: ("trainable",), Activation: ("f",), Dropout: ("p",)}


def _vec(rng: np.random.Generator, n: int, dtype: np.dtype[Any], low: float = -2.0) -> lb.Vector:
    return lb.vector(rng.uniform(low, 2.0, n), dtype)


@st.composite
def networks(draw: st.DrawFn, dtype: np.dtype[Any]) -> list[Layer]:
    """Small random networks mixing every layer kind, with random (valid) parameters."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    width = draw(st.integers(1, 4))
    layers: list[Layer] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["Linear", "LinearNoBias", "Batchnorm1d", "Activation", "Dropout"]))
        if kind in ("Linear", "LinearNoBias"):
            out = draw(st.integers(1, 4))
            w = lb.matrix(rng.standard_normal((width, out)), dtype)
            trainable = draw(st.booleans())
            layers.append(Linear(w, _vec(rng, out, dtype), trainable) if kind == "Linear" else
                          LinearNoBias(w, trainable))
            width = out
        elif kind == "Batchnorm1d":
            variant: dict[str, Any] = draw(st.sampled_from([
                {}, {"ghost_batch": draw(st.integers(2, 64))}, {"frozen": True},
                {"renorm": Renorm(draw(st.none() | st.floats(1.0, 1e6)), draw(st.none() | st.floats(0.0, 1e6)))}]))
            layers.append(Batchnorm1d(_vec(rng, width, dtype), _vec(rng, width, dtype, low=0.0),
                                      _vec(rng, width, dtype), _vec(rng, width, dtype),
                                      eps=draw(st.floats(1e-12, 1e-1)),
                                      momentum=draw(st.none() | st.floats(0.0, 1.0)),  # None: cumulative
                                      unbiased=draw(st.booleans()), tracked=draw(st.integers(0, 2**40)),
                                      trainable=draw(st.booleans()), **variant))
        elif kind == "Activation":
            layers.append(Activation(draw(st.sampled_from(list(Act)))))
        else:
            layers.append(Dropout(draw(st.floats(0.0, 0.99))))
    return layers


def params_of(layer: Layer) -> tuple[lb.Manifest[Any], ...]:
    """Every array of a layer (trainable or not), in field order."""
    return tuple(getattr(layer, f) for f in ARRAY_FIELDS[type(layer)])


def random_state(layers: list[Layer], moments: int, step: int, seed: int) -> OptState:
    """An optimizer state with ``moments`` random arrays per trainable parameter."""
    rng = np.random.default_rng(seed)
    slots = []
    for layer in layers:
        trainable = params_of(layer)[2:] if isinstance(layer, Batchnorm1d) else params_of(layer)
        slots.append(tuple(lb.Manifest(np.ascontiguousarray(rng.standard_normal(p.shape).astype(p.dtype)), p.comp)
                           for p in trainable for _ in range(moments)))
    return OptState(step, tuple(slots))


def assert_bitwise(a: lb.Manifest[Any], b: lb.Manifest[Any], what: str) -> None:
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert a.array.tobytes() == b.array.tobytes(), f"{what}: values differ"


def assert_same_network(got: list[Layer], want: list[Layer]) -> None:
    """Same layer kinds, same settings, bit-identical arrays."""
    assert [type(x) for x in got] == [type(x) for x in want]
    for i, (g, w) in enumerate(zip(got, want)):
        for f in SCALAR_FIELDS.get(type(g), ()):
            assert getattr(g, f) == getattr(w, f), f"layer {i}.{f}"
            assert type(getattr(g, f)) is type(getattr(w, f)), f"layer {i}.{f} type"
        for f in ARRAY_FIELDS[type(g)]:
            assert_bitwise(getattr(g, f), getattr(w, f), f"layer {i}.{f}")


def assert_same_state(got: OptState | None, want: OptState | None) -> None:
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got.step == want.step
    assert [len(s) for s in got.slots] == [len(s) for s in want.slots]
    for i, (gs, ws) in enumerate(zip(got.slots, want.slots)):
        for j, (g, w) in enumerate(zip(gs, ws)):
            assert_bitwise(g, w, f"slot {i}.{j}")


ACT_NUMPY: dict[Act, Callable[[F], F]] = {
    Act.relu: lambda v: np.maximum(v, 0.0), Act.sigmoid: lambda v: 1.0 / (1.0 + np.exp(-v)), Act.tanh: np.tanh,
    Act.identity: lambda v: v}
"""Each activation in plain numpy."""


def numpy_inference(layers: list[Layer], x: F, batch_stats: bool = False) -> tuple[F, F]:
    """(logits, probabilities) of the inference pass, in plain numpy: batch norm with the stored
    statistics, or (``batch_stats``) with the batch's own mean and biased variance."""
    for layer in layers:
        match layer:
            case Linear(w=w, b=b):
                x = x @ w.array + b.array
            case LinearNoBias(w=w):
                x = x @ w.array
            case Batchnorm1d(mu=mu, var=var, gamma=gamma, beta=beta, eps=eps):
                m, v = (x.mean(axis=0), x.var(axis=0)) if batch_stats else (mu.array, var.array)
                x = gamma.array * (x - m) / np.sqrt(v + eps) + beta.array
            case Activation(f=f):
                x = ACT_NUMPY[f](x)
            case Dropout():
                pass
            case _:
                assert_never(layer)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return x, e / e.sum(axis=1, keepdims=True)


def torch_optimizer(torch: Any, model: Any, opt: lb.Optimizer) -> Any:
    """The torch optimizer that ``opt`` stands for: two parameter groups, the linear layers' (lr,
    weight_decay) and batch norm's (lr * bn_lr_multiplier, bn_weight_decay)."""
    nn = torch.nn
    linear = [p for m in model for p in m.parameters() if isinstance(m, nn.Linear)]
    bn = [p for m in model for p in m.parameters() if isinstance(m, nn.BatchNorm1d)]
    groups = [{"params": ps, "lr": lr, "weight_decay": wd} for ps, lr, wd in (
        (linear, opt.lr, opt.weight_decay), (bn, opt.lr * opt.bn_lr_multiplier, opt.bn_weight_decay)) if ps]
    match opt:
        case lb.SGD():
            return torch.optim.SGD(groups, lr=opt.lr)
        case lb.Momentum():
            return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.beta)
        case lb.Adam():
            return torch.optim.Adam(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                    decoupled_weight_decay=opt.decoupled_weight_decay)
        case lb.RMSProp():
            return torch.optim.RMSprop(groups, lr=opt.lr, alpha=opt.rho, eps=opt.eps)
        case _:
            assert_never(opt)


def assert_torch_steps_agree(torch: Any, model: Any, layers: list[Layer], x: F, labels: np.ndarray[Any, Any],
                             opt: lb.Optimizer = lb.SGD(0.1), steps: int = 1) -> None:
    """``steps`` steps of ``opt`` on the mean cross-entropy of one batch in torch (``model``, its
    modules in the train or eval modes set; :func:`torch_optimizer`) and in lazybn (``layers``,
    the same network): the same losses, then the same weights and batch-norm statistics (float64)."""
    torch_opt = torch_optimizer(torch, model, opt)
    state = lb.init_state(opt, layers)
    for _ in range(steps):
        torch_opt.zero_grad()
        out = model(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(labels))
        loss.backward()
        torch_opt.step()
        step = lb.train_step(layers, opt, state, lb.matrix(x), lb.matrix(np.eye(out.shape[1])[labels], np.float64))
        layers, state = step.layers, step.opt_state
        np.testing.assert_allclose(step.loss, loss.item(), rtol=1e-12)
    theirs = lb.from_torch(model.state_dict(), like=layers)
    for mine, other in zip(layers, theirs):
        for f in ARRAY_FIELDS[type(mine)]:
            np.testing.assert_allclose(getattr(mine, f).array, getattr(other, f).array, rtol=1e-10, atol=1e-12,
                                       err_msg=f)
