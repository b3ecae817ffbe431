"""Continuing a stopped run: the runner trains an arm from given layers, optimizer state and
epochs done as the run that never stopped would."""

from __future__ import annotations

import numpy as np
import pytest

import lazybn as lb

from .test_experiments import _fail_on_call


def test_the_runner_continues_arms_from_their_state_and_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped in epoch 2 of the second arm (Adam, a cosine schedule over 3 epochs), then given
    each arm's layers, state and epochs: the new rows and the final layers and states are those
    of the run that never stopped, and an arm done already trains no more."""
    from lazybn.experiments.common import synthetic_split
    from lazybn.experiments.runner import Arm, Plan, Schedule, run

    arms = [Arm(name, lb.mlp((784, 16, 10), batchnorm=name == "bn", seed=0), lb.Adam(1e-3)) for name in ("bn", "plain")]
    plan, data = Plan(epochs=3, batch_size=100, schedule=Schedule.cosine), synthetic_split()
    straight = run(arms, data, plan, progress=False)
    _fail_on_call(monkeypatch, 4, KeyboardInterrupt())
    stopped = run(arms, data, plan, progress=False)
    monkeypatch.undo()
    resumed = run([Arm(a.name, stopped.layers[a.name], a.opt, stopped.states[a.name], stopped.epochs(a.name))
                   for a in arms], data, plan, progress=False)
    assert [(r["arm"], r["epoch"], r["loss"]) for r in resumed.rows] == [
        (r["arm"], r["epoch"], r["loss"]) for r in straight.rows[3:]]  # (plain, 2), (bn, 3), (plain, 3)
    for a in arms:
        assert resumed.epochs(a.name) == 3
        want, got = lb.to_torch(straight.layers[a.name]), lb.to_torch(resumed.layers[a.name])
        assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
        assert resumed.states[a.name].step == straight.states[a.name].step
        assert all(np.array_equal(x.array, y.array) for xs, ys in zip(resumed.states[a.name].slots,
                                                                      straight.states[a.name].slots)
                   for x, y in zip(xs, ys))
    done = run([Arm("bn", straight.layers["bn"], arms[0].opt, straight.states["bn"], 3)], data, plan, progress=False)
    assert done.rows == [] and done.epochs("bn") == 3
    assert all(x is y for x, y in zip(done.layers["bn"], straight.layers["bn"]))
    with pytest.raises(lb.ValueRangeError, match="Arm.done: must be an integer >= 0"):
        Arm("bn", arms[0].layers, arms[0].opt, done=-1)
