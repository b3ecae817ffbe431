"""Experiments on small or unusual inputs: iteration-based epochs longer than a pass over the data,
runs stopped mid-epoch or by an error, the step schedule, and well-formed report tables and JSON."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

import lazybn as lb
from lazybn.cli import main
from lazybn.experiments.common import join_warm_up, synthetic_images
from lazybn.layers import Batchnorm1d
from lazybn.errors import NumericalError

from .test_experiments import _fail_on_call, check_figures, write_csv


@given(st.integers(0, 700), st.integers(1, 300))
def test_batches_per_pass_counts_the_batches_training_draws(n: int, batch_size: int) -> None:
    from lazybn.experiments.runner import batches_per_pass
    from lazybn.train import batches

    assert batches_per_pass(n, batch_size) == len(list(batches(n, batch_size, None)))


def test_an_epoch_of_more_steps_than_one_pass_has_continues_on_fresh_shuffles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Iteration-based runs (``steps_per_epoch``) train that many batches even on a small training set,
    each pass a fresh shuffle, and report the mean loss of all of them."""
    from lazybn import SGD, mlp
    from lazybn import train as tr
    from lazybn.experiments.common import synthetic_split
    from lazybn.experiments.runner import Arm, Plan, run

    seen: list[tuple[frozenset[bytes], float]] = []  # (the batch's samples, its loss) per step
    real = tr.train_step

    def train_step(layers: Any, opt: Any, state: Any, x: Any, y: Any, **kw: Any) -> Any:
        result = real(layers, opt, state, x, y, **kw)
        seen.append((frozenset(row.tobytes() for row in x.array), result.loss))
        return result

    monkeypatch.setattr(tr, "train_step", train_step)
    data = synthetic_split(n_train=250, n_test=50)  # 3 batches of 100 per pass (100, 100, 50)
    arms = [Arm("bn", mlp((784, 8, 10), batchnorm=True, seed=0), SGD(0.05))]
    outcome = run(arms, data, Plan(epochs=2, batch_size=100, steps_per_epoch=7), progress=False)
    assert len(seen) == 14
    for epoch, row in enumerate(outcome.rows):
        mine = seen[7 * epoch: 7 * epoch + 7]
        assert row["loss"] == pytest.approx(float(np.mean([loss for _, loss in mine])), rel=1e-12)
        for first in (0, 3):  # each complete pass covers every training sample once
            assert frozenset().union(*(b for b, _ in mine[first:first + 3])) == {r.tobytes() for r in data.x_train}
        assert mine[0][0] != mine[3][0], "the second pass reused the first pass's order"



@pytest.mark.parametrize(("shuffle", "n", "steps"), [("none", 250, 2), ("none", 201, 3), ("once", 250, 2),
                                                     ("once", 250, 4), ("none", 250, 3)])
