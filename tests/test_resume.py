"""Continuing a stopped run: the runner trains an arm from given layers, optimizer state and
epochs done as the run that never stopped would; ``lazybn train --resume DIR`` gives the bits
of a run that never stopped (networks, optimizer states, running statistics and metrics rows),
and refuses bad input before anything in the directory changes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazybn as lb
from lazybn.cli import main
from lazybn.persist import load

from .test_experiments import _csv_data, _fail_on_call

ADAM = ["--optimizer", "adam", "--lr", "1e-3"]


def _train(data: Path, out: Path, *options: str) -> int:
    return main(["train", "--data-dir", str(data), "--out", str(out), "--no-progress", *options])


def _contents(path: Path) -> dict[str, Any]:
    """Every array of a saved network file (the JSON header too: a uint8 array), as read."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_run(got: Path, want: Path) -> None:
    """The networks of ``got`` are those of ``want`` bit for bit (every parameter, running
    statistic, optimizer moment and the header: step count, running count, epoch) and so are the
    metrics rows but for their seconds."""
    files = sorted(p.name for p in want.glob("*.npz"))
    assert files and sorted(p.name for p in got.glob("*.npz")) == files
    for name in files:
        a, b = _contents(got / name), _contents(want / name)
        assert a.keys() == b.keys(), name
        for k in b:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{name}: {k} differs"
        assert load(got / name).opt_state is not None

    def rows(out: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((out / "metrics.json").read_text())]

    assert rows(got) == rows(want)


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


RAMP = ["--renorm", "3", "5", "--renorm-ramp", "1", "2", "4", "--bn-momentum", "none"]  # bounds from the step count


