"""Batch norm's variants (renormalisation, ghost batches, cumulative averages) where they meet the
rest of lazybn: refused training steps, replays of ``reshape``, saved files, Keras conversion."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazybn as lb
from lazybn import trace
from lazybn.errors import ArgumentError, PersistenceError, ValueRangeError
from lazybn.batchnorm import bn_forward, ghost_forward, renorm_backward, renorm_forward
from lazybn.layers import BN1, Batchnorm1d, Renorm
from lazybn.network import _pass
from lazybn.optim import init_state
from lazybn.errors import NumericalError

from .net_helpers import assert_same_network


def _variant(**kw: Any) -> list[lb.Layer]:
    return [replace(layer, **kw) if isinstance(layer, Batchnorm1d) else layer
            for layer in lb.mlp((4, 3, 2), batchnorm=True, seed=0)]


@pytest.mark.parametrize("replay", [True, False])
@pytest.mark.parametrize("renorm", [Renorm(), Renorm(3.0, 5.0)])
def test_a_renorm_step_with_overflowing_batch_statistics_is_refused_like_batch_norm(renorm: Renorm,
                                                                                    replay: bool) -> None:
    """A finite float32 batch whose batch variance overflows: r (and gamma·r) is infinite or NaN.
    The step is a NumericalError naming the layer, or skipped, as with batch norm; it must not
    escape as the ValueRangeError of a layer built with gamma·r."""
    net = _variant(renorm=renorm)
    x = lb.matrix(np.array([[1e30, -1e30, 1e30, -1e30], [-1e30, 1e30, -1e30, 1e30], [1, 2, 3, 4]], np.float32))
    y = lb.matrix(np.eye(2, dtype=np.float32)[[0, 1, 0]])
    opt = lb.SGD(0.1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "REPLAY", replay)
        with pytest.raises(NumericalError, match=r"layer 1 \(Batchnorm1d\) has a non-finite batch_var"):
            lb.train_step(net, opt, init_state(opt, net), x, y)
        skipped = lb.train_step(net, opt, init_state(opt, net), x, y, on_nonfinite="skip")
    assert skipped.skipped and skipped.layers == net


def test_the_renorm_backward_does_not_validate_gamma_times_r() -> None:
    """gamma·r overflows float32 while gamma, r and the batch are finite: the backward returns
    non-finite gradients for that feature alone (for train_step to refuse), with and without
    replays alike."""
    layer = Batchnorm1d(lb.vector([0.0, 0.0]), lb.vector([0.0, 0.0]), lb.vector([3e38, 1.0]), lb.vector([0.0, 0.0]),
                        eps=1e-5, renorm=Renorm())  # r = sigma_B / sqrt(eps): about 258 for the first feature
    x = lb.matrix(np.array([[1.0, 2.0], [-1.0, 0.0], [0.0, 1.0]], np.float32))
    dz = lb.matrix(np.array([[0.5, -0.5], [-0.25, 0.25], [0.125, 0.5]], np.float32))
    for replay in (False, True, True):  # without, then the trace, then a replay
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trace, "REPLAY", replay)
            _, mu, var, r, d = renorm_forward(x, layer)
            dx, dgamma, dbeta = renorm_backward(dz, x, layer, mu, var, r, d)
        assert np.isfinite(r.array).all() and np.isfinite(dgamma.array).all() and np.isfinite(dbeta.array).all()
        assert not np.isfinite(dx.array[:, 0]).any() and np.isfinite(dx.array[:, 1]).all()


def test_a_replayed_reshape_refuses_a_strided_view_as_its_body_does() -> None:
    """A replay is given arrays of the traced shape, not of the traced layout: a transposed
    argument must raise what ``reshape`` raises, not come back as a writable copy."""
    @lb.fused
    def flat(m: lb.Matrix) -> lb.Vector:
        return lb.reshape(m, 12)

    c = lb.matrix(np.arange(12.0).reshape(4, 3))
    t = lb.transpose(lb.matrix(np.arange(12.0).reshape(3, 4)))
    assert t.shape == c.shape and t.dtype == c.dtype
    for _ in range(2):  # the trace, then a replay
        got = flat(c)
        assert np.shares_memory(got.array, c.array) and not got.array.flags.writeable
        with pytest.raises(ArgumentError, match="strided view"):
            flat(t)
    assert next(iter(flat.programs.values())) is not None  # type: ignore[attr-defined]  # replayed, not opaque


def test_renorm_bounds_are_finite_and_saved_as_json_numbers(tmp_path: Path) -> None:
    """numpy bounds save as JSON numbers; an infinite bound (which JSON cannot store) is refused
    when the Renorm is built: None is the bound left off."""
    for bad in (float("inf"), np.float64("inf")):
        with pytest.raises(ValueRangeError, match="rmax: must be a finite number >= 1"):
            Renorm(rmax=bad)
        with pytest.raises(ValueRangeError, match="dmax: must be a finite number >= 0"):
            Renorm(dmax=bad)
    net = _variant(renorm=Renorm(np.float32(3.0), np.int64(2)))  # type: ignore[arg-type]
    lb.save(tmp_path / "n.npz", net)
    got = lb.load(tmp_path / "n.npz").layers[1]
    assert isinstance(got, Batchnorm1d) and got.renorm == Renorm(3.0, 2.0)


def _edited(tmp_path: Path, edit: Any) -> Path:
    lb.save(tmp_path / "ok.npz", _variant(renorm=Renorm(3.0, 1.0), momentum=None, tracked=4))
    with np.load(tmp_path / "ok.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header.json"].tobytes())
    edit(header["layers"][1])
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "edited.npz", **arrays)
    return tmp_path / "edited.npz"


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["renorm"].update(rmax=10**400), "'rmax' is missing or invalid"),
    (lambda d: d["renorm"].update(dmax=-(10**400)), "'dmax' is missing or invalid"),
    (lambda d: d["renorm"].update(rmax=float("inf")), "Renorm.rmax"),
    (lambda d: d.update(eps=10**400), "'eps' is missing or invalid"),
    (lambda d: d.update(momentum=10**400), "'momentum' is missing or invalid"),
    (lambda d: d.update(renorm=None, ghost_batch=1), "ghost batch needs at least 2"),
    (lambda d: d.update(ghost_batch=4), "cannot be combined"),
    (lambda d: d.update(tracked=-2), "tracked"),
])
def test_hand_edited_variant_fields_are_persistence_errors(tmp_path: Path, edit: Any, match: str) -> None:
    with pytest.raises(PersistenceError, match=match):
        lb.load(_edited(tmp_path, edit))


def test_a_null_ghost_batch_loads_as_none_like_a_null_renorm(tmp_path: Path) -> None:
    got = lb.load(_edited(tmp_path, lambda d: d.update(ghost_batch=None, renorm=None))).layers[1]
    assert isinstance(got, Batchnorm1d) and got.ghost_batch is None and got.renorm is None and got.tracked == 4


def test_the_largest_count_weights_the_next_batch_and_stays() -> None:
    """``running_weights`` divides the count exactly: the largest int64 count gives (1, 2**-63), and a
    batch more leaves the count there (int64 would wrap around; a larger one could not be loaded)."""
    from lazybn.batchnorm import running_weights, update_running

    top = 2**63 - 1
    net = _variant(momentum=None, tracked=top)
    layer = net[1]
    assert isinstance(layer, Batchnorm1d)
    assert running_weights(layer) == (1.0, 2.0**-63)
    assert running_weights(replace(layer, tracked=3)) == (0.75, 0.25)
    rng = np.random.default_rng(0)
    _, mu, var = bn_forward(lb.matrix(rng.normal(size=(5, 3)), np.float32), layer)
    g = BN1(mu, var, mu, mu, 5)
    assert update_running(layer, g).tracked == top
    assert update_running(replace(layer, tracked=top - 1), g).tracked == top
    targets = lb.matrix(np.eye(2)[rng.integers(0, 2, 5)], np.float32)
    for count in (top, top - 1):  # the training step (a replay) counts as update_running does
        start = [replace(lr, tracked=count) if isinstance(lr, Batchnorm1d) else lr for lr in net]
        step = lb.train_step(start, lb.SGD(lr=0.1), init_state(lb.SGD(lr=0.1), start),
                             lb.matrix(rng.normal(size=(5, 4)), np.float32), targets)
        assert [lr.tracked for lr in step.layers if isinstance(lr, Batchnorm1d)] == [top]


def test_to_keras_of_a_ghost_layer_corrects_the_variance_per_ghost_batch() -> None:
    """Keras's virtual batches average the ghost batches' biased variances into the moving variance;
    lazybn averages the same variances made unbiased with G/(G-1). The numpy oracle is Keras's rule."""
    rng = np.random.default_rng(0)
    n, size, c, m, steps = 12, 3, 4, 0.1, 5
    layer = Batchnorm1d(lb.vector(np.zeros(c), np.float64), lb.vector(np.ones(c), np.float64),
                        lb.vector(np.ones(c), np.float64), lb.vector(np.zeros(c), np.float64), momentum=m,
                        ghost_batch=size)
    moving_mean, moving_var = np.zeros(c), np.ones(c)
    k = n // size
    for _ in range(steps):
        x = rng.normal(2.0, 3.0, (n, c))
        _, _, (g,) = _pass(lb.matrix(x, np.float64), lb.matrix(np.eye(c)[rng.integers(0, c, n)], np.float64), [layer])
        assert isinstance(g, BN1)
        layer = lb.network.update_running(layer, g)
        ghosts = [x[v::k] for v in range(k)]  # ghost batch v: rows v, v + n/size, ...
        moving_mean = (1 - m) * moving_mean + m * np.mean([gh.mean(axis=0) for gh in ghosts], axis=0)
        moving_var = (1 - m) * moving_var + m * np.mean([gh.var(axis=0) for gh in ghosts], axis=0)
    keras = lb.to_keras(layer, batch_size=n, steps=steps)
    np.testing.assert_allclose(keras.moving_mean, moving_mean, rtol=1e-12)
    np.testing.assert_allclose(keras.moving_variance, moving_var, rtol=1e-12)
    back = lb.from_keras(keras, batch_size=size, steps=steps)
    np.testing.assert_allclose(back.var.array, layer.var.array, rtol=1e-12)


