"""Helpers shared by every ``lazybn run NAME`` experiment module.

The API (kept stable; experiment modules import it):

* ``load_split(args, quick, pixels=Pixels.standard, dtype="float32") -> (Split, source)``: MNIST
  prepared as a :class:`~lazybn.experiments.runner.Split` (from ``args.data_dir``, else the
  cache, else fetched), or with ``quick`` a small deterministic synthetic 10-class data set
  (600 train, 200 test, 784 uint8 "pixels") that needs neither MNIST nor a network.
* ``out_dir(args, name) -> Path``: ``args.out`` (empty) or a new ``runs/NAME-TIMESTAMP``, made and
  checked writable; ``release_unused()`` (the ``lazybn`` command calls it) removes it again if
  the run wrote nothing into it.
* ``command_line(args) -> str``: the ``lazybn run ...`` command that reproduces the run.
* ``progress(args) -> bool``: whether to show progress bars; ``add_blas_threads(parser)``: the
  ``--blas-threads`` option (the ``lazybn`` command applies it around the run).
* ``mean_std(values) -> (mean, std)``: population standard deviation (``np.std``, ddof 0),
  as the hipsternet article's "mean accuracy ..., std ...".
* ``run_seeds(arms_for_seed, data, plan, seeds, progress=..., on_epoch=..., echo=True) -> SeedRuns``:
  :func:`~lazybn.experiments.runner.run` once per seed (the plan's seed replaced), printing one
  line per arm and epoch; returns all rows, each seed's trained layers and why it stopped early
  (``interrupted``, ``error``; ``exit_code()`` reports it).
* ``epoch_summary(rows)``: runner rows averaged over seeds, per arm and epoch.
* ``final_summary(rows)``: per arm, mean ± std of the last epoch's metrics over the runs that reached it.
* ``standard_report(out, title, command, settings, rows, extra_sections, figures, ...) -> Path``:
  writes ``metrics.csv/json`` (all rows), ``summary.csv/json`` (per arm and epoch),
  ``curves.png`` (test accuracy and training loss per arm) and ``report.md``; returns the
  report's path.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, final

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .._files import user_path
from ..errors import ArgumentError, LazybnError
from ..report import WRITING, interrupts_held, markdown_table, plot_lines, write_metrics, write_report
from ..preprocess import Pixels, one_hot, prepare
from ..layers import Layer
from .runner import Arm, Plan, Split, run

QUICK_TRAIN = 600
QUICK_TEST = 200
_META = ("arm", "seed", "epoch")


def synthetic_images(n: int, seed: int, classes: int = 10) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """``n`` MNIST-shaped uint8 images of ``classes`` noisy prototypes (fixed per class), and labels.

    The prototypes come from a fixed generator (seed 20240), so train and test share them; ``seed``
    only draws the labels and the noise. Learnable in a few dozen steps, but not trivially.
    """
    protos = np.random.default_rng(20240).random((classes, 784)) < 0.2
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % classes
    rng.shuffle(labels)
    base = protos[labels].astype(np.float64) * 200.0
    noisy = base + rng.normal(0.0, 60.0, (n, 784)) + 40.0 * (rng.random((n, 784)) < 0.1)
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def synthetic_split(pixels: Pixels = Pixels.standard, dtype: DTypeLike = np.float32, n_train: int = QUICK_TRAIN,
                    n_test: int = QUICK_TEST) -> Split:
    """The deterministic synthetic data set of ``--quick`` runs, prepared like MNIST."""
    xtr, ytr = synthetic_images(n_train, 1)
    xte, yte = synthetic_images(n_test, 2)
    return Split(x_train=prepare(xtr, pixels, dtype), y_train=one_hot(ytr, 10, dtype), labels_train=ytr,
                 x_test=prepare(xte, pixels, dtype), labels_test=yte)


def load_split(args: argparse.Namespace, quick: bool, pixels: Pixels = Pixels.standard,
               dtype: DTypeLike = np.float32) -> tuple[Split, str]:
    """The data of an experiment and a description of its source (see the module docstring)."""
    if quick and getattr(args, "data_dir", None) is not None:
        raise ArgumentError("--quick trains on synthetic data, so --data-dir would be ignored; drop one of them")
    if quick:
        return synthetic_split(pixels, dtype), f"synthetic 10-class data ({QUICK_TRAIN} train, {QUICK_TEST} test)"
    from ..data import load_mnist

    mnist = load_mnist(getattr(args, "data_dir", None), progress=progress(args))
    split = Split(x_train=prepare(mnist.train.images, pixels, dtype), y_train=one_hot(mnist.train.labels, 10, dtype),
                  labels_train=mnist.train.labels, x_test=prepare(mnist.test.images, pixels, dtype),
                  labels_test=mnist.test.labels)
    return split, f"MNIST from {mnist.source}"


_MADE: list[Path] = []  # directories out_dir created, outermost first


def out_dir(args: argparse.Namespace, name: str) -> Path:
    """``args.out`` or ``runs/NAME-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... when another run started
    in the same second), created now so that no other run writes into it. A given ``--out`` must
    be empty: a run never mixes its files with an earlier run's. :class:`ArgumentError` naming the
    directory otherwise. :func:`release_unused` removes what this made if the run wrote nothing
    into it, so a run that fails before measuring anything leaves no empty directory behind."""
    given = getattr(args, "out", None)
    base = Path(given) if given else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = base
    try:
        if given and base.is_dir():
            require_empty(base)
        missing = [p for p in base.parents if not p.exists()]
        base.parent.mkdir(parents=True, exist_ok=True)
        _MADE.extend(reversed(missing))
        existed = bool(given) and base.is_dir()
        for k in itertools.count(2):
            try:
                out.mkdir(exist_ok=existed)
                break
            except FileExistsError:
                if given:
                    raise
                out = base.with_name(f"{base.name}-{k}")  # another run took this name: the next one
        if not existed:
            _MADE.append(out)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        file = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
        link = next((p for p in (out, *out.parents) if p.is_symlink() and not p.exists()), None)  # mkdir: "exists"
        why = (f"{link} is a symbolic link to {link.readlink()}, which does not exist" if link is not None
               else f"{file} is a file, not a directory" if file is not None else exc.strerror or exc)
        raise ArgumentError(f"cannot write to the output directory {out} ({why}); choose another with --out") from exc
    return out


def require_empty(out: Path) -> None:
    """:class:`ArgumentError` unless the given output directory ``out`` holds no files: a run
    never mixes its files with an earlier run's."""
    if any(out.iterdir()):
        raise ArgumentError(f"the output directory {out} already holds files (from another run?); choose a new one "
                            "with --out, or empty it")


