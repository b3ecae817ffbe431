"""``lazybn run deep-nets``: deep MNIST networks with and without batch norm, for tanh, sigmoid
and ReLU, normal and bad initialisation, learning rates 0.01 and 1 (the TensorFlow batch-norm
article's second experiment).

The article's ``train_network``: 784-100-...-100-10 with ten weight matrices (nine hidden layers
of 100 units and the output layer), weights ``np.random.normal(scale=0.1)`` ("normal") or
``scale=1`` ("bad init"), drawn from one seed (42) so every run starts from the same numbers;
the plain network has zero biases, the batch-norm one ``tf.layers.batch_normalization`` after
every matrix product (the output's too) and no bias. Plain SGD on softmax cross-entropy, batches
of 60 from TensorFlow's MNIST (pixels in [0, 1], 55000 training images, the first 5000 as the
validation set), validation accuracy every 60 iterations, 2000 iterations with the normal init
and 5000 with the bad one. It runs tanh (lr 0.01; bad init with lr 0.01 and 1) and ReLU (lr 0.01,
both inits); lazybn runs the full grid: 3 activations x 2 inits x 2 learning rates, each with and
without batch norm (24 networks).

lazybn's batch norm follows TensorFlow's defaults: eps 1e-3, running averages with weight 0.01
for the new batch (Keras ``momentum=0.99``) of the biased batch variance, gamma 1, beta 0. Each
network trains with its own runner call (so a diverging plain network stops alone); all see
the same batches (the runner shuffles by seed and epoch). An "epoch" of the runner is
``eval_every`` (100) iterations drawn from a fresh shuffle. A network whose loss becomes NaN
stops there and is reported as diverged. The full run trains the 24 networks on two spawned
worker processes (one per core; each loads the data once), the article's 2000 and 5000
iterations in about 10 minutes of an idle 2-core machine; ``--quick`` trains in-process.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, final

import numpy as np

from ..array import Matrix
from ..construct import ones, zeros
from ..errors import DataError, NumericalError
from ..init import Init, weights
from ..layers import Act, Activation, Batchnorm1d, Layer, Linear, LinearNoBias
from ..optim import SGD
from ..report import markdown_table, write_metrics, write_report
from ..preprocess import Pixels
from ..train import accuracy
from . import registry
from .activations import pyplot, save_figure
from .common import command_line, load_split, out_dir, progress
from .runner import Arm, Plan, Split, run

NAME = "deep-nets"
SIZES = (784, *([100] * 9), 10)
ACTS = (Act.tanh, Act.sigmoid, Act.relu)
SCALES = {"normal": 0.1, "bad": 1.0}
LRS = (0.01, 1.0)
ARMS = ("plain", "batchnorm")
COLORS = {"plain": "tab:red", "batchnorm": "tab:green"}
# (activation, init, lr) -> what the article says about it (it gives no numbers).
ARTICLE = {
    ("tanh", "normal", 0.01): "both train well; batch norm reaches a high accuracy much faster, slightly higher after",
    ("tanh", "bad", 0.01): "both much worse than with the normal init; batch norm clearly better and less volatile",
    ("tanh", "bad", 1.0): "plain stays around 10% (chance); batch norm converges to a high accuracy",
    ("relu", "normal", 0.01): "similar accuracies after 2000 iterations; batch norm faster and less volatile",
    ("relu", "bad", 0.01): "plain does not learn at all (flat; dead units?); batch norm counters the bad init",
}


@final
@dataclass(frozen=True, slots=True)
class Setup:
    iterations: dict[str, int]  # per init
    eval_every: int = 100
    batch_size: int = 60
    validation: int = 5000


FULL = Setup({"normal": 2000, "bad": 5000})
QUICK = Setup({"normal": 6, "bad": 6}, eval_every=3, validation=0)


def weight_draws(init: str, seed: int) -> list[Matrix]:
    """The ten weight matrices: ``scale * N(0, 1)``, the same draws for both inits (as the article's seed 42)."""
    rng = np.random.default_rng(seed)
    return [weights(Init.normal, nin, nout, rng, np.float32, gain=SCALES[init]) for nin, nout in zip(SIZES, SIZES[1:])]


def network(ws: list[Matrix], act: Act, batchnorm: bool) -> list[Layer]:
    """Plain: ``[Linear (zero bias), act] * 9, Linear``; batch norm: ``[LinearNoBias, Batchnorm1d, act] * 9,
    LinearNoBias, Batchnorm1d`` (TensorFlow's eps 1e-3, Keras momentum 0.99, biased running variance)."""
    layers: list[Layer] = []
    for i, w in enumerate(ws):
        n = w.shape[1]
        if batchnorm:
            layers += [LinearNoBias(w), Batchnorm1d(zeros(n), ones(n), ones(n), zeros(n), eps=1e-3, momentum=0.01,
                                                    unbiased=False)]
        else:
            layers.append(Linear(w, zeros(n)))
        if i < len(ws) - 1:
            layers.append(Activation(act))
    return layers


def tf_split(args: argparse.Namespace, s: Setup) -> tuple[Split, str]:
    """MNIST as TensorFlow's ``read_data_sets``: pixels in [0, 1], the first 5000 training images validate."""
    split, source = load_split(args, args.quick, Pixels.unit)
    if not s.validation:
        return split, f"{source}; pixels in [0, 1]; its test set validates"
    v = s.validation
    if split.x_train.shape[0] < v + s.batch_size:
        raise DataError(f"{NAME} validates on the first {v} training images and trains on the rest in batches of "
                        f"{s.batch_size}; the training set ({source}) has only {split.x_train.shape[0]} images")
    val = replace(split, x_train=split.x_train[v:], y_train=split.y_train[v:], labels_train=split.labels_train[v:],
                  x_test=split.x_train[:v], labels_test=split.labels_train[:v])
    return val, f"{source}; pixels in [0, 1]; {split.x_train.shape[0] - v} training images, the first {v} validate"


def train_one(split: Split, s: Setup, act: Act, init: str, lr: float, arm: str, seed: int, show: bool
              ) -> tuple[list[dict[str, Any]], int | None, bool]:
    """One network through the runner: rows (iteration 0 included), the divergence iteration, interrupted."""
    layers = network(weight_draws(init, seed), act, arm == "batchnorm")
    key = {"act": act.value, "init": init, "lr": lr, "arm": arm}
    rows: list[dict[str, Any]] = [{**key, "iteration": 0, "val_acc": accuracy(layers, split.x_test, split.labels_test), "loss": None,
             "seconds": 0.0}]

    def record(epoch_rows: list[dict[str, Any]], _: dict[str, list[Layer]]) -> None:
        rows.extend({**key, "iteration": r["epoch"] * s.eval_every, "val_acc": r["test_acc"], "loss": r["loss"],
                     "seconds": r["seconds"]} for r in epoch_rows)

    plan = Plan(epochs=s.iterations[init] // s.eval_every, batch_size=s.batch_size, seed=seed,
                steps_per_epoch=s.eval_every, train_accuracy=False)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging network is reported, not warned about
            outcome = run([Arm(arm, layers, SGD(lr))], split, plan, progress=show, on_epoch=record)
    except NumericalError as exc:
        found = re.search(r"training step (\d+)", str(exc))
        return rows, int(found.group(1)) + 1 if found else int(rows[-1]["iteration"]) + 1, False
    return rows, None, outcome.interrupted


def results(rows: list[dict[str, Any]], diverged: dict[tuple[str, str, float, str], int]) -> list[dict[str, Any]]:
    """One line per configuration: final and best validation accuracy of both networks."""
    table = []
    for act in ACTS:
        for init in SCALES:
            for lr in LRS:
                line: dict[str, Any] = {"activation": act.value, "init std": f"{SCALES[init]:g}", "lr": f"{lr:g}"}
                for arm in ARMS:
                    mine = [r for r in rows if (r["act"], r["init"], r["lr"], r["arm"]) == (act.value, init, lr, arm)]
                    if not mine:
                        continue
                    line["iterations"] = max(line.get("iterations", 0), *(r["iteration"] for r in mine))  # either network
                    div = diverged.get((act.value, init, lr, arm))
                    line[f"{arm} final %"] = f"NaN at it. {div}" if div else f"{100 * mine[-1]['val_acc']:.2f}"
                    line[f"{arm} best %"] = f"{100 * max(r['val_acc'] for r in mine):.2f}"
                if len(line) > 3:
                    table.append(line)
    return table


def article_table(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (act, init, lr), says in ARTICLE.items():
        for line in table:
            if (line["activation"], line["init std"], line["lr"]) == (act, f"{SCALES[init]:g}", f"{lr:g}"):
                out.append({"configuration": f"{act}, init std {SCALES[init]:g}, lr {lr:g}", "the article": says,
                            "lazybn final val acc % (plain / batch norm)":
                                f"{line.get('plain final %', '-')} / {line.get('batchnorm final %', '-')}"})
    return out


def plot_grid(path: Path, rows: list[dict[str, Any]], diverged: dict[tuple[str, str, float, str], int]) -> bool:
    """Validation accuracy over iterations: one panel per activation (rows) and init x lr (columns)."""
    plt = pyplot()
    if plt is None:
        return False
    cols = [(init, lr) for init in SCALES for lr in LRS]
    fig, axes = plt.subplots(len(ACTS), len(cols), figsize=(4.2 * len(cols), 3.0 * len(ACTS)), sharey=True,
                             squeeze=False)
    for i, act in enumerate(ACTS):
        for j, (init, lr) in enumerate(cols):
            ax = axes[i][j]
            for arm in ARMS:
                sel = [r for r in rows if (r["act"], r["init"], r["lr"], r["arm"]) == (act.value, init, lr, arm)]
                ax.plot([r["iteration"] for r in sel], [100 * r["val_acc"] for r in sel], color=COLORS[arm],
                        label="batch norm" if arm == "batchnorm" else "plain")
                div = diverged.get((act.value, init, lr, arm))
                if div is not None:
                    ax.plot([div], [10.0], "x", color=COLORS[arm], markersize=10, label=f"{arm}: NaN at {div}")
            ax.set_title(f"{act.value}, init std {SCALES[init]:g}, lr {lr:g}", fontsize=10)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
            if i == len(ACTS) - 1:
                ax.set_xlabel("iteration (batch of 60)")
        axes[i][0].set_ylabel("validation accuracy %")
    fig.suptitle("Deep MNIST networks (9 hidden layers of 100): validation accuracy with and without batch norm")
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.07, top=0.92, hspace=0.35, wspace=0.08)
    save_figure(plt, fig, path, tight=False)
    return True


Job = tuple[Act, str, float, str]  # activation, init, learning rate, arm
Trained = tuple[list[dict[str, Any]], int | None, bool]  # train_one's result
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_worker_split: Split | None = None  # the data of a worker process (loaded once by _worker_init)


def _worker_init(args: argparse.Namespace, s: Setup) -> None:
    global _worker_split
    _worker_split = tf_split(args, s)[0]


def _worker_job(s: Setup, job: Job, seed: int) -> Trained:
    assert _worker_split is not None, "_worker_init did not run"
    return train_one(_worker_split, s, *job, seed, False)


def train_all(args: argparse.Namespace, s: Setup, split: Split, jobs: list[Job], workers: int
              ) -> Iterator[tuple[Job, Trained]]:
    """Every job's result as it completes: in this process (``workers`` 1, with progress bars), else on
    ``workers`` spawned processes (longest jobs first, no bars). Ctrl-C stops after the running jobs:
    the results they came to follow, then an empty interrupted result (in this process, the
    interrupted job's own is the last)."""
    if workers == 1:
        for job in jobs:
            trained = train_one(split, s, *job, args.seed, progress(args))
            yield job, trained
            if trained[2]:
                return
        return
    ctx = multiprocessing.get_context("spawn")
    saved = {k: os.environ.get(k) for k in _BLAS_THREADS}
    os.environ.update({k: "1" for k in _BLAS_THREADS})  # one BLAS thread per worker: the workers fill the cores
    try:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(args, s))
        for started in [pool.submit(int) for _ in range(workers)]:  # every worker starts now, with it
            started.result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with pool:
        order = sorted(jobs, key=lambda job: -s.iterations[job[1]] * (2 if job[3] == "batchnorm" else 1))
        futures = {pool.submit(_worker_job, s, job, args.seed): job for job in order}
        given = set()
        try:
            for done in as_completed(futures):
                given.add(done)
                yield futures[done], done.result()
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)  # jobs under way finish (or stop: the Ctrl-C reached them)
            for future, job in futures.items():
                if future not in given and future.done() and not future.cancelled() and future.exception() is None:
                    yield job, future.result()
            yield order[0], ([], None, True)
        finally:  # also when the caller stops early: the jobs not started are not run
            pool.shutdown(wait=True, cancel_futures=True)


