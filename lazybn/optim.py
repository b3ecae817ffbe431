"""Optimizers: frozen hyperparameters, explicit state in, new layers and new state out.

Nothing is mutated: ``update(opt, state, layers, grads)`` returns new layers (built with
``dataclasses.replace``) and a new :class:`OptState`; the old ones stay valid and unchanged.
Every parameter's new value and moments come from ONE kernel for the whole network (one per dtype
and ``Comp`` if it mixes them), which ``@fused`` replays on later steps.

Conventions (fixed, documented, tested):
* ``grads`` are gradients of the MEAN loss over the batch, as :mod:`lazybn.network` produces
  them; ``update`` applies no further 1/batch factor.
* Parameters: ``Linear`` (w, b), ``LinearNoBias`` (w), ``Batchnorm1d`` (gamma, beta only: the
  running mean and variance are not touched here, see ``lazybn.batchnorm.update_running``),
  ``Activation`` and ``Dropout`` none. A layer with ``trainable=False`` keeps its parameters
  and its moments (its state slots are still there, so the flag can change between steps).
* Learning rates: every parameter steps with ``lr * lr_scale``; gamma and beta with
  ``lr * lr_scale * bn_lr_multiplier``. ``lr_scale`` is a schedule factor (warm-up, decay);
  ``bn_lr_multiplier`` is a per-parameter-group learning rate, needed to reproduce a reference
  run whose batch-norm parameters received batch-SUMMED gradients (see :class:`SGD`).
* Weight decay: ``weight_decay`` for the linear layers' parameters, ``bn_weight_decay`` for
  gamma and beta, applied as :mod:`lazybn.optimizers` describes (PyTorch's rules). A zero
  decay adds nothing to the kernel.
* ``OptState.slots[i]`` holds layer i's moment arrays, parameter by parameter in the order
  above and, within a parameter, moment by moment: Adam on ``Linear`` is (m_w, v_w, m_b, v_b),
  Momentum (v_w, v_b), RMSProp (s_w, s_b), SGD (). Parameterless layers have ().
* ``OptState.step`` counts the updates made; Adam's bias correction uses t = step + 1.
* Moments below the dtype's smallest normal number are stored as zeros (``Fn.flush_subnormal``):
  a dead ReLU unit's moments decay into the subnormal range and stay (0.9 times the smallest
  subnormal rounds back to it), where x86 arithmetic takes microcode assists. A first moment there
  moves its parameter by less than ``lr * 1.2e-38 / ((1 - beta1^t) * eps)`` (Adam, float32; Momentum:
  ``lr * 1.2e-38``); a second one (Adam's v, RMSProp's s) is flushed only if eps hides its root (``negligible_root``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, assert_never, final, get_args

import numpy as np

from .array import Comp, Delayed, Manifest, Matrix, Vector, compute_all
from .errors import ArgumentError, DTypeError, LazybnError, NumericalError, ShapeError, ValueRangeError, a_kind
from .fuse.graph import Fn
from .grads import require_list
from .layers import (BN1, Activation, Batchnorm1d, Dropout, Gradients, Layer, Linear, LinearGradients, LinearNoBias,
                     LinearNoBiasGradients, NoGrad, check_layers, trains)
from .ops import add_c, amap, scale, sum_rows
from .optimizers import SGD as SGD  # the hyperparameters live there; re-exported: lazybn.optim.SGD
from .optimizers import Adam as Adam
from .optimizers import Momentum as Momentum
from .optimizers import Optimizer as Optimizer
from .optimizers import RMSProp as RMSProp
from .optimizers import as_number, negligible_root, require_optimizer
from .steady import restored, steady
from .trace import fused


class UpdateMismatchError(LazybnError, ValueError):
    """Layers, gradients and optimizer state given to :func:`update` do not line up. ``index`` is
    the offending layer's position (None when the sequences' lengths differ)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index
        super().__init__(message)


Slots = tuple[tuple[Vector | Matrix, ...], ...]  # per layer, its moment arrays (vectors and matrices, as its parameters)
OptimizerKind = Literal["SGD", "Momentum", "RMSProp", "Adam"]  # the class that made an OptState
KINDS: tuple[str, ...] = get_args(OptimizerKind)