def test_reset_running_is_where_the_docs_say() -> None:
    from lazybn import batchnorm, network

    assert network.reset_running is batchnorm.reset_running


def test_reset_running_changes_a_renorm_layers_training_output() -> None:
    """Batch renormalisation reads the running statistics in training (r and d), so a reset is
    not neutral for it (unlike batch norm, item 17)."""
    rng = np.random.default_rng(2)
    layer = Batchnorm1d(lb.vector([2.0, -1.0]), lb.vector([4.0, 0.5]), lb.vector([1.0, 1.0]), lb.vector([0.0, 0.0]),
                        renorm=Renorm(5.0, 5.0))
    x = lb.matrix(rng.standard_normal((6, 2)), np.float32)
    y = lb.matrix(np.eye(2)[rng.integers(0, 2, 6)], np.float32)
    before, after = _pass(x, y, [layer])[1], _pass(x, y, [lb.network.reset_running(layer)])[1]
    assert not np.allclose(before.array, after.array)


def test_ghost_batches_with_dropout_and_a_cumulative_average_replay_bitwise() -> None:
    """Ghost batches, dropout, momentum None and RMSProp with a learning-rate schedule together:
    replayed steps equal steps that run the body."""
    rng = np.random.default_rng(7)
    net = lb.mlp([5, 6, 4, 3], batchnorm=True, seed=3, dropout=0.3, momentum=None)
    net = [replace(layer, ghost_batch=4) if isinstance(layer, Batchnorm1d) else layer for layer in net]
    opt = lb.RMSProp(0.01)
    data = [(lb.matrix(rng.normal(1.0, 2.0, (12, 5)), np.float32),
             lb.matrix(np.eye(3)[rng.integers(0, 3, 12)], np.float32)) for _ in range(3)]

    def train() -> tuple[list[lb.Layer], list[float]]:
        layers, state, losses = list(net), init_state(opt, net), []
        for s, (x, y) in enumerate(data):
            step = lb.train_step(layers, opt, state, x, y, key=s, lr_scale=1.0 / (s + 1))
            layers, state = step.layers, step.opt_state
            losses.append(step.loss)
        return layers, losses

    got, got_losses = train()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "REPLAY", False)
        want, want_losses = train()
    assert_same_network(got, want)
    assert got_losses == want_losses
    assert all(layer.tracked == 3 for layer in got if isinstance(layer, Batchnorm1d))