def run_deep_nets(args: argparse.Namespace) -> int:
    s = QUICK if args.quick else FULL
    out = out_dir(args, NAME)
    workers = 1 if args.quick else min(2, os.cpu_count() or 1)
    print(f"lazybn run {NAME}: writing to {out}; {workers} process(es)")
    split, source = tf_split(args, s)
    print(f"data: {source}")
    jobs = list(itertools.product(ACTS, SCALES, LRS, ARMS))
    done: dict[Job, list[dict[str, Any]]] = {}
    diverged: dict[tuple[str, str, float, str], int] = {}
    interrupted = False
    for job, (mine, div, stopped) in train_all(args, s, split, jobs, workers):
        act, init, lr, arm = job
        interrupted |= stopped
        if not mine:
            continue
        done[job] = mine
        if div is not None:
            diverged[(act.value, init, lr, arm)] = div
        seconds = sum(r["seconds"] for r in mine)
        end = f"diverged (NaN loss) at iteration {div}" if div else f"{100 * mine[-1]['val_acc']:.2f}%"
        print(f"{act.value:<8} init {init:<6} lr {lr:<5g} {arm:<10} val acc {end}  ({seconds:.0f} s)", flush=True)
        write_metrics(out, "metrics", [r for j in jobs if j in done for r in done[j]])
    rows = [r for j in jobs if j in done for r in done[j]]
    table = results(rows, diverged)
    write_metrics(out, "result", table)
    ok = plot_grid(out / "deep-nets.png", rows, diverged)
    train_s = sum(r["seconds"] for r in rows)
    steps = sum(s.iterations[i] for i in SCALES) * len(ACTS) * len(LRS) * len(ARMS)
    settings = {"network": "784-100x9-10 (10 weight matrices); batch norm after every product, output included",
                "weights": "scale·N(0,1), scale 0.1 (normal) or 1 (bad), the same draws for every run",
                "batch norm": "eps 1e-3, momentum 0.01 (new batch; Keras 0.99), biased running variance",
                "optimizer": "plain SGD", "batch size": s.batch_size,
                "iterations": ", ".join(f"{k}: {v}" for k, v in s.iterations.items()),
                "evaluation": f"every {s.eval_every} iterations", "data": source, "seed": args.seed}
    sections = [("Result: validation accuracy per configuration" + (" (interrupted)" if interrupted else ""),
                 markdown_table(table)),
                ("The article's observations next to lazybn's", markdown_table(article_table(table))),
                ("Time", f"Training time (all networks, summed over {workers} process(es)): {train_s:.0f} s for up to "
                         f"{steps} iterations, {1000 * train_s / max(1, steps):.1f} ms per iteration on average.\n")]
    path = write_report(out, "Deep networks on MNIST with and without batch norm (TensorFlow article)",
                        command_line(args), settings, sections, ["deep-nets.png"], ok)
    print(markdown_table(table))
    print(f"report: {path}")
    return 130 if interrupted else 0


registry.register(registry.Experiment(
    NAME, "9x100 MNIST nets, tanh/sigmoid/ReLU, normal/bad init, lr 0.01/1, with/without BN (TF article)",
    "~10 min", run_deep_nets))