@final
@dataclass(frozen=True, slots=True)
class OptState:
    """An optimizer's state: the number of updates made and, per layer, its moment arrays (a
    ``ValueRangeError`` for a step that is not an integer >= 0, an ``ArgumentError`` for slots
    that are not tuples of Manifests or an unknown ``optimizer``). ``optimizer`` names the
    optimizer whose moments the slots hold (:func:`init_state` records it; None: not recorded).
    :func:`update` and ``train_step`` refuse a state another optimizer made: Momentum's
    velocities and RMSProp's averages of squared gradients have the same shapes."""

    step: int
    slots: Slots
    optimizer: OptimizerKind | None = None

    def __post_init__(self) -> None:
        step: object = self.step
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueRangeError(f"OptState.step: must be an integer >= 0, got {step!r}")
        if self.optimizer is not None and self.optimizer not in KINDS:
            raise ArgumentError(f"OptState.optimizer: one of {', '.join(KINDS)} or None, "
                                f"got {self.optimizer!r}")
        for i, layer_slots in enumerate(self.slots):
            ls: object = layer_slots
            if not isinstance(ls, tuple) or not all(isinstance(a, Manifest) for a in ls):
                raise ArgumentError(f"OptState.slots[{i}]: expected a tuple of lazybn Manifest arrays")


def kind(opt: Optimizer) -> OptimizerKind:
    """The name :class:`OptState` records for ``opt`` (AdamW is ``Adam``: the same moments)."""
    match opt:
        case SGD():
            return "SGD"
        case Momentum():
            return "Momentum"
        case RMSProp():
            return "RMSProp"
        case Adam():
            return "Adam"
        case _:
            assert_never(opt)


def _moments(opt: Optimizer) -> tuple[int, tuple[int, ...]]:
    """How many moment arrays the optimizer keeps per parameter, and which of :func:`_step`'s outputs
    a step checks for NaN/inf: the new parameter, and the average of squared gradients (it can
    overflow while the parameter, divided by its root, stays finite and stops moving for good)."""
    match opt:
        case SGD():
            return 0, (0,)
        case Momentum():
            return 1, (0,)
        case RMSProp():
            return 1, (0, 1)
        case Adam():
            return 2, (0, 2)
        case _:
            assert_never(opt)


def parameters(layer: Layer) -> tuple[tuple[str, Manifest[Any]], ...]:
    """The layer's trainable parameters, named, in the slot order."""
    match layer:
        case Linear(w=w, b=b):
            return (("w", w), ("b", b))
        case LinearNoBias(w=w):
            return (("w", w),)
        case Batchnorm1d(gamma=gamma, beta=beta):
            return (("gamma", gamma), ("beta", beta))
        case Activation() | Dropout():
            return ()
        case _:
            assert_never(layer)


def _zeros_like(p: Manifest[Any]) -> Manifest[Any]:
    return Manifest(np.zeros(p.shape, p.dtype), p.comp)  # Manifest makes its array read-only


def init_state(opt: Optimizer, layers: Sequence[Layer]) -> OptState:
    """The optimizer's initial state for ``layers``: step 0, every moment array zero.

    Returns an :class:`OptState` whose slots follow the module's ordering convention; an
    ``ArgumentError`` if ``opt`` is not an optimizer or ``layers`` not a list of layers.
    """
    check_layers("init_state", layers)
    require_optimizer("init_state", opt)
    k, _ = _moments(opt)
    return OptState(0, tuple(tuple(_zeros_like(p) for _, p in parameters(layer) for _ in range(k)) for layer in layers),
                    kind(opt))