@pytest.mark.parametrize("optimizer", [[], ADAM, RAMP], ids=["sgd", "adam", "renorm-ramp"])
def test_a_run_of_one_epoch_resumed_to_three_is_the_run_of_three(optimizer: list[str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv_data(tmp_path)
    straight, short = tmp_path / "straight", tmp_path / "short"
    assert _train(data, straight, "--epochs", "3", *optimizer) == 0
    assert _train(data, short, "--epochs", "1", *optimizer) == 0
    assert load(short / "batchnorm-seed0.npz").meta["epoch"] == 1
    assert main(["train", "--resume", str(short), "--epochs", "3"]) == 0
    assert_same_run(short, straight)
    started = shlex.join(["train", "--data-dir", str(data), "--out", str(short), "--no-progress", "--epochs", "1",
                          *optimizer])
    assert f"Command: `lazybn {started}; lazybn train --resume {short} --epochs 3`" in (short / "report.md").read_text()
    # a resume of the finished run trains nothing and changes no network
    before = {p.name: p.read_bytes() for p in short.glob("*.npz")}
    capsys.readouterr()
    assert main(["train", "--resume", str(short)]) == 0
    assert {p.name: p.read_bytes() for p in short.glob("*.npz")} == before
    assert_same_run(short, straight)
    assert json.loads((short / "run.json").read_text())["resumes"][-1] == ["train", "--resume", str(short)]


def test_a_run_of_several_seeds_extended_by_a_resume_keeps_its_rows_seed_by_seed(tmp_path: Path) -> None:
    """Two seeds of one epoch extended to two: seed 0's second epoch is measured after seed 1's
    first, yet the metrics (and the summary) are those of the run of two epochs, row for row."""
    data = _csv_data(tmp_path)
    straight, short = tmp_path / "straight", tmp_path / "short"
    assert _train(data, straight, "--epochs", "2", "--seeds", "2") == 0
    assert _train(data, short, "--epochs", "1", "--seeds", "2") == 0
    assert main(["train", "--resume", str(short), "--epochs", "2"]) == 0
    assert_same_run(short, straight)
    assert [(r["seed"], r["epoch"], r["arm"]) for r in json.loads((short / "metrics.json").read_text())] == [
        (seed, epoch, arm) for seed in (0, 1) for epoch in (1, 2) for arm in ("batchnorm", "plain")]
    assert [line.split(",")[:3] for line in (short / "metrics.csv").read_text().splitlines()] == [
        line.split(",")[:3] for line in (straight / "metrics.csv").read_text().splitlines()]
    summary = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((short / "summary.json").read_text())]
    assert summary == [{k: v for k, v in r.items() if k != "seconds"}
                       for r in json.loads((straight / "summary.json").read_text())]


def test_a_run_interrupted_mid_epoch_and_mid_seed_resumes_exactly(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in epoch 2 of the plain network of seed 3 (the batch-norm network finished it), so
    seed 4 never started; with Adam, whose moments and step count the files must carry."""
    data = _csv_data(tmp_path)
    options = ["--epochs", "3", "--seed", "3", "--seeds", "2", *ADAM]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _train(data, straight, *options) == 0
    _fail_on_call(monkeypatch, 4, KeyboardInterrupt())
    assert _train(data, stopped, *options) == 130
    monkeypatch.undo()
    assert [load(stopped / f"{arm}-seed3.npz").meta["epoch"] for arm in ("batchnorm", "plain")] == [2, 1]
    assert not (stopped / "batchnorm-seed4.npz").exists()
    assert main(["train", "--resume", str(stopped), "--no-progress"]) == 0
    assert_same_run(stopped, straight)
    assert "Result (interrupted)" not in (stopped / "report.md").read_text()


def test_rows_measured_after_the_last_saved_network_are_measured_again(tmp_path: Path) -> None:
    """Killed after epoch 1's rows were written but before the plain network was saved (so its
    file is missing), and with a stray row of epoch 2: both rows are measured again."""
    data = _csv_data(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _train(data, straight, "--epochs", "2") == 0
    assert _train(data, killed, "--epochs", "1") == 0
    (killed / "plain-seed0.npz").unlink()
    rows = json.loads((killed / "metrics.json").read_text())
    stray = {**rows[0], "epoch": 2, "loss": None, "test_acc": 0.0}
    (killed / "metrics.json").write_text(json.dumps([*rows, stray]))
    assert main(["train", "--resume", str(killed), "--epochs", "2", "--no-progress"]) == 0
    assert_same_run(killed, straight)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The data and a finished run of one epoch with Adam."""
    tmp = tmp_path_factory.mktemp("resume")
    data = _csv_data(tmp)
    assert _train(data, tmp / "run", "--epochs", "1", *ADAM) == 0
    yield data, tmp / "run"


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _damage(out: Path, how: str) -> str:
    """Spoil the run directory ``out``; returns what the error must say."""
    bn = out / "batchnorm-seed0.npz"
    match how:
        case "no run.json":
            (out / "run.json").unlink()
            return f"--resume {out}: it has no run.json, so it is not a lazybn train run directory"
        case "corrupt run.json":
            (out / "run.json").write_bytes(b'{"format": "lazybn-train-run", "vers')
            return f"{out / 'run.json'}: not valid JSON"
        case "run.json of another version":
            doc = json.loads((out / "run.json").read_text())
            (out / "run.json").write_text(json.dumps({**doc, "version": 2}))
            return f"{out / 'run.json'}: run file version 2; this lazybn reads version 1 only"
        case "run.json of another command":
            doc = json.loads((out / "run.json").read_text())
            (out / "run.json").write_text(json.dumps({**doc, "argv": ["train", "--no-such-option"]}))
            return f"{out / 'run.json'}: the stored command line 'train --no-such-option' does not parse"
        case "run.json with a damaged data print":
            doc = json.loads((out / "run.json").read_text())
            (out / "run.json").write_text(json.dumps({**doc, "data": {**doc["data"], "train": "300"}}))
            return f"{out / 'run.json'}: field 'data' is not an object of a source, split sizes and a sha256"
        case "truncated network":
            bn.write_bytes(bn.read_bytes()[:500])
            return f"{bn}: not a zip (.npz) archive, or truncated"
        case "network of another dtype":
            lb.save(bn, lb.mlp((784, 300, 50, 10), batchnorm=True, seed=0, dtype=np.float64), None, load(bn).meta)
            return f"{bn}: layer 0 (LinearNoBias) w is float64 (784, 300), the run's float32 (784, 300)"
        case "network of another architecture":
            lb.save(bn, lb.mlp((784, 50, 10), batchnorm=True, seed=0), None, load(bn).meta)
            return f"{bn}: 4 layers, the run's network has 7"
        case "network without its optimizer state":
            saved = load(bn)
            lb.save(bn, saved.layers, None, saved.meta)
            return f"{bn}: saved without its optimizer state (Adam's step count and moments)"
        case "network with another optimizer's state":
            saved = load(bn)
            sgd = lb.init_state(lb.SGD(0.1), saved.layers)
            lb.save(bn, saved.layers, sgd, saved.meta)
            return f"{bn}: its optimizer state is not one of Adam for this network (made by SGD)"
        case "network of another preset":  # the same layers as the run's: only the metadata tells
            saved = load(bn)
            lb.save(bn, saved.layers, saved.opt_state, {**saved.meta, "preset": "article"})
            return f"{bn}: its metadata"
        case "network of another seed":
            shutil.copyfile(out / "plain-seed0.npz", bn)
            return f"{bn}: its metadata"
        case "metrics without the saved epoch":
            (out / "metrics.json").write_text("[]")
            return f"{out / 'metrics.json'}: the rows of the batchnorm network of seed 0 are for epochs []"
        case "metrics missing":
            (out / "metrics.json").unlink()
            return f"{out / 'metrics.json'} is missing, but networks were saved"
    raise AssertionError(how)


DAMAGES = ["no run.json", "corrupt run.json", "run.json of another version", "run.json of another command",
           "run.json with a damaged data print", "truncated network", "network of another dtype", "network of another architecture",
           "network without its optimizer state", "network with another optimizer's state", "network of another preset",
           "network of another seed",
           "metrics without the saved epoch", "metrics missing"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_run_directory_is_refused_naming_the_file_and_left_as_it_was(
        how: str, finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, run = finished
    out = tmp_path / "run"
    shutil.copytree(run, out)
    fragment = _damage(out, how)
    before = _snapshot(out)
    assert main(["train", "--resume", str(out), "--data-dir", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lazybn: error: ") and fragment in err, err
    assert _snapshot(out) == before


@pytest.mark.parametrize(("options", "fragment"), [
    (["--lr", "0.5"], "--lr cannot be changed on --resume: the run's settings are in {out}/run.json"),
    (["--lr=0.5", "--seed", "0", "--no-progress"], "--lr, --seed cannot be changed on --resume"),  # 0: the default
    (["--optim", "sgd"], "--optimizer cannot be changed"),  # an abbreviation argparse accepts
    (["--out", "elsewhere"], "--out cannot be changed"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_options_that_would_change_the_run_are_refused(options: list[str], fragment: str, finished: tuple[Path, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, out = finished
    before = _snapshot(out)
    assert main(["train", "--resume", str(out), *options]) == 2
    assert fragment.format(out=out) in capsys.readouterr().err
    assert _snapshot(out) == before


def test_epochs_fewer_than_reached_and_a_missing_directory_are_refused(
        tmp_path: Path, finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = finished
    out = tmp_path / "run"
    shutil.copytree(run, out)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    before = _snapshot(out)
    assert main(["train", "--resume", str(out), "--epochs", "1"]) == 2
    assert f"--epochs 1 is fewer than the 2 epochs a network of {out} reached" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert f"--resume {tmp_path / 'nothing'}: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_a_directory_another_lazybn_train_is_writing_is_refused(tmp_path: Path, finished: tuple[Path, Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fcntl = pytest.importorskip("fcntl")
    data, run = finished
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = _snapshot(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running lazybn train holds it
        assert main(["train", "--resume", str(out), "--no-progress"]) == 2
        assert f"{out} is in use: another lazybn train is still writing into it" in capsys.readouterr().err
        empty = tmp_path / "empty"
        empty.mkdir()
        fresh = os.open(empty, os.O_RDONLY)
        try:
            fcntl.flock(fresh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new run given the same --out, which it claimed
            assert _train(data, empty, "--epochs", "1") == 2
            assert f"{empty} is in use" in capsys.readouterr().err and not any(empty.iterdir())
            # a run still loading its data has no run.json yet: a resume of it is refused as in use
            assert main(["train", "--resume", str(empty), "--no-progress"]) == 2
            assert f"{empty} is in use" in capsys.readouterr().err and not any(empty.iterdir())
        finally:
            os.close(fresh)
    finally:
        os.close(fd)
    assert _snapshot(out) == before
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # the lock is gone with its holder


def test_a_new_run_that_measured_nothing_leaves_no_run_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _csv_data(tmp_path)
    _fail_on_call(monkeypatch, 1, KeyboardInterrupt())
    assert _train(data, tmp_path / "runs" / "out") == 130
    assert not (tmp_path / "runs").exists()


def test_a_directory_filled_before_the_lock_is_taken_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A run given an empty ``--out`` looks at it, then locks it: one that filled it in between
    (it started, and finished, with the same ``--out``) keeps its files, and this run is refused."""
    from lazybn.experiments.common import out_dir as real

    data, out = _csv_data(tmp_path), tmp_path / "out"
    out.mkdir()

    def out_dir(*args: Any) -> Path:
        made = real(*args)
        (made / "metrics.json").write_text("[]")  # the other run, between the look and the lock
        return made

    monkeypatch.setattr("lazybn.experiments.mnist.out_dir", out_dir)
    assert _train(data, out, "--epochs", "1") == 2
    assert f"the output directory {out} already holds files" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"] and (out / "metrics.json").read_text() == "[]"


def test_a_directory_that_cannot_be_written_is_refused_before_the_data_loads(
        tmp_path: Path, finished: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from lazybn.experiments import mnist

    _, run = finished
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = _snapshot(out)

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    def load_split(*args: Any) -> Any:
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)  # as a read-only DIR does (root ignores chmod)
    monkeypatch.setattr(mnist, "load_split", load_split)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    assert f"--resume {out}: cannot write into it (Permission denied)" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_a_resume_on_other_data_is_refused_and_the_run_records_its_data(
        tmp_path: Path, finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``run.json`` holds the sizes and a sha256 of the labels and pixels the run trained on
    (checked against hashlib over the CSVs' values); a resume on other data (``--data-dir``, or
    ``$LAZYBN_DATA_DIR`` set for the first run only) is refused with DIR as it was."""
    import hashlib

    data, run = finished
    digest = hashlib.sha256()
    for name in ("mnist_train.csv", "mnist_test.csv"):
        table = np.loadtxt(data / name, delimiter=",", skiprows=1, dtype=np.int64)
        digest.update(table[:, 0].tobytes())
        digest.update(table[:, 1:].astype(np.uint8).tobytes())
    recorded = json.loads((run / "run.json").read_text())["data"]
    assert recorded == {"source": recorded["source"], "train": 300, "test": 100, "sha256": digest.hexdigest()}
    assert str(data) in recorded["source"]

    other = tmp_path / "other"
    other.mkdir()
    for name in ("mnist_train.csv", "mnist_test.csv"):  # the same sizes, one pixel changed
        lines = (data / name).read_text().splitlines(keepends=True)
        fields = lines[1].split(",")
        fields[1] = "7" if fields[1] != "7" else "8"
        lines[1] = ",".join(fields)
        (other / name).write_text("".join(lines))
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = _snapshot(out)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data-dir", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out}: the data ({other}" in err and "300 train, 100 test images) is not the run's" in err
    assert _snapshot(out) == before


def test_a_run_given_a_relative_data_dir_resumed_from_elsewhere_names_where_the_data_dir_came_from(
        tmp_path: Path, finished: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The run's ``--data-dir data``, stored as typed, is taken from the directory the resume runs
    in: where it is not there, the error says that it is the run's and how to give it, and DIR
    stays as it was; given, the run resumes."""
    data, run = finished
    (tmp_path / "started").mkdir()
    shutil.copytree(data, tmp_path / "started" / "data")
    monkeypatch.chdir(tmp_path / "started")
    assert main(["train", "--data-dir", "data", "--out", "run", "--epochs", "1", "--no-progress"]) == 0
    out = tmp_path / "started" / "run"
    before = _snapshot(out)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"lazybn: error: lazybn train: --resume {out}: the run's --data-dir data (in {out / 'run.json'}, a "
                   "path relative to where the run was started) is not a directory from here; give --data-dir with "
                   "the run's data\n")
    assert _snapshot(out) == before
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data-dir", "started/data", "--no-progress"]) == 0
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())] == [1, 1, 2, 2]


def test_a_run_directory_without_a_data_print_resumes_and_gets_one(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    data, run = finished
    out = tmp_path / "run"
    shutil.copytree(run, out)
    doc = json.loads((out / "run.json").read_text())
    recorded = doc.pop("data")
    (out / "run.json").write_text(json.dumps(doc))  # as lazybn wrote it before it recorded the data
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["data"] == recorded