def join_warm_up(thread: threading.Thread) -> None:
    """Wait for the kernel warm-up ``thread``; if the command is stopping (an exception, Ctrl-C,
    is on its way out) while the thread still compiles, say why it does not end at once."""
    if sys.exc_info()[1] is not None and thread.is_alive():
        print("lazybn: stopping once the kernels being loaded or compiled are ready (at most a few seconds)",
              file=sys.stderr, flush=True)
    thread.join()


def release_unused() -> None:
    """Remove the directories :func:`out_dir` made that are still empty (the run wrote nothing)."""
    while _MADE:
        try:
            _MADE.pop().rmdir()
        except OSError:  # it holds the run's files (or is gone)
            pass


def add_blas_threads(parser: Any) -> None:
    """The ``--blas-threads`` option of ``lazybn train`` and ``lazybn run`` (the command applies it)."""
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="threads of numpy's BLAS for the matrix products (default 1: results that do not depend "
                             "on the machine's cores, and no stalls beside other busy processes; 2 makes an epoch "
                             "about 20%% faster on an idle 2-core machine)")


def add_out(parser: Any, default: str) -> None:
    """The ``--out`` option of ``lazybn train`` and ``lazybn run``: the run's directory."""
    parser.add_argument("--out", default=None, type=user_path, help=f"output directory (default {default})")


def add_data_dir(parser: Any) -> None:
    """The ``--data-dir`` option of ``lazybn train``, ``lazybn eval`` and ``lazybn run``: where MNIST is read from."""
    parser.add_argument("--data-dir", default=None, type=user_path,
                        help="directory with MNIST: the four IDX files (optionally .gz) or mnist_train.csv/"
                             "mnist_test.csv (default: $LAZYBN_DATA_DIR, else the cache, else fetched and verified)")


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False)