def test_iteration_epochs_in_a_fixed_order_go_round_it(shuffle: Literal["once", "none"], n: int, steps: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a shuffle per epoch, epochs of ``steps`` batches walk on through the one fixed
    order of batches (a pass's), each epoch where the previous one stopped: every sample is trained
    on, not only the first batches again and again."""
    from lazybn import SGD, mlp
    from lazybn import train as tr
    from lazybn.experiments.common import synthetic_split
    from lazybn.experiments.runner import Arm, Plan, run

    data = synthetic_split(n_train=n, n_test=50)
    index = {row.tobytes(): i for i, row in enumerate(data.x_train)}
    assert len(index) == n
    seen: list[tuple[int, ...]] = []  # the samples of every batch trained, in order
    real = tr.train_step

    def train_step(layers: Any, opt: Any, state: Any, x: Any, y: Any, **kw: Any) -> Any:
        seen.append(tuple(sorted(index[row.tobytes()] for row in x.array)))
        return real(layers, opt, state, x, y, **kw)

    monkeypatch.setattr(tr, "train_step", train_step)
    epochs = 4
    arms = [Arm("bn", mlp((784, 8, 10), batchnorm=True, seed=0), SGD(0.05))]
    run(arms, data, Plan(epochs=epochs, batch_size=100, steps_per_epoch=steps, shuffle=shuffle), progress=False)
    per_pass = -(-n // 100) - (n % 100 == 1)  # a last batch of one sample joins the one before
    assert len(seen) == epochs * steps
    cycle = seen[:per_pass]  # the fixed order's batches: disjoint, together every sample once
    assert sorted(i for b in cycle for i in b) == list(range(n))
    if shuffle == "none":
        assert cycle == [tuple(range(k * 100, min(k * 100 + 100, n) if k < per_pass - 1 else n))
                         for k in range(per_pass)]
    assert seen == [cycle[k % per_pass] for k in range(epochs * steps)]


@pytest.mark.parametrize("epochs", range(1, 13))
def test_step_schedule_divides_the_rate_once_half_and_three_quarters_of_the_epochs_are_done(epochs: int) -> None:
    from fractions import Fraction

    from lazybn.experiments.runner import Schedule

    for epoch in range(epochs):
        done = Fraction(epoch, epochs)  # epochs completed before this one, as a fraction of all
        want = 0.1 ** ((done >= Fraction(1, 2)) + (done >= Fraction(3, 4)))
        assert Schedule.step.factor(epoch, epochs) == want, (epoch, epochs)


def test_markdown_tables_show_columns_that_only_later_rows_have() -> None:
    from lazybn.experiments.deep_nets import results
    from lazybn.report import markdown_table

    key = {"act": "tanh", "init": "normal", "lr": 0.01}
    rows = [{**key, "arm": "batchnorm", "iteration": 100, "val_acc": 0.5},
            {**key, "lr": 1.0, "arm": "plain", "iteration": 100, "val_acc": 0.25},
            {**key, "lr": 1.0, "arm": "batchnorm", "iteration": 100, "val_acc": 0.75}]
    table = markdown_table(results(rows, {}))
    header = table.splitlines()[0]
    assert "plain final %" in header and "batchnorm final %" in header
    assert "| 25.00 |" in table and "| 75.00 |" in table


def test_metrics_json_is_strict_json_with_null_for_nan(tmp_path: Path) -> None:
    from lazybn.report import write_metrics

    write_metrics(tmp_path, "m", [{"arm": "a", "loss": float("nan"), "x": float("inf"), "acc": 0.5}])

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse) == [
        {"arm": "a", "loss": None, "x": None, "acc": 0.5}]


def test_metrics_csv_holds_every_row_under_every_column_in_order_of_appearance(tmp_path: Path) -> None:
    import csv

    from lazybn.report import write_metrics

    for name, rows in (("one", [{"epoch": 1, "loss": 0.25}]),
                       ("ragged", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "acc": 0.75, "loss": float("nan")}]),
                       ("none", [])):
        write_metrics(tmp_path, name, rows)
        with open(tmp_path / f"{name}.csv", newline="") as f:
            reader = csv.DictReader(f)
            got = list(reader)
            columns = reader.fieldnames
        assert columns == (list(dict.fromkeys(k for r in rows for k in r)) or None), name
        assert got == [{k: str(r.get(k, "")) for k in columns or ()} for r in rows], name
        assert len(json.loads((tmp_path / f"{name}.json").read_text())) == len(rows)


def test_report_settings_show_floats_short_and_enums_by_value(tmp_path: Path) -> None:
    from lazybn.report import write_report
    from lazybn.preprocess import Pixels

    settings = {"lr": 0.1 + 0.2, "eps": 1e-5, "pixels": Pixels.centered, "epochs": 3}
    text = write_report(tmp_path, "T", "lazybn train", settings, [("Results", "body\n")], [], True).read_text()
    assert "| lr | 0.3 |" in text and "| eps | 1e-05 |" in text  # format(v, "g"): 0.30000000000000004 is 0.3
    assert "| pixels | centered |" in text and "| epochs | 3 |" in text
    assert "## Results\n" in text and "## Environment" in text


def _probe_first_layers(seed: int, probe: NDArray[np.float32]) -> dict[str, NDArray[np.float64]]:
    """The two networks' first-layer outputs at initialisation, recomputed in numpy."""
    from lazybn.experiments.activations import networks

    nets = networks(seed)
    lin = nets["plain"][0]
    z = probe.astype(np.float64) @ lin.w.array.astype(np.float64) + lin.b.array  # type: ignore[union-attr]
    bn = nets["batchnorm"][1]
    assert isinstance(bn, Batchnorm1d)
    return {"plain": z, "batchnorm": (z - bn.mu.array) / np.sqrt(bn.var.array + bn.eps) * bn.gamma.array
            + bn.beta.array}


@pytest.mark.parametrize("call", [1, 4])  # in the first epoch's first arm; in the second epoch's second arm
def test_activations_stopped_mid_epoch_reports_each_networks_own_measurements(
        call: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lazybn.experiments.activations import QUICK
    from lazybn.experiments.common import synthetic_split
    from lazybn.preprocess import Pixels

    _fail_on_call(monkeypatch, call, KeyboardInterrupt())
    out = tmp_path / "out"
    assert main(["run", "activations", "--quick", "--out", str(out), "--no-progress"]) == 130
    report = (out / "report.md").read_text()
    rows = json.loads((out / "activations.json").read_text())
    assert all("act_mean" in r for r in rows)
    assert [(r["arm"], r["epoch"]) for r in rows] == [("plain", 0), ("batchnorm", 0)] + (
        [("plain", 1), ("batchnorm", 1)] if call == 4 else [])
    if call == 1:  # nothing trained: the report shows each network's outputs at initialisation
        want = _probe_first_layers(0, synthetic_split(Pixels.unit).x_train[:QUICK.probe])
        for arm in ("plain", "batchnorm"):
            found = re.search(rf"{arm} mean (-?[0-9.]+), std ([0-9.]+)", report)
            assert found is not None
            assert float(found.group(1)) == pytest.approx(want[arm].mean(), abs=6e-4)
            assert float(found.group(2)) == pytest.approx(want[arm].std(), abs=6e-4)


def test_population_stats_stopped_mid_epoch_still_writes_its_report(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on_call(monkeypatch, 6, KeyboardInterrupt())  # epoch 2 of the second of four arms
    out = tmp_path / "out"
    assert main(["run", "population-stats", "--quick", "--out", str(out), "--no-progress"]) == 130
    assert "interrupted" in (out / "report.md").read_text()
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["epoch"], "acc_population" in r) for r in rows] == [(1, True)] * 4 + [(2, False)]
    summary = json.loads((out / "summary.json").read_text())
    assert all(v is not None for r in summary for v in r.values())
    check_figures(out, (out / "report.md").read_text())


def test_an_experiments_report_survives_a_second_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A Ctrl-C stops training; a second one (and a SIGTERM) while the report's figure is drawn waits
    until metrics and report are written, then the run exits 130 with them whole."""
    import signal

    from lazybn.experiments import common

    _fail_on_call(monkeypatch, 3, KeyboardInterrupt())  # the first network's epoch 2
    real = common.curves
    drawn: list[int] = []

    def curves(*args: Any, **kwargs: Any) -> bool:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        drawn.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "curves", curves)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert main(["run", "bad-init-adam", "--quick", "--out", str(out), "--no-progress"]) == 130
    assert drawn == [1] and (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert "lazybn: saving what was measured; stopping once it is written\n" in capsys.readouterr().err
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["arm"], r["epoch"]) for r in rows] == [("batchnorm", 1), ("plain", 1)]
    report = (out / "report.md").read_text()
    assert "interrupted" in report
    check_figures(out, report)


def test_activations_counts_iterations_as_the_batches_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """513 training images in batches of 512 are one batch (a last batch of one is merged)."""
    from lazybn.experiments import activations
    from lazybn.train import batches

    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("mnist_train.csv", 513, 1), ("mnist_test.csv", 20, 2)):
        write_csv(data / name, *synthetic_images(n, seed))
    seen: dict[str, Any] = {}
    from lazybn.experiments.common import standard_report as real

    def report(*args: Any, **kwargs: Any) -> Path:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(activations, "standard_report", report)
    monkeypatch.setattr(activations, "FULL", replace(activations.FULL, epochs=2, shown=(0, 2)))
    assert main(["run", "activations", "--data-dir", str(data), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert seen["steps_per_epoch"] == len(list(batches(513, activations.FULL.batch_size, None))) == 1


def test_an_experiment_stopped_by_an_error_keeps_and_reports_what_it_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fail_on_call(monkeypatch, 4, NumericalError("training step 6: the loss is nan; lower the learning rate"))
    out = tmp_path / "out"
    assert main(["run", "bad-init-adam", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert "lazybn: error: the network 'plain' (seed 0) in epoch 2: training step 6: the loss is nan" in \
        capsys.readouterr().err
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["seed"], r["arm"], r["epoch"]) for r in rows] == [(0, "batchnorm", 1), (0, "plain", 1),
                                                                  (0, "batchnorm", 2)]
    assert "stopped by an error" in (out / "report.md").read_text()


@pytest.mark.parametrize("epochs", range(1, 13))
def test_cosine_schedule_runs_half_a_cosine_from_one_down_to_a_hundredth(epochs: int) -> None:
    from lazybn.experiments.runner import Schedule

    factors = [Schedule.cosine.factor(epoch, epochs) for epoch in range(epochs)]
    assert factors[0] == 1.0
    if epochs > 1:
        assert abs(factors[-1] - 0.01) < 1e-12
        assert all(a > b for a, b in zip(factors, factors[1:]))
        mid = np.interp(0.5, np.linspace(0.0, 1.0, epochs), factors)  # half-way down the cosine
        assert abs(mid - 0.505) < 0.5 / epochs


def test_same_weights_compares_every_trained_parameter() -> None:
    from lazybn.experiments.population import same_weights
    from lazybn.layers import LinearNoBias

    def net(gamma: float) -> list[lb.Layer]:
        v = lb.vector
        return [LinearNoBias(lb.matrix(np.ones((2, 2)))), Batchnorm1d(v([0.0, 0.0]), v([1.0, 1.0]),
                                                                       v([gamma, 1.0]), v([0.0, 0.0]))]

    assert same_weights({"a": net(1.0), "b": net(1.0)})
    assert not same_weights({"a": net(1.0), "b": net(2.0)})


def test_final_summary_leaves_out_a_run_stopped_before_the_last_epoch() -> None:
    from lazybn.experiments.common import final_summary

    rows = [{"arm": "bn", "seed": s, "epoch": e, "test_acc": 0.5 + 0.1 * e + 0.01 * s}
            for s, epochs in ((0, 3), (1, 3), (2, 1)) for e in range(1, epochs + 1)]
    [f] = final_summary(rows)
    assert f["epoch"] == 3 and f["runs"] == 2
    assert abs(f["test_acc mean"] - np.mean([0.8, 0.81])) < 1e-12
    assert abs(f["test_acc std"] - np.std([0.8, 0.81])) < 1e-12  # ddof 0, as mean_std documents


def test_deep_nets_iterations_are_the_longest_network_of_a_configuration() -> None:
    from lazybn.experiments.deep_nets import ACTS, LRS, SCALES, article_table, results

    act, init, lr = ACTS[0].value, "bad", LRS[0]  # tanh, init std 1, lr 0.01: a configuration the article discusses
    assert init in SCALES
    rows = [{"act": act, "init": init, "lr": lr, "arm": "plain", "iteration": it, "val_acc": 0.5} for it in (0, 100, 200)]
    rows += [{"act": act, "init": init, "lr": lr, "arm": "batchnorm", "iteration": it, "val_acc": 0.6} for it in (0, 100)]
    [line] = results(rows, {(act, init, lr, "batchnorm"): 150})  # the batch-norm network diverged
    assert line["iterations"] == 200 and line["batchnorm final %"] == "NaN at it. 150"
    [entry] = article_table([line])
    assert entry["configuration"] == "tanh, init std 1, lr 0.01"


@pytest.mark.parametrize("name", ["bad-init-adam", "activations"])
def test_quick_with_a_data_directory_is_refused_not_ignored(name: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", name, "--quick", "--data-dir", str(tmp_path), "--out", str(out), "--no-progress"]) == 2
    assert "--quick trains on synthetic data" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("stopping", [True, False])
def test_a_stop_while_kernels_compile_says_why_it_waits(stopping: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the data loads waits for the warm-up thread's compile (numba's cannot be
    interrupted); the user is told why, and only then."""

    warm = threading.Thread(target=time.sleep, args=(0.3,))
    warm.start()
    try:
        try:
            if stopping:
                raise KeyboardInterrupt
        finally:
            join_warm_up(warm)
    except KeyboardInterrupt:
        pass
    assert not warm.is_alive()
    said = "lazybn: stopping once the kernels being loaded or compiled are ready" in capsys.readouterr().err
    assert said == stopping


@pytest.mark.parametrize(("call", "stop"), [(2, KeyboardInterrupt()), (15, KeyboardInterrupt()),
                                            (15, NumericalError("training step 3: the loss is nan"))])
def test_fine_tune_stopped_while_pretraining_stops_there_and_keeps_the_runs_before(
        call: int, stop: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Quick fine-tune: each seed pretrains 2 epochs, then fine-tunes 4 arms for 3 epochs (14 calls
    of train_epoch). Stopped in the pretraining of the first seed (call 2) or of the second (call 15),
    the run goes no further: nothing is fine-tuned from a network pretrained for fewer epochs, and
    the first seed's rows are in the report."""
    from lazybn.experiments.fine_tune import ARMS, QUICK

    returned = _fail_on_call(monkeypatch, call, stop)
    out = tmp_path / "out"
    code = main(["run", "fine-tune", "--quick", "--out", str(out), "--no-progress"])
    interrupted = isinstance(stop, KeyboardInterrupt)
    assert code == (130 if interrupted else 2)
    assert len(returned) == call - 1, "training went on after the stop"
    rows = json.loads((out / "metrics.json").read_text())
    want = [(0, arm, e) for e in range(1, QUICK.epochs + 1) for arm in ARMS] if call == 15 else []
    assert [(r["seed"], r["arm"], r["epoch"]) for r in rows] == want
    assert ("interrupted" if interrupted else "stopped by an error") in (out / "report.md").read_text()
    out_text = capsys.readouterr()
    assert ("seed 0: pretrained" in out_text.out) == (call == 15)
    assert "seed 1: pretrained" not in out_text.out
    if not interrupted:
        assert "lazybn: error: training step 3: the loss is nan" in out_text.err


@pytest.mark.parametrize("call", [3, 5])  # the retention of the first seed's first epoch: its 2nd or 4th arm
def test_fine_tune_stopped_while_measuring_retention_reports_the_rows_measured(
        call: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the epoch hook that measures source retention (call 1 of ``accuracy`` is the
    pretrained network's own): the report is written, from the rows that hold the measurement."""
    from lazybn.experiments import fine_tune
    from lazybn.train import accuracy as real

    calls: list[int] = []

    def accuracy(*args: Any, **kwargs: Any) -> float:
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fine_tune, "accuracy", accuracy)
    out = tmp_path / "out"
    assert main(["run", "fine-tune", "--quick", "--out", str(out), "--no-progress"]) == 130
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["arm"], r["epoch"], "source_acc" in r) for r in rows] == [
        (arm, 1, i < call - 2) for i, arm in enumerate(fine_tune.ARMS)]
    result = {r["arm"]: r for r in json.loads((out / "result.json").read_text())}
    for r in rows:
        assert result[r["arm"]]["runs"] == ("source_acc" in r)
        if "source_acc" in r:
            assert result[r["arm"]]["target test acc %"] == f"{100 * r['test_acc']:.2f} ± 0.00"
            assert result[r["arm"]]["source retention %"] == f"{100 * r['source_acc']:.2f} ± 0.00"
    report = (out / "report.md").read_text()
    assert "Result after the last epoch (mean ± std over runs) — interrupted" in report
    assert ("every run: yes" in report) == (call == 5) and ("no epoch was measured" in report) == (call == 3)
    check_figures(out, report)


def _without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_deep_nets_workers_stopped_give_the_results_of_the_jobs_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the main process waits for its two worker processes: the jobs already under way
    finish, and their results come before the interrupted marker (the same rows as in-process)."""
    import argparse
    import itertools
    import time
    from collections.abc import Iterator
    from concurrent.futures import Future

    from threadpoolctl import threadpool_limits

    from lazybn.experiments import deep_nets as dn

    args = argparse.Namespace(quick=True, seed=0, data_dir=None, no_progress=True)
    split = dn.tf_split(args, dn.QUICK)[0]
    jobs = list(itertools.product(dn.ACTS, dn.SCALES, dn.LRS, dn.ARMS))

    def stopped(futures: dict[Future[Any], Any]) -> Iterator[Any]:
        while not any(f.running() or f.done() for f in futures):  # a worker has taken a job
            time.sleep(0.001)
        raise KeyboardInterrupt

    monkeypatch.setattr(dn, "as_completed", stopped)
    *results, (_, marker) = list(dn.train_all(args, dn.QUICK, split, jobs, 2))
    assert marker == ([], None, True)
    assert 1 <= len(results) < len(jobs)  # the jobs not started are not run
    assert len({job for job, _ in results}) == len(results)
    for job, (rows, diverged, interrupted) in results:
        with threadpool_limits(limits=1, user_api="blas"):  # as the workers (and the command) run
            want, want_diverged, _ = dn.train_one(split, dn.QUICK, *job, args.seed, False)
        assert not interrupted and diverged == want_diverged
        assert _without_seconds(rows) == _without_seconds(want)


def test_deep_nets_stopped_in_process_reports_the_jobs_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quick deep-nets (in-process, 2 runner epochs per network) stopped in the second network's first
    epoch: the first network's rows and the second's initial one are reported, and no third is trained."""
    returned = _fail_on_call(monkeypatch, 3, KeyboardInterrupt())
    out = tmp_path / "out"
    assert main(["run", "deep-nets", "--quick", "--out", str(out), "--no-progress"]) == 130
    assert len(returned) == 2
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["act"], r["arm"], r["iteration"]) for r in rows] == [
        ("tanh", "plain", 0), ("tanh", "plain", 3), ("tanh", "plain", 6), ("tanh", "batchnorm", 0)]
    assert "validation accuracy per configuration (interrupted)" in (out / "report.md").read_text()


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), NumericalError("training step 7: the loss is nan")])
def test_bn_vs_dropout_stopped_reports_without_running_its_micro_benchmarks(
        stop: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After Ctrl-C (or an error) the report is written from what was measured at once: the
    benchmarks that would train and time the networks further are not run."""
    from lazybn.experiments import bn_vs_dropout

    def benchmark(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        raise AssertionError("a benchmark ran after the run stopped")

    monkeypatch.setattr(bn_vs_dropout, "paired_timing", benchmark)
    monkeypatch.setattr(bn_vs_dropout, "bn_layer_timing", benchmark)
    _fail_on_call(monkeypatch, 5, stop)  # epoch 2, the second of three arms
    out = tmp_path / "out"
    code = main(["run", "bn-vs-dropout", "--quick", "--out", str(out), "--no-progress"])
    assert code == (130 if isinstance(stop, KeyboardInterrupt) else 2)
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["arm"], r["epoch"]) for r in rows] == [("batchnorm", 1), ("dropout", 1), ("neither", 1),
                                                      ("batchnorm", 2)]
    timing = json.loads((out / "timing.json").read_text())
    assert [t["measurement"] for t in timing] == [f"training loop, {label}" for label in bn_vs_dropout.LABELS.values()]
    assert "the micro-benchmarks were not run" in (out / "report.md").read_text()


@pytest.mark.parametrize("steps", [0, -2, 1.5, True, "3"])
def test_a_plan_of_epochs_without_batches_is_refused(steps: Any) -> None:
    from lazybn.errors import ValueRangeError
    from lazybn.experiments.runner import Plan

    with pytest.raises(ValueRangeError, match=r"Plan.steps_per_epoch: must be None or an integer >= 1"):
        Plan(epochs=2, batch_size=100, steps_per_epoch=steps)
    assert Plan(epochs=2, batch_size=100, steps_per_epoch=1).steps_per_epoch == 1


def test_arms_of_one_name_are_refused_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two arms named alike would share one network's state: the other network silently dropped."""
    from lazybn import SGD, mlp
    from lazybn.errors import ValueRangeError
    from lazybn.experiments.common import synthetic_split
    from lazybn.experiments.runner import Arm, Plan, run

    returned = _fail_on_call(monkeypatch, 0, KeyboardInterrupt())
    arms = [Arm(name, mlp((784, 8, 10), batchnorm=bn, seed=0), SGD(0.05))
            for name, bn in (("a", True), ("b", False), ("a", False))]
    with pytest.raises(ValueRangeError, match="every arm needs a name of its own; 'a' names 2 arms"):
        run(arms, synthetic_split(), Plan(epochs=1, batch_size=100), progress=False)
    assert not returned
    done = run(arms[:2], synthetic_split(), Plan(epochs=1, batch_size=100), progress=False)
    assert [r["arm"] for r in done.rows] == ["a", "b"] and len(returned) == 2


@pytest.mark.parametrize("argv", [["run", "init-stats"], ["run", "deep-nets", "--quick", "--seed", "3"],
                                  ["run", "fine-tune", "--blas-threads", "2", "--out", "runs/a b"],
                                  ["run", "bad-init-adam", "--data-dir", "/data/mnist", "--blas-threads", "1",
                                   "--no-progress"]])
def test_the_reported_command_line_runs_the_same_experiment(argv: list[str]) -> None:
    """The report's "Command" parses back to the options the run had (progress bars aside)."""
    import argparse
    import shlex

    from lazybn.experiments import registry
    from lazybn.experiments.common import command_line

    parser = argparse.ArgumentParser(prog="lazybn")
    registry.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    line = shlex.split(command_line(args))
    assert line[0] == "lazybn"
    again = parser.parse_args(line[1:])
    assert {**vars(again), "no_progress": args.no_progress} == vars(args)


@pytest.mark.parametrize("argv", [["train", "--out=~/r", "--data-dir=~/m", "--resume=~/x"],
                                  ["run", "bad-init-adam", "--out=~/r", "--data-dir=~/m"]])
def test_paths_given_with_a_tilde_are_under_home(argv: list[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell leaves ``~`` alone in ``--out=~/r``: lazybn expands it instead of making a directory named ``~``."""
    import argparse

    from lazybn.experiments import mnist, registry

    monkeypatch.setenv("HOME", str(tmp_path))
    parser = argparse.ArgumentParser(prog="lazybn")
    sub = parser.add_subparsers(dest="command")
    mnist.add_train_parser(sub)
    registry.add_parsers(sub)
    args = parser.parse_args(argv)
    assert args.out == str(tmp_path / "r") and args.data_dir == str(tmp_path / "m")
    assert getattr(args, "resume", None) in (None, str(tmp_path / "x"))
