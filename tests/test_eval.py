"""``lazybn eval`` on a tiny MNIST-shaped data set (CSV files): its accuracies are those of a
plain-numpy inference of the arrays in the saved file, its pixels those of the file's preset or
``--pixels``, a file it cannot evaluate is an error before anything is evaluated, and a network
saved by ``lazybn train`` evaluates to the test accuracy its run reported."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

import lazybn as lb
from lazybn.cli import main
from lazybn.experiments import evaluate
from lazybn.experiments.common import synthetic_images
from lazybn.layers import Batchnorm1d, Layer, Linear, LinearNoBias

F64 = NDArray[np.float64]
N_TRAIN, N_TEST = 300, 100


def _write_csv(path: Path, images: NDArray[np.uint8], labels: NDArray[np.int64]) -> None:
    header = "label," + ",".join(f"p{i}" for i in range(images.shape[1]))
    rows = [f"{lab}," + ",".join(map(str, img)) for img, lab in zip(images.tolist(), labels.tolist())]
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CSV pair of a small synthetic data set (300 train, 100 test)."""
    d = tmp_path_factory.mktemp("data")
    for name, n, seed in (("mnist_train.csv", N_TRAIN, 1), ("mnist_test.csv", N_TEST, 2)):
        _write_csv(d / name, *synthetic_images(n, seed))
    return d