def command_line(args: argparse.Namespace) -> str:
    """``lazybn run NAME [options]`` as given (default options omitted)."""
    parts = ["lazybn", "run", str(args.name)]
    if getattr(args, "quick", False):
        parts.append("--quick")
    threads = getattr(args, "blas_threads", 1)  # the products' roundings can depend on it
    for opt, value in (("--seed", getattr(args, "seed", 0) or None), ("--data-dir", getattr(args, "data_dir", None)),
                       ("--out", getattr(args, "out", None)), ("--blas-threads", None if threads == 1 else threads)):
        if value is not None:
            parts += [opt, str(value)]
    return shlex.join(parts)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0; 0.0 for a single value); NaN for no values."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


@final
@dataclass(slots=True)
class SeedRuns:
    """What :func:`run_seeds` measured: runner rows of every seed, trained layers per seed and arm,
    and why it stopped early: Ctrl-C (``interrupted``) or a lazybn error in training (``error``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[int, dict[str, list[Layer]]] = field(default_factory=dict)
    interrupted: bool = False
    error: LazybnError | None = None

    @property
    def stopped(self) -> str:
        """"interrupted", "stopped by an error" or "" (the run completed)."""
        return "interrupted" if self.interrupted else "stopped by an error" if self.error is not None else ""

    def exit_code(self) -> int:
        """The command's exit status: 130 interrupted, 2 (the error printed to stderr) stopped by an error, else 0."""
        if self.error is not None:
            print(f"lazybn: error: {self.error}", file=sys.stderr)
            return 2
        return 130 if self.interrupted else 0


SeedHook = Callable[[int, list[dict[str, Any]], dict[str, list[Layer]]], None]


def run_seeds(arms_for_seed: Callable[[int], Sequence[Arm]], data: Split, plan: Plan, seeds: Sequence[int], *,
              progress: bool = True, on_epoch: SeedHook | None = None, echo: bool = True) -> SeedRuns:
    """The runner once per seed (``plan.seed`` replaced by it; the arms built by ``arms_for_seed``).

    ``on_epoch(seed, rows, layers)`` is the runner's epoch hook with the seed; it may add keys to
    the rows (they are the rows returned). Stops after a run interrupted by Ctrl-C or stopped by a
    lazybn error (a NaN loss, for instance), or when either comes while ``arms_for_seed`` builds
    a seed's arms (which may train, as a pretraining does); what was measured until then is returned.
    """
    result = SeedRuns()
    shown = 0  # rows printed so far

    def show(rows: list[dict[str, Any]]) -> None:
        nonlocal shown
        if echo and rows:
            if not shown:
                print(f"{'seed':>4} {'epoch':>5} {'arm':<16} {'loss':>8} {'test acc':>8} {'seconds':>7}")
            for r in rows:
                print(f"{r['seed']:>4} {r['epoch']:>5} {r['arm']:<16} {r['loss']:>8.4f} "
                      f"{100 * r['test_acc']:>7.2f}% {r['seconds']:>7.2f}", flush=True)
        shown += len(rows)

    for seed in seeds:
        def hook(rows: list[dict[str, Any]], layers: dict[str, list[Layer]], seed: int = seed) -> None:
            if on_epoch is not None:
                on_epoch(seed, rows, layers)
            show(rows)

        try:
            arms = arms_for_seed(seed)
        except KeyboardInterrupt:
            result.interrupted = True
            break
        except LazybnError as exc:
            result.error = exc
            break
        outcome = run(arms, data, replace(plan, seed=seed), progress=progress, on_epoch=hook, on_error="stop")
        show(outcome.rows[shown - len(result.rows):])  # an arm that finished the epoch that was cut short
        result.rows += outcome.rows
        result.layers[seed] = outcome.layers
        result.interrupted, result.error = outcome.interrupted, outcome.error
        if result.stopped:
            break
    return result