def _step(opt: Optimizer, p: Manifest[Any], grad: Manifest[Any], slots: tuple[Manifest[Any], ...], lr: float,
          wd: float, lr_scale: float, correction: tuple[float, ...]) -> tuple[Delayed[Any], ...]:
    """One parameter's new value then its new moments, delayed (``update`` computes them all at once).

    The step is ``lr_scale * (lr * direction)``: ``lr_scale`` (the schedule) and ``correction``
    (Adam's bias correction at this step, 1 / (1 - beta1^t) and 1 / (1 - beta2^t)) change from
    step to step, so they only ever meet arrays here; a replay passes them to the kernel. ``wd``
    is the parameter's weight decay: ``wd * p`` joins the gradient, or with decoupled weight
    decay the direction.
    """
    decoupled = isinstance(opt, Adam) and opt.decoupled_weight_decay
    g: Delayed[Any] | Manifest[Any] = grad + scale(wd, p) if wd and not decoupled else grad

    def descend(direction: Delayed[Any] | Manifest[Any]) -> Delayed[Any]:
        if wd and decoupled:
            direction = direction + scale(wd, p)
        return p - scale(lr_scale, scale(lr, direction))

    def moment(decayed: Delayed[Any], root: tuple[float, float] | None = None) -> Delayed[Any]:  # the module's notes
        # root: a second moment's (eps, largest bias correction), flushed only if eps hides it
        return decayed if root and not negligible_root(p.dtype, *root) else amap(Fn.flush_subnormal, decayed)

    match opt:
        case SGD():
            return (descend(g),)
        case Momentum(beta=beta):
            v = moment(scale(beta, slots[0]) + g)
            return descend(v), v
        case Adam(beta1=b1, beta2=b2, eps=eps):
            m = moment(scale(b1, slots[0]) + scale(1.0 - b1, g))
            v = moment(scale(b2, slots[1]) + scale(1.0 - b2, g * g), (eps, 1.0 / (1.0 - b2)))
            m_hat = scale(correction[0], m)
            v_hat = scale(correction[1], v)
            return descend(m_hat / add_c(amap(Fn.sqrt, v_hat), eps)), m, v
        case RMSProp(rho=rho, eps=eps):
            s = moment(scale(rho, slots[0]) + scale(1.0 - rho, g * g), (eps, 1.0))
            return descend(g / add_c(amap(Fn.sqrt, s), eps)), s
        case _:
            assert_never(opt)


def param_grads(i: int, layer: Layer, g: Gradients) -> tuple[Manifest[Any], ...]:
    """The gradients of ``parameters(layer)``, in the same order; raises on a mismatched pair."""
    match layer:
        case Linear():
            if isinstance(g, LinearGradients):
                return (g.dw, g.db)
        case LinearNoBias():
            if isinstance(g, LinearNoBiasGradients):
                return (g.dw,)
        case Batchnorm1d():
            if isinstance(g, BN1):
                return (g.dgamma, g.dbeta)
        case Activation() | Dropout():
            if isinstance(g, NoGrad):
                return ()
        case _:
            assert_never(layer)
    raise UpdateMismatchError(f"update: layer {i} is {a_kind(layer)} but its gradient is "
                              f"{a_kind(g)}; grads must come from a pass through these same layers, in order", i)


def _check(i: int, layer: Layer, params: tuple[tuple[str, Manifest[Any]], ...], grads: tuple[Manifest[Any], ...],
           slots: tuple[Manifest[Any], ...], k: int, opt: Optimizer) -> None:
    kind = type(layer).__name__
    if len(slots) != k * len(params):
        raise UpdateMismatchError(
            f"update: the optimizer state holds {len(slots)} arrays for layer {i} ({kind}) but "
            f"{type(opt).__name__} needs {k * len(params)}; make the state with init_state(opt, layers) "
            f"for this optimizer and these layers", i)
    for j, ((name, p), g) in enumerate(zip(params, grads)):
        where = f"update: layer {i} ({kind}.{name})"
        for what, a in (("gradient", g), *(("optimizer state", s) for s in slots[j * k:(j + 1) * k])):
            if not isinstance(a, Manifest):  # a numpy array, or a Delayed not computed
                raise ArgumentError(f"{where}: the {what} must be a computed lazybn array (lb.compute(...) makes one), "
                                    f"got {type(a).__name__}")
            if a.shape != p.shape:
                raise ShapeError(where, p.shape, a.shape, f"the {what} must have the parameter's shape")
            if a.dtype != p.dtype:
                raise DTypeError(f"{where}: the {what} is {a.dtype} but the parameter is {p.dtype}")


