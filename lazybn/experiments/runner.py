"""The one training runner shared by ``lazybn train`` and every experiment.

It trains several *arms* (network variants) on the same data with the same batches, records
per-epoch metrics (loss, train and test accuracy, seconds), shows tqdm progress bars, and
stops cleanly on Ctrl-C (what was measured so far is returned and flagged ``interrupted``).
Each arm's row is recorded as soon as its epoch is measured, and the layers returned for an
arm are always the ones its last row measured: an epoch cut short leaves no trace. An arm can
continue a saved network: given its optimizer state and the epochs it has done, it trains the
epochs after those, with the batches, keys and schedule factors a run from the start gives them.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, final

import numpy as np
from numpy.typing import NDArray

from ..array import Comp
from ..errors import LazybnError, NumericalError, ValueRangeError
from ..layers import Layer, RenormRamp
from ..optim import Optimizer, OptState, init_state
from ..steady import renormalises
from ..train import accuracy, train_epoch

F = NDArray[np.floating[Any]]


class Schedule(enum.Enum):
    """Learning-rate schedule, as a factor of the base rate per epoch."""

    constant = "constant"
    step = "step"  # x0.1 once half of the epochs are done and again once three quarters are
    cosine = "cosine"  # half a cosine from 1 down to 0.01

    def factor(self, epoch: int, epochs: int) -> float:
        if self is Schedule.step:  # epoch (from 0) starts after ``epoch`` epochs are done
            return 0.1 ** ((2 * epoch >= epochs) + (4 * epoch >= 3 * epochs))
        if self is Schedule.cosine:
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs - 1)))  # the last epoch at 0.01
        return 1.0


@final
@dataclass(frozen=True, slots=True)
class Split:
    """Training and test data, already prepared as float inputs and one-hot targets."""

    x_train: F
    y_train: F
    labels_train: NDArray[np.int64]
    x_test: F
    labels_test: NDArray[np.int64]


@final
@dataclass(frozen=True, slots=True)
class Arm:
    """A network to train and the optimizer that trains it; to continue a network trained
    before, the optimizer ``state`` it was saved with (None: a fresh one) and the number of
    epochs it has ``done`` (the run trains it from epoch ``done + 1``)."""

    name: str
    layers: list[Layer]
    opt: Optimizer
    state: OptState | None = None
    done: int = 0

    def __post_init__(self) -> None:
        done: object = self.done
        if type(done) is not int or done < 0:
            raise ValueRangeError(f"Arm.done: must be an integer >= 0 (epochs), got {done!r}")


@final
@dataclass(frozen=True, slots=True)
class Plan:
    epochs: int
    batch_size: int
    seed: int = 0
    schedule: Schedule = Schedule.constant
    shuffle: Literal["epoch", "once", "none"] = "epoch"
    comp: Comp = Comp.Seq
    train_accuracy: bool = True
    max_train_eval: int = 60000  # samples used for train accuracy
    steps_per_epoch: int | None = None  # an "epoch" of this many batches (iteration-based runs)
    renorm_ramp: RenormRamp | None = None  # bounds step by step, for arms whose layers renormalise

    def __post_init__(self) -> None:
        steps: object = self.steps_per_epoch
        if steps is not None and (type(steps) is not int or steps < 1):
            raise ValueRangeError(f"Plan.steps_per_epoch: must be None or an integer >= 1 (batches), got {steps!r}")


@final
@dataclass(slots=True)
class Outcome:
    """The rows measured (one per arm and completed epoch), each arm's layers and optimizer
    state as its last row measured them, and why the run stopped early: Ctrl-C (``interrupted``)
    or, with ``on_error="stop"``, a lazybn error (``error``). ``done``: the epochs each arm had
    done before the run (:attr:`Arm.done`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[str, list[Layer]] = field(default_factory=dict)
    interrupted: bool = False
    error: LazybnError | None = None
    states: dict[str, OptState] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)

    def epochs(self, arm: str) -> int:
        """The number of epochs ``arm`` has done (0: its layers are the initial ones)."""
        return max((r["epoch"] for r in self.rows if r["arm"] == arm), default=self.done.get(arm, 0))


def batches_per_pass(n: int, batch_size: int) -> int:
    """The number of batches in one pass over ``n`` samples (a last batch of one sample is merged
    into the previous one, as :func:`lazybn.train.batches` does)."""
    if n <= 0:
        return 0
    k = math.ceil(n / batch_size)
    return k - 1 if k > 1 and n - (k - 1) * batch_size == 1 else k


EpochHook = Callable[[list[dict[str, Any]], dict[str, list[Layer]]], None]
CheckpointHook = Callable[[list[dict[str, Any]], dict[str, tuple[list[Layer], OptState]]], None]