def _numeric(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [k for k in keys if k not in _META and all(isinstance(r.get(k), (int, float)) and not isinstance(
        r.get(k), bool) for r in rows if k in r)]


def epoch_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds of every numeric metric, per arm and epoch (arms in order of appearance)."""
    keys = _numeric(rows)
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for epoch in sorted({r["epoch"] for r in rows if r["arm"] == arm}):
            sel = [r for r in rows if r["arm"] == arm and r["epoch"] == epoch]
            out.append({"arm": arm, "epoch": epoch, "seeds": len(sel),
                        **{k: float(np.mean([r[k] for r in sel if k in r])) for k in keys if any(k in r for r in sel)}})
    return out


def final_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: the metrics at the arm's last epoch as ``KEY mean`` and ``KEY std`` over the runs
    that reached it (a run stopped earlier is left out, not mixed in at its own last epoch)."""
    keys = _numeric(rows)
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        final = max(r["epoch"] for r in mine)
        last = {r["seed"]: r for r in mine if r["epoch"] == final}
        entry: dict[str, Any] = {"arm": arm, "epoch": final, "runs": len(last)}
        for k in keys:
            m, s = mean_std(r[k] for r in last.values() if k in r)
            entry[f"{k} mean"], entry[f"{k} std"] = m, s
        out.append(entry)
    return out


def curves(path: Path, rows: Sequence[Mapping[str, Any]], title: str, steps_per_epoch: int | None = None,
           log_loss: bool = False) -> bool:
    """Test accuracy (%) and training loss (its log10 with ``log_loss``) per arm, mean over seeds;
    x in iterations when ``steps_per_epoch`` is given, else epochs. False if matplotlib is missing."""
    summary = epoch_summary(rows)
    unit = steps_per_epoch or 1
    arms = list(dict.fromkeys(r["arm"] for r in summary))

    def series(key: str, f: Callable[[float], float]) -> dict[str, tuple[list[float], list[float]]]:
        return {a: ([float(r["epoch"] * unit) for r in summary if r["arm"] == a and key in r],
                    [f(r[key]) for r in summary if r["arm"] == a and key in r]) for a in arms}

    loss = series("loss", lambda v: float(np.log10(v)) if log_loss else v)
    panels = [("test accuracy", "%", series("test_acc", lambda v: 100.0 * v)),
              ("training loss", "log10 cross-entropy" if log_loss else "cross-entropy", loss)]
    return plot_lines(path, panels, title=title, xlabel="iteration" if steps_per_epoch else "epoch")


def standard_report(out: Path, title: str, command: str, settings: Mapping[str, Any],
                    rows: Sequence[Mapping[str, Any]], extra_sections: Sequence[tuple[str, str]] = (),
                    figures: Sequence[str] = (), *, steps_per_epoch: int | None = None,
                    log_loss: bool = False, stopped: str = "") -> Path:
    """Write the standard report of runner rows (see the module docstring) and return ``report.md``.

    ``extra_sections`` (heading, markdown) come first, then the final result per arm (mean ±
    std over seeds) and the per-epoch table; ``figures`` are further PNG names in ``out``
    (written by the caller), listed after ``curves.png``. ``stopped`` (:attr:`SeedRuns.stopped`)
    marks the final table of a run that ended early. A Ctrl-C (or SIGTERM) while these files are
    written waits until they are, then stops the run (a ``KeyboardInterrupt`` once the report is whole).
    """
    with interrupts_held(WRITING) as held:
        path = _standard_report(out, title, command, settings, rows, extra_sections, figures,
                                steps_per_epoch, log_loss, stopped)
    if held:
        raise KeyboardInterrupt("interrupted while the report was written (it is whole)")
    return path


def _standard_report(out: Path, title: str, command: str, settings: Mapping[str, Any],
                     rows: Sequence[Mapping[str, Any]], extra_sections: Sequence[tuple[str, str]],
                     figures: Sequence[str], steps_per_epoch: int | None, log_loss: bool, stopped: str) -> Path:
    write_metrics(out, "metrics", rows)
    summary = epoch_summary(rows)
    write_metrics(out, "summary", summary)
    ok = curves(out / "curves.png", rows, title, steps_per_epoch, log_loss)
    final = final_summary(rows)
    table = [{"arm": f["arm"], "epoch": f["epoch"], "runs": f["runs"],
              **{k.removesuffix(" mean"): (f"{100 * f[k]:.2f} ± {100 * f[k[:-5] + ' std']:.2f}" if "acc" in k
                                           else f"{f[k]:.4g} ± {f[k[:-5] + ' std']:.2g}")
                 for k in f if k.endswith(" mean")}} for f in final]
    sections = [*extra_sections, ("Final epoch per arm, mean ± std over runs (accuracies in %)"
                                  + (f" — {stopped}" if stopped else ""),
                 markdown_table(table)),
                ("Per epoch (mean over runs)", markdown_table(summary))]
    return write_report(out, title, command, settings, sections, ["curves.png", *figures], ok)