def test_the_variant_functions_called_directly_name_the_problem() -> None:
    """``lazybn.batchnorm``'s ghost and renormalisation functions, called on a layer or a batch they
    do not fit: a lazybn error saying so, not an AssertionError or a reshape's ShapeError."""
    ones = lb.vector(np.ones(2))
    ghost = Batchnorm1d(ones, ones, ones, ones, ghost_batch=3)
    for n in (8, 2, 0):
        with pytest.raises(ValueRangeError, match=f"ghost batches of 3 rows do not divide the batch of {n}"):
            ghost_forward(lb.matrix(np.ones((n, 2))), ghost)
    plain = replace(ghost, ghost_batch=None)
    with pytest.raises(ArgumentError, match="no ghost batches"):
        ghost_forward(lb.matrix(np.ones((6, 2))), plain)
    with pytest.raises(ArgumentError, match="no renormalisation settings"):
        renorm_forward(lb.matrix(np.ones((6, 2))), plain)


def test_moments_of_float32_data_keep_float64s_range() -> None:
    """A sum of squared deviations of float32 data can leave float32's range: [0, 1.3e-35] has
    m2 = 8.7e-71 (not 0) and [1e19, -1e19, 3e19] has m2 = 8e38 (not an overflow)."""
    for col in ([0.0, 1.316796e-35], [1e19, -1e19, 3e19]):
        x = np.array(col, np.float32)[:, None]
        got = lb.moments(lb.matrix(x))
        wide = x.astype(np.float64)
        np.testing.assert_allclose(got.mean.array, wide.mean(axis=0), rtol=1e-15)
        np.testing.assert_allclose(got.m2.array, np.square(wide - wide.mean(axis=0)).sum(axis=0), rtol=1e-14)