def run(arms: Sequence[Arm], data: Split, plan: Plan, *, progress: bool = True,
        on_epoch: EpochHook | None = None, on_error: Literal["raise", "stop"] = "raise",
        on_checkpoint: CheckpointHook | None = None) -> Outcome:
    """Train every arm for ``plan.epochs`` epochs on the same batches; one row per arm and epoch.

    ``on_epoch(rows, layers)`` is called after each epoch with that epoch's rows and every arm's
    current layers (to print a table, record activations...); then ``on_checkpoint(rows,
    trained)`` with each arm's current layers and optimizer state (to save checkpoints).
    An arm with ``done`` epochs starts at epoch ``done + 1`` from its ``state``: the run goes on
    as one that trained it from the start would (same shuffles, keys and schedule factors, the
    step counter and a renormalisation ramp continuing from the state); its rows are the new epochs'.
    With ``plan.steps_per_epoch`` an epoch is that many batches, drawn from a fresh shuffle (and
    from further fresh shuffles when one pass over the training data has fewer batches); with
    ``shuffle`` "once" or "none" the batches go round the one fixed order, each epoch taking up
    where the previous one stopped.
    A lazybn error in training (a NaN loss raises :class:`~lazybn.errors.NumericalError`)
    propagates, or with ``on_error="stop"`` ends the run like Ctrl-C and is returned in
    ``Outcome.error`` (a ``NumericalError``'s message headed by the arm, seed and epoch it stopped).
    """
    from tqdm import tqdm

    names = [a.name for a in arms]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # rows, layers and states are kept by name
        raise ValueRangeError(f"run: every arm needs a name of its own; {twice!r} names {names.count(twice)} arms")
    outcome = Outcome(done={a.name: a.done for a in arms})
    states: dict[str, tuple[list[Layer], OptState]] = {
        a.name: (list(a.layers), init_state(a.opt, a.layers) if a.state is None else a.state) for a in arms}
    order_rng = np.random.default_rng(plan.seed)
    once = order_rng.permutation(data.x_train.shape[0]) if plan.shuffle == "once" else None
    x_train, y_train = (data.x_train[once], data.y_train[once]) if once is not None else (data.x_train, data.y_train)
    n_eval = min(plan.max_train_eval, x_train.shape[0])
    labels_train = data.labels_train[once] if once is not None else data.labels_train
    training = ""  # the arm and epoch under way, for an error's message
    try:
        for epoch in range(min((a.done for a in arms), default=0), plan.epochs):
            epoch_rows = []
            lr_scale = plan.schedule.factor(epoch, plan.epochs)
            for arm in arms:
                if epoch < arm.done:  # trained before: its saved layers and state are those of epoch ``done``
                    continue
                layers, state = states[arm.name]
                training = f"the network {arm.name!r} (seed {plan.seed}) in epoch {epoch + 1}"
                ramp = plan.renorm_ramp if any(renormalises(layer) for layer in layers) else None
                rng = np.random.default_rng((plan.seed, epoch)) if plan.shuffle == "epoch" else None
                per_pass = batches_per_pass(x_train.shape[0], plan.batch_size)
                n_batches = per_pass if plan.steps_per_epoch is None else plan.steps_per_epoch
                bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{plan.epochs} {arm.name}", leave=False,
                           disable=None if progress else True, unit="batch")  # None: no bar unless a terminal

                def tick(loss: float, bar: Any = bar) -> None:
                    bar.update(1)
                    if bar.n % 20 == 0:
                        bar.set_postfix(loss=f"{loss:.4f}")

                t0 = time.perf_counter()
                parts: list[tuple[float, int]] = []  # (mean loss, batches) of each pass
                # in a fixed order (no shuffle per epoch), an epoch of steps goes on where the last one stopped
                first = 0 if rng is not None or per_pass == 0 else epoch * n_batches % per_pass
                try:
                    while True:
                        steps = min(per_pass - first, n_batches - sum(k for _, k in parts))
                        rest = slice(first * plan.batch_size, None)  # the same batches as the pass's from ``first``
                        layers, state, loss = train_epoch(layers, arm.opt, state, x_train[rest], y_train[rest],
                                                          plan.batch_size, rng, key=plan.seed * 7919 + epoch,
                                                          lr_scale=lr_scale, comp=plan.comp, progress=tick,
                                                          max_steps=steps, renorm=ramp)
                        parts.append((loss, steps))
                        first = 0
                        if steps <= 0 or sum(k for _, k in parts) >= n_batches:
                            break
                finally:
                    bar.close()
                if len(parts) > 1:
                    loss = sum(v * k for v, k in parts) / sum(k for _, k in parts)
                seconds = time.perf_counter() - t0
                row: dict[str, Any] = {"arm": arm.name, "seed": plan.seed, "epoch": epoch + 1, "loss": loss}
                if plan.train_accuracy:
                    row["train_acc"] = accuracy(layers, x_train[:n_eval], labels_train[:n_eval], comp=plan.comp)
                row["test_acc"] = accuracy(layers, data.x_test, data.labels_test, comp=plan.comp)
                row["seconds"] = seconds
                states[arm.name] = (layers, state)  # the row and the layers it measured, together
                training = ""
                outcome.rows.append(row)
                epoch_rows.append(row)
            if on_epoch is not None:
                on_epoch(epoch_rows, {name: layers for name, (layers, _) in states.items()})
            if on_checkpoint is not None:
                on_checkpoint(epoch_rows, dict(states))
    except KeyboardInterrupt:
        outcome.interrupted = True
    except LazybnError as exc:
        if on_error == "raise":
            raise
        if training and isinstance(exc, NumericalError):  # which of the networks trained side by side diverged
            exc.args = (f"{training}: {exc}",)
        outcome.error = exc
    outcome.layers = {name: layers for name, (layers, _) in states.items()}
    outcome.states = {name: state for name, (_, state) in states.items()}
    return outcome