def _split(split: str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    return synthetic_images(N_TEST, 2) if split == "test" else synthetic_images(N_TRAIN, 1)


def oracle_logits(path: Path, images: NDArray[np.uint8], pixels: str) -> F64:
    """The saved network's inference in float64 numpy, from the file's own arrays and header:
    batch norm ``(z − μ)/√(σ² + ε)·γ + β`` with the running statistics, ReLU, dropout the identity."""
    with np.load(path) as z:
        header = json.loads(z["header.json"].tobytes())
        arrays = {name: z[name].astype(np.float64) for name in z.files if name != "header.json"}
    p = images.astype(np.float64) / 255.0
    x = {"unit": p, "centered": p - 0.5, "standard": (p - 0.1307) / 0.3081}[pixels]
    for i, d in enumerate(header["layers"]):
        a = {k: arrays[f"layer{i}.{k}"] for k in d.get("arrays", {})}
        if d["kind"] in ("Linear", "LinearNoBias"):
            x = x @ a["w"] + a.get("b", 0.0)
        elif d["kind"] == "Batchnorm1d":
            x = (x - a["mu"]) / np.sqrt(a["var"] + d["eps"]) * a["gamma"] + a["beta"]
        elif d["kind"] == "Activation":
            assert d["activation"] == "relu"
            x = np.maximum(x, 0.0)
        else:
            assert d["kind"] == "Dropout"
    return x


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def oracle_accuracy(path: Path, split: str, pixels: str) -> str:
    images, labels = _split(split)
    out = oracle_logits(path, images, pixels)
    top2 = np.sort(out, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4 * np.abs(out).max()  # no near tie: float32 agrees on each argmax
    return _percent(float(np.mean(np.argmax(out, axis=1) == labels)))


def rows(printed: str, path: Path) -> list[dict[str, str]]:
    """The printed row of ``path`` (and its per-class line, if any)."""
    found = []
    lines = printed.splitlines()
    for k, line in enumerate(lines):
        m = re.fullmatch(rf"{re.escape(str(path))} +(\S+) +(\S+) +([\d.]+)% +([\d.]+)% +(\S+) +([\d.]+)", line)
        if m:
            row = dict(zip(("epoch", "pixels", "accuracy", "folded", "dlogit", "loss"), m.groups()))
            if k + 1 < len(lines) and lines[k + 1].startswith("  per class (%): "):
                row["per_class"] = lines[k + 1]
            found.append(row)
    return found


def _trained(seed: int = 0) -> list[Layer]:
    """A small batch-norm network trained on centered pixels, its running statistics then moved
    away from the data's (valid, but not the batches'): an accuracy well below 100% that depends
    on every detail of inference."""
    images, labels = synthetic_images(N_TRAIN, 1)
    net = lb.mlp((784, 32, 10), batchnorm=True, seed=seed)
    opt = lb.SGD(0.1)
    state = lb.init_state(opt, net)
    for epoch in range(2):
        net, state, _ = lb.train_epoch(net, opt, state, lb.prepare(images, lb.Pixels.centered),
                                       lb.one_hot(labels, 10), 50, np.random.default_rng(epoch))
    rng = np.random.default_rng(5)
    bn = net[1]
    assert isinstance(bn, Batchnorm1d)
    mu = bn.mu.array + 3.0 * np.sqrt(bn.var.array) * rng.standard_normal(bn.features)
    net[1] = replace(bn, mu=lb.vector(mu, np.float32), var=lb.vector(bn.var.array * rng.uniform(0.2, 5.0, bn.features),
                                                                     np.float32))
    return net


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained network saved three times: with the preset haskell (centered pixels), with the
    preset default (standard pixels), and without metadata."""
    d = tmp_path_factory.mktemp("nets")
    net = _trained()
    files = {"haskell": d / "haskell.npz", "default": d / "default.npz", "none": d / "none.npz"}
    lb.save(files["haskell"], net, meta={"preset": "haskell", "epoch": 2, "seed": 0})
    lb.save(files["default"], net, meta={"preset": "default"})
    lb.save(files["none"], net)
    return files


@pytest.mark.parametrize("split", ["test", "train"])
def test_accuracy_is_that_of_a_numpy_inference_of_the_saved_arrays(
        split: str, data: Path, saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    path = saved["haskell"]
    assert main(["eval", str(path), "--data-dir", str(data), "--split", split, "--per-class", "--no-progress"]) == 0
    out = capsys.readouterr().out
    n = N_TEST if split == "test" else N_TRAIN
    assert out.startswith(f"lazybn eval: MNIST {split} split, {n} samples ({data})")
    [row] = rows(out, path)
    want = oracle_accuracy(path, split, "centered")
    assert 30.0 < float(want) < 95.0  # a score that tells networks apart
    assert (row["epoch"], row["pixels"], row["accuracy"], row["folded"]) == ("2", "centered", want, want)
    assert 0.0 <= float(row["dlogit"]) < 1e-5  # float32 rounding only
    images, labels = _split(split)
    z = oracle_logits(path, images, "centered").astype(np.longdouble)  # the mean of -log softmax(z)[label]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    want_loss = float(-np.mean(np.log((p / p.sum(axis=1, keepdims=True))[np.arange(len(labels)), labels])))
    assert abs(float(row["loss"]) - want_loss) <= 5.1e-5 + 1e-5 * want_loss  # printed to 4 decimals
    predicted = np.argmax(oracle_logits(path, images, "centered"), axis=1)
    per_class = [_percent(float(np.mean(predicted[labels == k] == k))) for k in range(10)]
    assert row["per_class"] == "  per class (%): " + "  ".join(f"{k}: {a}" for k, a in enumerate(per_class))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_pixels_are_those_of_the_files_preset_unless_given(data: Path, saved: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """One network saved with the preset haskell (centered pixels) and with default (standard):
    each evaluates on its preset's pixels, and on those --pixels names for both."""
    centered, unit, standard = (oracle_accuracy(saved["haskell"], "test", p) for p in ("centered", "unit", "standard"))
    assert len({centered, unit, standard}) == 3  # the scalings give different scores: the test can tell them apart
    files = [str(saved["haskell"]), str(saved["default"])]
    assert main(["eval", *files, "--data-dir", str(data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert [(r["pixels"], r["accuracy"]) for f in files for r in rows(out, Path(f))] == [("centered", centered),
                                                                                          ("standard", standard)]
    assert main(["eval", *files, str(saved["none"]), "--pixels", "unit", "--data-dir", str(data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert [(r["pixels"], r["accuracy"], r["epoch"]) for f in [*files, str(saved["none"])] for r in rows(out, Path(f))] \
        == [("unit", unit, "2"), ("unit", unit, "-"), ("unit", unit, "-")]


def _write_bad(kind: str, d: Path, net: list[Layer]) -> tuple[Path, str]:
    """A file ``lazybn eval`` cannot evaluate, and the cause its error gives after the file name."""
    path = d / f"{kind}.npz"
    if kind == "missing":
        return path, "No such file or directory"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 not really a zip archive")
        return path, "not a zip (.npz) archive, or truncated"
    if kind == "not-lazybn":
        np.savez(path, w=np.ones((784, 10)))
        return path, "no 'header.json' array: not a lazybn network file"
    if kind == "sizes":
        lb.save(path, lb.mlp((20, 8, 3), batchnorm=True, seed=0), meta={"preset": "default"})
        return path, ("the network takes 20 inputs and gives 3 outputs; lazybn eval needs 784 inputs (MNIST's "
                      "pixels) and 10 outputs (its classes)")
    if kind == "no-parameters":
        lb.save(path, [lb.Activation(lb.Act.relu)], meta={"preset": "default"})
        return path, ("the network has no layer with parameters; lazybn eval needs 784 inputs (MNIST's pixels) and "
                      "10 outputs (its classes)")
    if kind == "no-preset":
        lb.save(path, net, meta={"epoch": 3})
        return path, "saved without a preset: pass --pixels (unit, centered or standard)"
    assert kind == "unknown-preset"
    lb.save(path, net, meta={"preset": "fast"})
    return path, "saved with the preset 'fast', which this lazybn does not know (article, default, haskell): pass --pixels"


@pytest.mark.parametrize("split", ["test", "train"])
def test_eval_needs_only_the_files_of_the_split_it_reads(split: str, data: Path, saved: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A directory with one split's CSV file evaluates that split (the accuracy of the numpy oracle);
    asked for the other split, the error names its missing files."""
    one = tmp_path / "one-split"
    one.mkdir()
    (one / f"mnist_{split}.csv").write_bytes((data / f"mnist_{split}.csv").read_bytes())
    path = saved["haskell"]
    assert main(["eval", str(path), "--data-dir", str(one), "--split", split, "--no-progress"]) == 0
    [row] = rows(capsys.readouterr().out, path)
    assert row["accuracy"] == oracle_accuracy(path, split, "centered")
    other = "train" if split == "test" else "test"
    assert main(["eval", str(path), "--data-dir", str(one), "--split", other, "--no-progress"]) == 2
    pair = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte") if other == "train" else (
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    captured = capsys.readouterr()
    assert captured.err == (f"lazybn: error: {one}: the MNIST {other} split is missing: expected {pair[0]} and "
                            f"{pair[1]} (each optionally gzipped as NAME.gz) or mnist_{other}.csv\n")
    assert captured.out == ""


@pytest.mark.parametrize("kind", ["missing", "corrupt", "not-lazybn", "sizes", "no-parameters", "no-preset",
                                  "unknown-preset"])
def test_a_file_that_cannot_be_evaluated_is_an_error_before_anything_is(
        kind: str, saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit status 2 and ``lazybn: error: FILE: cause``, after a good file: all files are checked
    before MNIST is loaded (the data directory does not exist) and nothing is printed."""
    bad, cause = _write_bad(kind, tmp_path, lb.load(saved["haskell"]).layers)
    assert main(["eval", str(saved["haskell"]), str(bad), "--data-dir", str(tmp_path / "no-data"),
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"lazybn: error: {bad}: {cause}\n"
    assert captured.out == ""


def test_a_file_without_a_preset_evaluates_with_pixels(saved: dict[str, Path], data: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(saved["none"]), "--pixels", "centered", "--data-dir", str(data), "--no-progress"]) == 0
    [row] = rows(capsys.readouterr().out, saved["none"])
    assert row["accuracy"] == oracle_accuracy(saved["none"], "test", "centered")


def test_outputs_that_overflow_and_statistics_that_cannot_fold_are_errors_naming_the_file(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.npz"  # finite weights whose products overflow float32
    lb.save(huge, [Linear(lb.matrix(np.full((784, 10), 1e38, np.float32)), lb.vector(np.zeros(10, np.float32)))],
            meta={"preset": "default"})
    assert main(["eval", str(huge), "--data-dir", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"lazybn: error: {huge}: the network's outputs for row 0 are not finite (they overflow)\n"
    flat = tmp_path / "flat.npz"  # a zero running variance under a large gamma: s = γ/√ε is beyond float32
    lb.save(flat, [LinearNoBias(lb.matrix(np.ones((784, 10), np.float32))),
                   Batchnorm1d(lb.zeros(10), lb.zeros(10), lb.vector(np.full(10, 1e36, np.float32)), lb.zeros(10),
                               eps=1e-6)], meta={"preset": "default"})
    assert main(["eval", str(flat), "--data-dir", str(tmp_path / "no-data"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lazybn: error: {flat}: fold_batchnorm: folding layer 1 (Batchnorm1d) makes weights "
                          "beyond float32's range")


def test_the_folded_columns_show_what_folding_changes(data: Path, saved: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A fold that adds 3 to the logit of class 0: the folded accuracy is that of the numpy logits
    so shifted, and the max diff is 3 over the largest |logit|."""
    shift = 3.0

    def shifted(layers: list[Layer]) -> list[Layer]:
        out = lb.fold_batchnorm(layers)
        last = out[-1]
        assert isinstance(last, (Linear, LinearNoBias))
        b = last.b.array.copy() if isinstance(last, Linear) else np.zeros(last.w.shape[1], np.float32)
        b[0] += shift
        return [*out[:-1], Linear(last.w, lb.vector(b, np.float32))]

    monkeypatch.setattr(evaluate, "fold_batchnorm", shifted)
    path = saved["haskell"]
    assert main(["eval", str(path), "--data-dir", str(data), "--no-progress"]) == 0
    [row] = rows(capsys.readouterr().out, path)
    images, labels = _split("test")
    logits = oracle_logits(path, images, "centered")
    moved = logits + np.eye(10)[0] * shift
    assert row["accuracy"] == oracle_accuracy(path, "test", "centered")
    assert row["folded"] == _percent(float(np.mean(np.argmax(moved, axis=1) == labels))) != row["accuracy"]
    assert float(row["dlogit"]) == pytest.approx(shift / np.abs(logits).max(), rel=0.06)  # printed to 2 digits


def test_a_network_saved_by_lazybn_train_evaluates_to_the_accuracy_its_run_reported(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(data), "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    metrics: list[dict[str, Any]] = json.loads((out / "metrics.json").read_text())
    reported = {r["arm"]: _percent(r["test_acc"]) for r in metrics if r["epoch"] == 2}
    capsys.readouterr()
    files = [out / "batchnorm-seed0.npz", out / "plain-seed0.npz"]
    assert main(["eval", *map(str, files), "--data-dir", str(data), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    got = {f.name.split("-")[0]: rows(printed, f) for f in files}
    assert {arm: [(r["epoch"], r["pixels"], r["accuracy"], r["folded"]) for r in found] for arm, found in got.items()} \
        == {arm: [("2", "standard", acc, acc)] for arm, acc in reported.items()}
    assert got["plain"][0]["dlogit"] == "0.0e+00"  # no batch norm: folding changes nothing


def test_per_class_accuracy_counts_each_class_on_its_own_samples() -> None:
    predicted = np.array([0, 1, 1, 0, 3], np.intp)
    labels = np.array([0, 0, 1, 2, 3])
    assert evaluate.per_class(predicted, labels) == [0.5, 1.0, 0.0, 1.0, *[None] * 6]  # no samples: None