def update(opt: Optimizer, state: OptState, layers: Sequence[Layer], grads: Sequence[Gradients],
           lr_scale: float = 1.0) -> tuple[list[Layer], OptState]:
    """One optimizer step over a network.

    Arguments:
        opt: the optimizer (its hyperparameters).
        state: the optimizer state from :func:`init_state` or the previous ``update``.
        layers: the network; ``grads[i]`` must be the gradient of ``layers[i]`` (of the mean loss).
        lr_scale: schedule factor multiplying every learning rate (finite, >= 0).

    Returns:
        ``(new_layers, new_state)``; the arguments are left unchanged. Batch norm's running
        statistics are copied over untouched.

    Raises:
        UpdateMismatchError: lengths differ, a layer is paired with another layer's gradient
            kind, or the state was made for another optimizer or network (names the layer index).
        ShapeError, DTypeError: a gradient or state array does not match its parameter.
        ValueRangeError: ``lr_scale`` is negative or not finite.
        NumericalError: a new parameter or optimizer average is NaN/inf (names the layer).
    """
    t, s, correction = prepare_update(opt, state, layers, grads, lr_scale)
    bare, _, _ = steady(layers)  # a cumulative count or renormalisation bounds trace nothing new
    fix = "lower the learning rate or check the gradients for NaN/inf"
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/inf is found and reported below, as an error
        try:
            new_layers, new_slots, witnesses = step_all(opt, bare, tuple(grads), state.slots, s, correction)
        except ValueRangeError as exc:  # a batch-norm layer refused its new gamma or beta: which one?
            for i, (layer, g, slots) in enumerate(zip(bare, grads, state.slots)):
                try:
                    step_all(opt, (layer,), (g,), (slots,), s, correction)
                except ValueRangeError:
                    break
            else:
                raise
            raise NumericalError(f"update at step {state.step}: the update makes layer {i} ({type(bare[i]).__name__}) "
                                 f"non-finite ({exc}); {fix}") from exc
    if witnesses and not np.isfinite(np.concatenate([w.array for w in witnesses])).all():
        problem = nonfinite_update(new_layers, new_slots)
        if problem is not None:
            raise NumericalError(f"update at step {state.step}: {problem}; {fix}")
    return [restored(new, old, counted=False) for new, old in zip(new_layers, layers)], OptState(t, new_slots, kind(opt))


def nonfinite_update(layers: Sequence[Layer], slots: Slots) -> str | None:
    """Which new weight or optimizer average is NaN/inf, once a witness of :func:`step_all` was
    (batch-norm layers refuse such arrays themselves); None if the arrays are finite and only a
    witness's column sum overflowed."""
    for i, layer in enumerate(layers):
        if isinstance(layer, (Linear, LinearNoBias)):
            for name in ("w", "b") if isinstance(layer, Linear) else ("w",):
                if not np.isfinite(getattr(layer, name).array).all():
                    return f"the update makes layer {i} ({type(layer).__name__}) {name} non-finite"
    for i, (layer, moments) in enumerate(zip(layers, slots)):
        if not all(np.isfinite(m.array).all() for m in moments):
            return (f"the update makes the optimizer state of layer {i} ({type(layer).__name__}) non-finite (an "
                    "average of squared gradients overflowed)")
    return None


def prepare_update(opt: Optimizer, state: OptState, layers: Sequence[Layer], grads: Sequence[Gradients],
                   lr_scale: float) -> tuple[int, float, tuple[float, ...]]:
    """Check :func:`update`'s arguments; returns :func:`schedule`'s (t, lr_scale, correction)."""
    check_layers("update", layers)
    require_list("update", grads)
    if len(grads) != len(layers):
        raise UpdateMismatchError(f"update: {len(layers)} layers, {len(grads)} gradients; there must be one "
                                  "gradient per layer")
    return schedule(opt, state, layers, lr_scale)


def require_state(op: str, state: object) -> None:
    """Refuse what is not an :class:`OptState`, e.g. the None of a network saved without one."""
    if not isinstance(state, OptState):
        raise ArgumentError(f"{op}: the optimizer state must be an OptState (lb.init_state(opt, layers) makes a "
                            f"fresh one), got {type(state).__name__}")


