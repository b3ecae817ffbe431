"""Every registered experiment runs end to end through the CLI entry point (``--quick``: small
synthetic data, no MNIST needed) and writes its report, metrics and figures; ``lazybn list``
names them all; ``lazybn train`` trains on a tiny CSV data set and saves loadable networks."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazybn.cli import main
import lazybn as lb
import lazybn.experiments.catalogue  # noqa: F401  (every experiment registers itself on import)
from lazybn.experiments import registry
from lazybn.experiments.common import synthetic_images
from lazybn.layers import Batchnorm1d
from lazybn.persist import load
from lazybn.errors import NumericalError

from .net_helpers import numpy_inference

NAMES = sorted(registry.EXPERIMENTS)
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def figures_of(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", report)


def check_figures(out: Path, report: str) -> None:
    if not HAS_MATPLOTLIB:
        return
    figures = figures_of(report)
    assert figures, "the report shows no figure"
    for name in figures:
        png = out / name
        assert png.is_file(), f"{name} is named in the report but missing"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"


def test_the_six_experiments_are_registered() -> None:
    assert len(NAMES) >= 6
    assert {"bad-init-adam", "bn-vs-dropout", "population-stats"} <= set(NAMES)
    for exp in registry.EXPERIMENTS.values():
        assert exp.summary and exp.runtime


@pytest.mark.parametrize("name", NAMES)
def test_experiment_quick_run_writes_a_report(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", name, "--quick", "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert name in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics
    assert (out / "metrics.csv").read_text().strip()
    check_figures(out, report)
    if name == "fine-tune":  # the pretrained network's source accuracy is one of the "(accuracies in %)"
        final = report.split("(accuracies in %)", 1)[1].split("\n#", 1)[0].splitlines()
        cols = [c.strip() for c in next(row for row in final if row.startswith("| arm")).strip("|").split("|")]
        last = max(r["epoch"] for r in metrics)
        refs = [r["source_acc_pretrained"] for r in metrics if r["epoch"] == last and r["arm"] == "all"]
        row = next(row for row in final if row.startswith("| all "))
        cell = [c.strip() for c in row.strip("|").split("|")][cols.index("source_acc_pretrained")]
        assert cell.startswith(f"{100 * sum(refs) / len(refs):.2f} ± "), cell


def test_list_names_every_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in NAMES:
        assert any(line.split()[:1] == [name] for line in lines), f"{name} missing from `lazybn list`"


@pytest.mark.parametrize("name", NAMES)
def test_run_name_help_is_the_experiments_own(name: str, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``lazybn run NAME --help``: NAME in the usage and the default --out, its module's description and its
    runtime, and every option ``lazybn run`` takes."""
    monkeypatch.setenv("COLUMNS", "400")  # no line broken at a hyphen
    exp = registry.EXPERIMENTS[name]
    with pytest.raises(SystemExit) as done:
        main(["run", name, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: lazybn run {name} [-h]"), shown
    doc = sys.modules[exp.run.__module__].__doc__
    assert doc is not None and " ".join(doc.split()) in " ".join(shown.split())
    assert f"Expected runtime: {exp.runtime} " in shown and f"(default runs/{name}-TIMESTAMP)" in shown
    options = {"--quick", "--out", "--data-dir", "--seed", "--no-progress", "--blas-threads"}
    assert options <= set(re.findall(r"^  (--[a-z-]+)", shown, re.M)), shown


def test_run_help_without_a_name_is_the_commands_and_an_unknown_name_is_an_error(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    for argv in (["run", "--help"], ["run", "--help", NAMES[0]]):  # --help before NAME: NAME is not read yet
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        shown = capsys.readouterr().out
        assert shown.startswith("usage: lazybn run [-h]") and "`lazybn run NAME --help` describes NAME" in shown, shown
    with pytest.raises(SystemExit) as done:
        main(["run", "no-such-experiment", "--help"])
    assert done.value.code == 2
    assert "unknown experiment 'no-such-experiment'; `lazybn list` shows them" in capsys.readouterr().err


def test_python_dash_m_lazybn_is_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "lazybn", "list"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert all(any(line.split()[:1] == [name] for line in done.stdout.splitlines()) for name in NAMES)


def test_unknown_experiment_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "no-such-experiment", "--quick"]) == 2
    assert "lazybn list" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "fragment"), [
    (["train", "--batch-size", "0"], "--batch-size must be at least 2"),
    (["train", "--batch-size", "1"], "batch norm needs two samples"),
    (["train", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "--seeds", "0"], "--seeds must be at least 1"),
    (["train", "--seed", "-1"], "--seed must be >= 0"),
    (["train", "--ghost-batch", "30"], "divide the batch size 100"),
    (["train", "--ghost-batch", "1", "--batch-size", "4"], "at least 2"),
    (["train", "--ghost-batch", "50", "--renorm", "3", "5"], "cannot be combined"),
    (["train", "--renorm", "0.5", "5"], "lazybn train: --renorm Renorm.rmax: must be a finite number >= 1"),
    (["train", "--renorm", "3", "nan"], "lazybn train: --renorm Renorm.dmax: must be a finite number >= 0"),
    (["train", "--renorm-ramp", "0", "10", "10"], "--renorm-ramp needs --renorm"),
    (["train", "--renorm", "3", "5", "--renorm-ramp", "0", "-1", "10"], "step counts >= 0"),
    (["train", "--bn-momentum", "fast"], "a number or 'none'"),
    (["train", "--bn-momentum", "1.5"], "--bn-momentum must be in [0, 1]"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay SGD.weight_decay: must be a finite number >= 0"),
    (["train", "--optimizer", "adamw", "--bn-weight-decay", "nan"], "--bn-weight-decay Adam.bn_weight_decay"),
    (["train", "--lr", "0"], "--lr SGD.lr: must be a finite number > 0"),
    (["run", "population-stats", "--seed", "-1"], "--seed must be >= 0"),
    (["train", "--blas-threads", "0"], "--blas-threads must be at least 1, got 0"),
    (["run", "population-stats", "--blas-threads", "-2"], "--blas-threads must be at least 1, got -2"),
])
def test_settings_that_cannot_train_are_refused_before_anything_is_loaded_or_written(
        argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([*argv, "--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lazybn: error:") and fragment in err
    assert not out.exists()


def test_an_output_directory_that_cannot_be_written_is_refused_first(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"
    assert main(["train", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to the output directory {out} ({tmp_path / 'a-file'} is a file, not a directory)" in err
    assert "no-data" not in err  # not the missing data: nothing was loaded
    assert main(["train", "--out", str(tmp_path / "a-file"), "--no-progress"]) == 2
    assert f"({tmp_path / 'a-file'} is a file, not a directory)" in capsys.readouterr().err


@pytest.mark.parametrize("under", [False, True])
def test_an_output_directory_through_a_dangling_symbolic_link_is_refused_naming_it(
        under: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A link to a directory that is gone (as --out, or above it): mkdir says the name exists, ls that it does not;
    the error says what it is, and nothing is made at either end of the link."""
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "gone")
    out = link / "run" if under else link
    assert main(["train", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"lazybn: error: cannot write to the output directory {out} ({link} is a symbolic "
                                       f"link to {tmp_path / 'gone'}, which does not exist); choose another with --out\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"] and link.is_symlink()


def test_the_command_prints_a_warning_as_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Not Python's format (file, line number, source line): the command's prefix and the message."""
    import lazybn.experiments.mnist as command

    def warns(args: object) -> int:
        warnings.warn("could not write the MNIST cache /x (disk full); it will be fetched again", stacklevel=2)
        return 0

    monkeypatch.setattr(command, "_train", warns)
    shown = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside pytest, where a UserWarning is shown, not raised
        assert main(["train", "--no-progress"]) == 0
    assert capsys.readouterr().err == ("lazybn: warning: could not write the MNIST cache /x (disk full); "
                                       "it will be fetched again\n")
    assert warnings.showwarning is shown  # put back for the caller


def test_help_gives_the_value_a_run_without_the_option_uses(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """For each option a preset sets, --help names the default preset's value: passing that value
    gives the settings a run without the option has."""
    import lazybn.experiments.mnist as command

    seen: list[Any] = []

    def settings(args: Any) -> int:  # instead of training: the settings the run would have
        seen.append(command._settings(args))
        return 0

    monkeypatch.setattr(command, "_train", settings)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    blocks = re.split(r"\n  (?=--)", capsys.readouterr().out)  # one per option
    shown = {}
    for block in blocks:
        found = re.search(r"\(default: the preset's, (\S+) in 'default'\)", " ".join(block.split()))
        if found:
            shown[block.split()[0]] = found.group(1)
    assert set(shown) == {"--epochs", "--batch-size", "--lr", "--schedule", "--optimizer", "--init",
                          "--bn-lr-multiplier", "--comp"}, shown
    assert main(["train"]) == 0
    for option, value in shown.items():
        assert main(["train", option, value]) == 0
        assert seen[-1] == seen[0], option


def test_help_names_the_default_of_every_option_that_has_one() -> None:
    """Each subcommand's options with a default (not off, not None) say it in their help, as --help shows it."""
    import argparse

    from lazybn.experiments import registry
    from lazybn.experiments.evaluate import add_eval_parser
    from lazybn.experiments.mnist import add_train_parser

    sub = argparse.ArgumentParser(prog="lazybn").add_subparsers()
    add_train_parser(sub)
    add_eval_parser(sub)
    registry.add_parsers(sub)
    silent = {(name, action.option_strings[-1]) for name, parser in sub.choices.items() for action in parser._actions
              if action.option_strings and action.nargs != 0 and action.default is not None  # nargs 0: a flag
              and "default" not in (action.help or "")}
    assert not silent, silent


def test_a_closed_stdout_stops_the_command_quietly() -> None:
    """``lazybn train | head``: exit status 141 (as a tool killed by SIGPIPE), nothing on stderr."""
    code = ("import sys, lazybn.experiments.mnist as command\nfrom lazybn.cli import main\n"
            "def chatty(args):\n    for _ in range(100000):\n        print('x' * 100)\n    return 0\n"
            "command._train = chatty\nsys.exit(main(['train', '--no-progress']))\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.read(10) == b"x" * 10
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and err == b"", err.decode()


def test_a_run_that_fails_before_measuring_anything_leaves_no_directory(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-data"
    empty.mkdir()
    out = tmp_path / "runs" / "train"
    assert main(["train", "--data-dir", str(empty), "--out", str(out), "--no-progress"]) == 2
    assert str(empty) in capsys.readouterr().err  # the data error names the directory
    assert not (tmp_path / "runs").exists()
    assert "lazybn-warm-up" not in [t.name for t in threading.enumerate()]  # its step ended with the command


def test_runs_started_in_the_same_second_get_directories_of_their_own(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import time

    from lazybn.experiments.common import out_dir, release_unused

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    args = argparse.Namespace(out=None)
    first, second, third = (out_dir(args, "train-default") for _ in range(3))
    assert [p.name for p in (first, second, third)] == ["train-default-20260101-000000",
                                                       "train-default-20260101-000000-2",
                                                       "train-default-20260101-000000-3"]
    assert all(p.is_dir() for p in (first, second, third))  # claimed: a fourth run cannot take them
    (second / "metrics.csv").write_text("kept")
    release_unused()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [second.name]  # only what holds files stays
    assert (second / "metrics.csv").read_text() == "kept"


def test_an_output_directory_holding_files_is_refused_and_left_alone(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "earlier-run"
    out.mkdir()
    (out / "metrics.csv").write_text("an earlier run's rows")
    assert main(["train", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"the output directory {out} already holds files" in err
    assert [p.name for p in out.iterdir()] == ["metrics.csv"] and (out / "metrics.csv").read_text() == "an earlier run's rows"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty directory given with --out is used, and kept after a failed run
    assert main(["train", "--data-dir", str(tmp_path / "no-data"), "--out", str(empty), "--no-progress"]) == 2
    assert empty.is_dir() and "no-data" in capsys.readouterr().err


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, call: int, exc: BaseException) -> list[object]:
    """Make the runner's ``train_epoch`` raise ``exc`` on its ``call``-th call (from 1); returns the
    list of layers each earlier call returned."""
    from lazybn.experiments import runner
    from lazybn.train import train_epoch as real  # the original, even if an earlier call patched the runner

    returned: list[object] = []

    def train_epoch(*args: Any, **kwargs: Any) -> Any:
        if len(returned) + 1 == call:
            raise exc
        result = real(*args, **kwargs)
        returned.append(result[0])
        return result

    monkeypatch.setattr(runner, "train_epoch", train_epoch)
    return returned


def test_a_run_stopped_mid_epoch_returns_each_arms_rows_with_the_layers_they_measured(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lazybn import SGD, mlp
    from lazybn.experiments.common import synthetic_split
    from lazybn.experiments.runner import Arm, Plan, run

    arms = [Arm(name, mlp((784, 16, 10), batchnorm=name == "bn", seed=0), SGD(0.1)) for name in ("bn", "plain")]
    for stop, error in ((KeyboardInterrupt(), False), (NumericalError("training step 7: the loss is nan"), True)):
        returned = _fail_on_call(monkeypatch, 4, stop)  # epoch 2 of the second arm
        outcome = run(arms, synthetic_split(), Plan(epochs=3, batch_size=100), progress=False, on_error="stop")
        assert [(r["arm"], r["epoch"]) for r in outcome.rows] == [("bn", 1), ("plain", 1), ("bn", 2)]
        assert (outcome.epochs("bn"), outcome.epochs("plain")) == (2, 1)
        assert outcome.layers["bn"] is returned[2] and outcome.layers["plain"] is returned[1]
        assert outcome.interrupted is not error and (outcome.error is stop) is error
        if error:  # named by the arm that diverged and when: the rows alone do not say which
            assert str(outcome.error) == "the network 'plain' (seed 0) in epoch 2: training step 7: the loss is nan"
    _fail_on_call(monkeypatch, 2, NumericalError("boom"))
    with pytest.raises(NumericalError, match="boom"):  # the default: the error propagates
        run(arms, synthetic_split(), Plan(epochs=1, batch_size=100), progress=False)


def test_run_seeds_prints_every_row_it_returns(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped in epoch 2 of the second arm: the first arm's epoch 2 (measured, returned) is
    printed too, after the epoch-1 rows and once."""
    from lazybn import SGD, mlp
    from lazybn.experiments.common import run_seeds, synthetic_split
    from lazybn.experiments.runner import Arm, Plan

    def arms(seed: int) -> list[Arm]:
        return [Arm(name, mlp((784, 16, 10), batchnorm=name == "bn", seed=seed), SGD(0.1)) for name in ("bn", "plain")]

    _fail_on_call(monkeypatch, 4, KeyboardInterrupt())
    done = run_seeds(arms, synthetic_split(), Plan(epochs=3, batch_size=100), [0, 1], progress=False)
    assert done.interrupted and [(r["arm"], r["epoch"]) for r in done.rows] == [("bn", 1), ("plain", 1), ("bn", 2)]
    printed = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert printed == [["0", "1", "bn"], ["0", "1", "plain"], ["0", "2", "bn"]]


def test_train_stopped_by_an_error_keeps_the_measured_epochs_and_networks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv_data(tmp_path)
    _fail_on_call(monkeypatch, 3, NumericalError("training step 4: the loss is nan; lower the learning rate"))
    out = tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--epochs", "3", "--out", str(out), "--no-progress"]) == 2
    # the error names the network that failed and when: two train side by side
    assert "lazybn: error: the network 'batchnorm' (seed 0) in epoch 2: training step 4: the loss is nan" in \
        capsys.readouterr().err
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["arm"], r["epoch"]) for r in rows] == [("batchnorm", 1), ("plain", 1)]
    assert "Result (stopped by an error)" in (out / "report.md").read_text()
    for arm in ("batchnorm", "plain"):
        assert load(out / f"{arm}-seed0.npz").meta["epoch"] == 1


def test_a_file_that_cannot_be_written_mid_run_is_an_error_naming_it_and_keeps_the_files_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk when epoch 2's first network is saved: the error names the file and the cause
    (no traceback), and the networks saved after epoch 1 are still whole."""
    import errno

    from lazybn.experiments import mnist

    calls: list[Path] = []

    def save(path: Path, *args: Any, **kwargs: Any) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        lb.save(path, *args, **kwargs)

    monkeypatch.setattr(mnist, "save", save)
    data, out = _csv_data(tmp_path), tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--epochs", "3", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"lazybn: error: {out / 'batchnorm-seed0.npz'}: {os.strerror(errno.ENOSPC)}\n"
    assert load(out / "batchnorm-seed0.npz").meta["epoch"] == 1 and load(out / "plain-seed0.npz").meta["epoch"] == 1


def test_a_diverging_train_names_the_problem_and_a_fix_the_command_offers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv_data(tmp_path)
    out = tmp_path / "runs" / "out"
    assert main(["train", "--data-dir", str(data), "--lr", "1e30", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lazybn: error: the network 'batchnorm' (seed 0) in epoch 1: training step 1: layer 1 (Batchnorm1d) has a " \
           "non-finite" in err
    assert "lower the learning rate" in err and "on_nonfinite" not in err  # a Python argument: no CLI flag
    assert not (tmp_path / "runs").exists()


def test_train_stopped_before_its_first_epoch_leaves_no_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # e.g. a kernel cache that cannot be written: the first step fails; no report of no rows
    data = _csv_data(tmp_path)
    _fail_on_call(monkeypatch, 1, lb.LazybnError("cannot write the kernel cache"))
    out = tmp_path / "runs" / "out"
    assert main(["train", "--data-dir", str(data), "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "lazybn: error: cannot write the kernel cache" in captured.err
    assert "stopped: nothing was measured" in captured.out
    assert not (tmp_path / "runs").exists()


def test_train_stopped_by_sigterm_mid_epoch_reports_like_ctrl_c(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM (a job scheduler, `timeout`) during epoch 2 of the second network: the first
    network's epoch 2 is printed and kept, the report is written, and the printed result says
    which epoch each network reached."""
    import signal

    from lazybn.experiments import runner
    from lazybn.train import train_epoch as real

    calls = []

    def train_epoch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_epoch", train_epoch)
    data, out = _csv_data(tmp_path), tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--data-dir", str(data), "--epochs", "3", "--out", str(out), "--no-progress"]) == 130
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only
    printed = capsys.readouterr().out
    assert re.search(r"^ +0 +2 batchnorm ", printed, re.M), printed  # measured before the stop: shown
    assert re.search(r"\| batchnorm +\| +2 \|", printed) and re.search(r"\| plain +\| +1 \|", printed), printed
    assert "interrupted: the networks reached different epochs; compare them in metrics.csv at epoch 1" in printed
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["arm"], r["epoch"]) for r in rows] == [("batchnorm", 1), ("plain", 1), ("batchnorm", 2)]
    assert "Result (interrupted)" in (out / "report.md").read_text()
    assert load(out / "batchnorm-seed0.npz").meta["epoch"] == 2 and load(out / "plain-seed0.npz").meta["epoch"] == 1


def test_a_second_ctrl_c_while_the_report_is_written_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in epoch 2 stops training; a second Ctrl-C (and a SIGTERM) while the figure is drawn
    waits until the report is written: report.md holds the epoch measured, the exit status is 130."""
    import signal

    from lazybn.experiments import mnist, runner
    from lazybn.train import train_epoch as real

    calls: list[int] = []

    def train_epoch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:  # the first network's epoch 2
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    drawn: list[int] = []

    def curves(*args: Any, **kwargs: Any) -> bool:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        drawn.append(1)
        return False

    monkeypatch.setattr(runner, "train_epoch", train_epoch)
    monkeypatch.setattr(mnist, "curves", curves)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    data, out = _csv_data(tmp_path), tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--epochs", "3", "--out", str(out), "--no-progress"]) == 130
    assert drawn == [1] and (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    captured = capsys.readouterr()
    assert captured.err == "lazybn: saving what was measured; stopping once it is written\n", captured.err
    assert f"interrupted: kept what was measured in {out}" in captured.out
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["arm"], r["epoch"]) for r in rows] == [("batchnorm", 1), ("plain", 1)]
    report = (out / "report.md").read_text()
    assert "## Result (interrupted)" in report
    for r in rows:
        assert (f"| {r['arm']} | 1 | 1 | {100 * r['test_acc']:.2f} | {100 * r['train_acc']:.2f} | {r['loss']:.4f} |"
                in report), report
    assert load(out / "batchnorm-seed0.npz").meta["epoch"] == 1 and load(out / "plain-seed0.npz").meta["epoch"] == 1


def test_a_ctrl_c_while_a_seeds_last_files_are_written_stops_the_run_after_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C once the first of two seeds has trained, while its metrics are written: the second seed
    does not start, and the first's metrics, networks and report are all written."""
    import signal

    from lazybn.experiments import mnist
    from lazybn.report import write_metrics as real

    calls: list[str] = []

    def write_metrics(out: Path, name: str, rows: Any) -> None:
        calls.append(name)
        if len(calls) == 2:  # the first after seed 0's run (the first was its epoch's)
            signal.raise_signal(signal.SIGINT)
        real(out, name, rows)

    monkeypatch.setattr(mnist, "write_metrics", write_metrics)
    data, out = _csv_data(tmp_path), tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--epochs", "1", "--seeds", "2", "--out", str(out),
                 "--no-progress"]) == 130
    assert "lazybn: saving what was measured; stopping once it is written\n" == capsys.readouterr().err
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["seed"], r["arm"], r["epoch"]) for r in rows] == [(0, "batchnorm", 1), (0, "plain", 1)]
    assert "## Result (interrupted)" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.glob("*.npz")) == ["batchnorm-seed0.npz", "plain-seed0.npz"]


def test_interrupts_held_notes_the_signals_and_puts_the_handlers_back(capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C is noted, not raised, and a signal that was ignored stays ignored; afterwards Ctrl-C raises again."""
    import signal

    from lazybn.report import interrupts_held

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert before[0] is signal.default_int_handler and before[1] is not None
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with interrupts_held("busy") as held:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
                signal.raise_signal(sig)
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert held == [signal.SIGINT, signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is before[0] and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, before[1])
    assert capsys.readouterr().err == "lazybn: busy\n"


def write_csv(path: Path, images: NDArray[np.uint8], labels: NDArray[np.int64]) -> None:
    header = "label," + ",".join(f"p{i}" for i in range(images.shape[1]))
    rows = [f"{lab}," + ",".join(map(str, img)) for img, lab in zip(images.tolist(), labels.tolist())]
    path.write_text("\n".join([header, *rows]) + "\n")


def _csv_data(tmp_path: Path) -> Path:
    """A tiny MNIST-shaped data set as the CSV pair (300 train, 100 test)."""
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("mnist_train.csv", 300, 1), ("mnist_test.csv", 100, 2)):
        images, labels = synthetic_images(n, seed)
        write_csv(data / name, images, labels)
    return data


def test_train_smoke_on_csv_data(tmp_path: Path) -> None:
    data = _csv_data(tmp_path)
    out = tmp_path / "out"
    code = main(["train", "--data-dir", str(data), "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    report = (out / "report.md").read_text()
    assert "lazybn train" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["arm"] for r in metrics} == {"batchnorm", "plain"}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in metrics)
    assert (out / "metrics.csv").read_text().startswith("arm,")
    if HAS_MATPLOTLIB:
        assert (out / "curves.png").is_file()
        check_figures(out, report)
    bn = load(out / "batchnorm-seed0.npz")
    plain = load(out / "plain-seed0.npz")
    assert any(isinstance(layer, Batchnorm1d) for layer in bn.layers)
    assert not any(isinstance(layer, Batchnorm1d) for layer in plain.layers)
    assert bn.meta["arm"] == "batchnorm" and plain.meta["seed"] == 0
    # the report's result table: each network's last epoch, its loss to 4 digits as printed and in the
    # per-epoch table (2 would make the losses of trained networks, 0.0123 and 0.0164, both 0.01)
    result = report.split("## Result", 1)[1].split("\n## ", 1)[0]
    cells = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ") for line in result.splitlines()
             if line.startswith(("| batchnorm ", "| plain "))}
    assert {arm: (cells[arm][1].strip(), cells[arm][-1].strip()) for arm in cells} == {
        r["arm"]: (str(r["epoch"]), f"{r['loss']:.4f}") for r in metrics}


def test_train_warm_up_traces_the_step_that_the_first_batch_replays() -> None:
    """``lazybn train`` loads its step's kernels on a batch of zeros while the data loads; the
    first real batch must then replay that trace, not trace again."""
    import lazybn as lb
    from lazybn import train as tr
    from lazybn.experiments.mnist import _warm_up
    from lazybn.experiments.train_settings import PRESETS, SIZES, make_optimizer, networks
    from lazybn.optim import init_state

    s = replace(PRESETS["default"], batch_size=13)  # a batch size no other test traces
    tr._step.programs.clear()  # type: ignore[attr-defined]
    before = lb.fuse.stats()
    _warm_up(s, seed=5)
    warmed = lb.fuse.stats()
    assert warmed.traces > before.traces, "the warm-up did not run the training step"
    layers, opt = networks(s, 5)[0], make_optimizer(s, True)
    rng = np.random.default_rng(0)
    x = rng.random((26, SIZES[0]), dtype=np.float32)
    y = np.eye(SIZES[-1], dtype=np.float32)[rng.integers(0, SIZES[-1], 26)]
    tr.train_epoch(layers, opt, init_state(opt, layers), x, y, s.batch_size, rng, key=5, max_steps=1)
    after = lb.fuse.stats()
    assert (after.traces, after.compiled) == (warmed.traces, warmed.compiled)
    assert after.replays >= warmed.replays + 1


def test_population_statistics_and_batch_statistics_inference_match_numpy() -> None:
    import lazybn as lb
    from lazybn.experiments.population import batch_stat_logits, population_layers

    rng = np.random.default_rng(4)
    layers = lb.mlp((6, 5, 4, 3), batchnorm=True, seed=2, dtype=np.float64)
    x = rng.standard_normal((37, 6)) * 3 + 1
    got = population_layers(list(layers), x, batch_size=10)  # batches of 10, 10, 10 and 7, merged
    want = list(layers)
    for k, layer in enumerate(want):
        if isinstance(layer, Batchnorm1d):
            h = numpy_inference(want[:k], x)[0]  # the input of layer k over the whole data set
            want[k] = replace(layer, mu=lb.vector(h.mean(0)), var=lb.vector(h.var(0, ddof=1)))
    bns = [(g, w) for g, w in zip(got, want) if isinstance(g, Batchnorm1d) and isinstance(w, Batchnorm1d)]
    assert len(bns) == 2
    for g, w in bns:
        np.testing.assert_allclose(g.mu.array, w.mu.array, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g.var.array, w.var.array, rtol=1e-12)
    out = batch_stat_logits(list(layers), lb.matrix(x))
    np.testing.assert_allclose(out.array, numpy_inference(list(layers), x, batch_stats=True)[0], rtol=1e-10,
                               atol=1e-12)


def test_population_statistics_replace_mu_and_var_only_whatever_the_batches() -> None:
    """Item 18: the known answer (batches [1, 2, 3, 4] and [10, 20]: mean 20/3, unbiased variance
    52.667), the same statistics from every split of one data set, and every other field of
    every layer as it was."""
    import lazybn as lb
    from lazybn.experiments.population import population_layers

    bn = Batchnorm1d(lb.vector([0.5]), lb.vector([2.0]), lb.vector([1.5]), lb.vector([0.25]), eps=1e-3,
                     momentum=None, tracked=7)
    data: NDArray[np.floating[Any]] = np.array([[1.0], [2.0], [3.0], [4.0], [10.0], [20.0]], np.float32)
    got = population_layers([bn], data, batch_size=4)[0]
    assert isinstance(got, Batchnorm1d)
    np.testing.assert_allclose(got.mu.array, [20 / 3], rtol=1e-6)
    np.testing.assert_allclose(got.var.array, [np.var(data, ddof=1)], rtol=1e-6)  # 52.667
    assert replace(got, mu=bn.mu, var=bn.var) == replace(bn)  # eps, momentum, tracked, gamma, beta, flags
    rng = np.random.default_rng(18)
    layers = lb.mlp((16, 8, 3), batchnorm=True, seed=4, dtype=np.float64)
    x = rng.standard_normal((128, 16)) * 2 + 3
    runs = [population_layers(list(layers), x, batch_size=b) for b in (2, 4, 8, 16, 32, 64, 128)]
    for run in runs[1:]:
        for g, w, orig in zip(run, runs[0], layers):
            if isinstance(g, Batchnorm1d) and isinstance(w, Batchnorm1d) and isinstance(orig, Batchnorm1d):
                np.testing.assert_allclose(g.mu.array, w.mu.array, rtol=1e-12, atol=1e-13)
                np.testing.assert_allclose(g.var.array, w.var.array, rtol=1e-12)
                assert g.gamma is orig.gamma and g.beta is orig.beta and g.momentum == orig.momentum
            else:
                assert g is orig  # the other layers are the network's own


@pytest.mark.parametrize("variant", [["--bn-momentum", "none"], ["--renorm", "3", "5"], ["--ghost-batch", "25"],
                                     ["--renorm", "3", "5", "--renorm-ramp", "1", "1", "4"]])
def test_train_with_batch_norm_variants(variant: list[str], tmp_path: Path) -> None:
    """The saved batch-norm network carries the variant: a cumulative count of every batch, the
    renorm bounds (with a ramp, those of the last step: the third, step 2, one step into a ramp that
    reaches rmax in one step and dmax in four), the ghost batch size."""
    data = _csv_data(tmp_path)
    out = tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--epochs", "1", "--out", str(out), "--no-progress",
                 *variant]) == 0
    layers = [la for la in load(out / "batchnorm-seed0.npz").layers if isinstance(la, Batchnorm1d)]
    assert layers
    for layer in layers:
        if variant[0] == "--bn-momentum":
            assert layer.momentum is None and layer.tracked == 3  # 300 samples in batches of 100
        elif variant[0] == "--renorm":
            assert layer.renorm == (lb.Renorm(3.0, 5.0) if len(variant) == 3 else lb.Renorm(3.0, 5.0 * 1 / 4))
        else:
            assert layer.ghost_batch == 25


def test_train_refuses_a_batch_larger_than_the_training_set(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv_data(tmp_path)  # 300 training samples
    out = tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--batch-size", "301", "--out", str(out), "--no-progress"]) == 2
    assert "--batch-size 301 is more than the 300 training samples" in capsys.readouterr().err
    assert not out.exists()


def test_train_refuses_a_ghost_batch_that_does_not_divide_the_last_batch(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv_data(tmp_path)  # 300 training samples: batches of 80 leave a last batch of 60
    out = tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--batch-size", "80", "--ghost-batch", "40", "--out", str(out),
                 "--no-progress"]) == 2
    assert "does not divide every batch" in capsys.readouterr().err


def test_weight_decay_options_reach_the_optimizers() -> None:
    from lazybn.experiments.train_settings import PRESETS, make_optimizer

    s = replace(PRESETS["default"], optimizer="adamw", lr=1e-3, weight_decay=0.01, bn_weight_decay=0.001)
    assert make_optimizer(s, bn=True) == lb.Adam(1e-3, weight_decay=0.01, bn_weight_decay=0.001,
                                                 decoupled_weight_decay=True)
    s = replace(s, optimizer="momentum", bn_lr_multiplier=3.0)
    assert make_optimizer(s, bn=True) == lb.Momentum(1e-3, bn_lr_multiplier=3.0, weight_decay=0.01,
                                                     bn_weight_decay=0.001)
    assert make_optimizer(s, bn=False).bn_lr_multiplier == 1.0  # the plain network has no batch norm to scale


def test_fine_tune_refuses_data_without_images_of_a_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Test images of 0-4 only: the target task (5-9) has nothing to measure, said before any training."""
    data = tmp_path / "data"
    data.mkdir()
    images, labels = synthetic_images(40, 1)
    write_csv(data / "mnist_train.csv", images, labels)
    write_csv(data / "mnist_test.csv", images[labels < 5], labels[labels < 5])
    assert main(["run", "fine-tune", "--data-dir", str(data), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lazybn: error: fine-tune trains on the digits 0-4, then on 5-9; ") and (
        "has 20 training and 0 test images of 5-9" in err), err
    assert not (tmp_path / "out").exists()


def test_fine_tune_tasks_and_arms() -> None:
    from lazybn.experiments.common import synthetic_split
    from lazybn.experiments.fine_tune import ARMS, fine_tune_arms, tasks
    from lazybn.experiments.runner import Plan, run
    from lazybn.layers import Batchnorm1d, LinearNoBias

    data = synthetic_split()
    src, tgt = tasks(data, 7)
    assert set(src.labels_train) == set(src.labels_test) == {0, 1, 2, 3, 4}
    assert src.labels_train.size == (data.labels_train < 5).sum()
    assert src.labels_test.size == (data.labels_test < 5).sum()
    assert sorted(np.bincount(tgt.labels_train, minlength=10)) == [0] * 5 + [7] * 5
    assert set(tgt.labels_test) == {5, 6, 7, 8, 9} and tgt.labels_test.size == (data.labels_test >= 5).sum()
    rows = np.flatnonzero(np.isin(data.labels_train, tgt.labels_train))  # the picked rows are the data's own
    assert all((data.x_train[rows] == x).all(axis=1).any() for x in tgt.x_train)
    assert np.array_equal(tasks(data, 7)[1].x_train, tgt.x_train)  # the same images every time

    pretrained = lb.mlp((784, 16, 8, 10), batchnorm=True, seed=0)
    head = lb.mlp((784, 16, 8, 10), batchnorm=True, seed=1)[-1]
    assert isinstance(head, LinearNoBias)
    arms = fine_tune_arms(pretrained, head, lb.SGD(0.1))
    assert [a.name for a in arms] == list(ARMS)
    flags = {a.name: {(type(x).__name__, getattr(x, "trainable", None), getattr(x, "frozen", None))
                      for x in a.layers[:-1] if not isinstance(x, lb.Activation)} for a in arms}
    assert flags == {"all": {("LinearNoBias", True, None), ("Batchnorm1d", True, False)},
                     "head, bn drift": {("LinearNoBias", False, None), ("Batchnorm1d", False, False)},
                     "head, bn frozen": {("LinearNoBias", False, None), ("Batchnorm1d", False, True)},
                     "all, bn frozen": {("LinearNoBias", True, None), ("Batchnorm1d", True, True)}}
    assert all(a.layers[-1] is head for a in arms)
    # trained: only the frozen-features arm keeps every feature array, running statistics included
    done = run(arms, tgt, Plan(2, 20), progress=False)
    for name, layers in done.layers.items():
        same = all(np.array_equal(getattr(x, f).array, getattr(p, f).array)
                   for x, p in zip(layers[:-1], pretrained[:-1]) if isinstance(x, (LinearNoBias, Batchnorm1d))
                   for f in (("w",) if isinstance(x, LinearNoBias) else ("mu", "var", "gamma", "beta")))
        assert same == (name == "head, bn frozen"), name
        drift = [(x, p) for x, p in zip(layers, pretrained)
                 if isinstance(x, Batchnorm1d) and isinstance(p, Batchnorm1d)]
        if name == "head, bn drift":  # weights, gamma and beta fixed; the running statistics moved
            assert all(np.array_equal(x.gamma.array, p.gamma.array) and not np.array_equal(x.mu.array, p.mu.array)
                       for x, p in drift)


def test_runs_use_the_blas_threads_they_are_given_and_their_reports_say_so(tmp_path: Path) -> None:
    # an epoch's seconds depend on it several times over on a busy machine (bench_blas_threads.py),
    # and the products' roundings on it
    from threadpoolctl import threadpool_info, threadpool_limits

    from lazybn.report import environment

    def blas() -> dict[str, int]:
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas()
    assert before, "numpy's BLAS is not visible to threadpoolctl"
    seen = {}
    for limit in (1, 2):  # what the report says under each limit (2 may exceed OPENBLAS_NUM_THREADS)
        with threadpool_limits(limits=limit, user_api="blas"):
            seen[limit] = environment()["BLAS threads"]
    assert seen[1].startswith("1 (")
    data = _csv_data(tmp_path)
    for given, want in ((None, seen[1]), ("2", seen[2])):
        out = tmp_path / f"out-{given}"
        extra = ["--blas-threads", given] if given else []
        assert main(["train", "--data-dir", str(data), "--epochs", "1", "--out", str(out), "--no-progress",
                     *extra]) == 0
        assert f"| BLAS threads | {want} |" in (out / "report.md").read_text()
        assert {k: v for k, v in blas().items() if k in before} == before  # the limit ends with the command


def test_no_progress_bar_is_drawn_into_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    """With progress on and stderr not a terminal (a log file; here pytest's capture), no bar is
    drawn, so the result rows do not end up on a bar's line."""
    from lazybn.experiments.common import synthetic_split
    from lazybn.experiments.runner import Arm, Plan, run

    arms = [Arm("plain", lb.mlp((784, 16, 10), batchnorm=False, seed=0), lb.SGD(0.1))]
    done = run(arms, synthetic_split(), Plan(epochs=1, batch_size=100), progress=True)
    assert len(done.rows) == 1
    err = capsys.readouterr().err
    assert "epoch 1/1" not in err and "\r" not in err, err