def schedule(opt: Optimizer, state: OptState, layers: Sequence[Layer],
             lr_scale: float) -> tuple[int, float, tuple[float, ...]]:
    """The step's numbers: the step number t, the schedule factor and Adam's bias correction at t,
    (1 / (1 - beta1^t), 1 / (1 - beta2^t)) (empty for the others); checks ``lr_scale`` and that the
    state has one entry per layer."""
    require_state("update", state)
    require_optimizer("update", opt)
    if state.optimizer is not None and state.optimizer != kind(opt):
        raise UpdateMismatchError(f"update: the optimizer state was made by {state.optimizer}, not {kind(opt)}; make "
                                  f"a fresh one with lb.init_state(opt, layers), or step with lb.{state.optimizer}(...)")
    s = as_number("update", "lr_scale", lr_scale)
    if not (math.isfinite(s) and s >= 0):
        raise ValueRangeError(f"update.lr_scale: must be a finite number >= 0, got {lr_scale!r}")
    if len(state.slots) != len(layers):
        raise UpdateMismatchError(f"update: {len(layers)} layers, optimizer state for {len(state.slots)} "
                                  "layers; the state must have one entry per layer")
    t = state.step + 1
    correction = (1.0 / (1.0 - opt.beta1**t), 1.0 / (1.0 - opt.beta2**t)) if isinstance(opt, Adam) else ()
    return t, s, correction


@fused(dynamic=("lr_scale", "correction"))
def step_all(opt: Optimizer, layers: tuple[Layer, ...], grads: tuple[Gradients, ...], slots: Slots, lr_scale: float,
             correction: tuple[float, ...]) -> tuple[list[Layer], Slots, tuple[Manifest[Any], ...]]:
    """Every parameter's step, in one kernel per (dtype, Comp) of the parameters: usually one.

    The arguments are :func:`update`'s, checked by :func:`prepare_update`; returns the new layers,
    the new slots and *witnesses*, finite if the arrays :func:`_moments` names are: a vector is its
    own, a matrix's are its column sums made in the same loop (a step checks a few hundred numbers,
    not every weight; a sum can also overflow to inf).
    """
    k, checked = _moments(opt)
    pending: dict[tuple[np.dtype[Any], Comp], list[Delayed[Any]]] = {}
    places: list[list[tuple[tuple[np.dtype[Any], Comp], int, int]]] = []  # per layer: (group, start, count)
    witnesses: list[tuple[tuple[np.dtype[Any], Comp], int]] = []  # (group, index)
    for i, (layer, g, layer_slots) in enumerate(zip(layers, grads, slots)):
        params, gs = parameters(layer), param_grads(i, layer, g)
        places.append([])
        if not trains(layer):
            _check(i, layer, params, tuple(p for _, p in params), layer_slots, k, opt)  # no gradients; state must fit
            continue  # its parameters and moments stay as they are
        _check(i, layer, params, gs, layer_slots, k, opt)
        bn = isinstance(layer, Batchnorm1d)
        lr = opt.lr * (opt.bn_lr_multiplier if bn else 1.0)
        wd = opt.bn_weight_decay if bn else opt.weight_decay
        for j, ((_, p), dp) in enumerate(zip(params, gs)):
            group = pending.setdefault((p.dtype, p.comp), [])
            outs = _step(opt, p, dp, layer_slots[j * k:(j + 1) * k], lr, wd, lr_scale, correction)
            start = len(group)
            places[-1].append(((p.dtype, p.comp), start, len(outs)))
            group.extend(outs)
            for o in checked:  # a vector is its own witness; a matrix's column sums join the group
                witnesses.append(((p.dtype, p.comp), start + o if len(p.shape) == 1 else len(group)))
                group += [sum_rows(outs[o])] if len(p.shape) == 2 else []
    done = {key: compute_all(*ds) for key, ds in pending.items()}
    new_layers: list[Layer] = []
    new_slots: list[tuple[Manifest[Any], ...]] = []
    for layer, layer_slots, where in zip(layers, slots, places):
        if not where:  # no parameters, or not trainable
            new_layers.append(layer)
            new_slots.append(layer_slots)
            continue
        stepped = [done[key][start:start + n] for key, start, n in where]
        new = [outs[0] for outs in stepped]
        new_slots.append(tuple(m for outs in stepped for m in outs[1:]))
        match layer:
            case Linear():
                new_layers.append(replace(layer, w=new[0], b=new[1]))
            case LinearNoBias():
                new_layers.append(replace(layer, w=new[0]))
            case Batchnorm1d():
                new_layers.append(replace(layer, gamma=new[0], beta=new[1]))
            case Activation() | Dropout():
                raise AssertionError("a layer without parameters has nothing to step")
            case _:
                assert_never(layer)
    return new_layers, tuple(new_slots), tuple(done[key][at] for key, at in witnesses)
