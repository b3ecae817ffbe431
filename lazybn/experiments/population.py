"""``lazybn run population-stats``: which statistics should batch norm use at inference?

The batch-norm paper's inference rule replaces each batch-norm layer's batch mean and variance
by population statistics: E[x] and the unbiased Var[x] of the layer's input over the training
set, computed after training with the inference network up to that layer (its Algorithm 2).
The cs231n article (and Keras, and PyTorch) use a moving average updated during training
instead. This experiment trains the ``bn-vs-dropout`` batch-norm network (He init, RMSprop 1e-3,
batch 256, 1000 iterations, no dropout) with several running-average momenta (lazybn's
convention: the weight of the NEW batch; Keras's ``momentum=0.99`` is 0.01 here) and measures,
after every 100 iterations, the test accuracy with

(a) the moving averages (the running mean and unbiased variance),
(b) exact population statistics: per feature, the mean and unbiased variance of each batch-norm
    layer's input over all training images, the earlier layers already using theirs,
(c) the statistics of the test batch itself (training-mode batch norm, without dropout), for
    test batches of 256 (and after training also of 16, and the whole test set as one batch).

The momentum only changes the running averages, never the training: for one seed every arm's
weights stay bit-identical (checked and reported), so (b) and (c) agree across arms.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..array import Matrix
from ..construct import matrix, vector
from ..init import Init
from ..layers import Batchnorm1d, Layer, LinearNoBias
from ..network import bn_forward, logits
from ..optim import RMSProp
from ..report import markdown_table, plot_lines, write_metrics
from ..stats import merge_all, moments
from ..train import accuracy, batches
from . import registry
from .bad_init import FULL, hipsternet_net, hipsternet_split, setup
from .common import command_line, mean_std, out_dir, progress, run_seeds, standard_report
from .runner import Arm

NAME = "population-stats"
MOMENTA = (0.001, 0.01, 0.1, 0.9)
TEST_BATCH = 256
SMALL_BATCH = 16


def population_layers(layers: list[Layer], x: NDArray[np.floating[Any]], batch_size: int = 2000) -> list[Layer]:
    """``layers`` with every Batchnorm1d's mu and var replaced by the exact mean and unbiased variance
    of its input over ``x`` (the network in inference mode up to it, earlier layers already replaced).

    Per batch, :func:`lazybn.stats.moments` gives the count, mean and sum of squared deviations of
    each feature; :func:`lazybn.stats.merge_all` merges the batches in float64 with Chan et al.'s
    pairwise update (no cancellation).
    """
    out = list(layers)
    for k, layer in enumerate(out):
        if not isinstance(layer, Batchnorm1d):
            continue
        total = merge_all(moments(logits(out[:k], matrix(x[idx]))) for idx in batches(x.shape[0], batch_size, None))
        dt = layer.mu.dtype
        out[k] = replace(layer, mu=vector(total.mean.array, dtype=dt), var=vector(total.unbiased_var.array, dtype=dt))
    return out


def batch_stat_logits(layers: list[Layer], x: Matrix) -> Matrix:
    """Inference in which every batch-norm layer normalises with the batch's own mean and variance."""
    for layer in layers:
        x = bn_forward(x, layer)[0] if isinstance(layer, Batchnorm1d) else logits([layer], x)
    return x


def batch_stat_accuracy(layers: list[Layer], x: NDArray[np.floating[Any]], labels: NDArray[np.int64],
                        batch_size: int) -> float:
    correct = 0
    for idx in batches(x.shape[0], batch_size, None):
        out = batch_stat_logits(layers, matrix(x[idx]))
        correct += int(np.sum(np.argmax(out.array, axis=1) == labels[idx]))
    return correct / int(x.shape[0])


def stat_errors(running: list[Layer], population: list[Layer]) -> dict[str, float]:
    """Per batch-norm layer: mean over features of |mu_run - mu_pop| / sd_pop and |log(var_run / var_pop)|."""
    errs: dict[str, float] = {}
    bns = [(a, b) for a, b in zip(running, population) if isinstance(a, Batchnorm1d) and isinstance(b, Batchnorm1d)]
    for i, (a, b) in enumerate(bns, 1):
        var_pop = b.var.array.astype(np.float64) + a.eps
        errs[f"BN{i} mean error (sd)"] = float(np.mean(np.abs(a.mu.array - b.mu.array) / np.sqrt(var_pop)))
        errs[f"BN{i} abs log var ratio"] = float(np.mean(np.abs(np.log((a.var.array + a.eps) / var_pop))))
    return errs


def same_weights(arms: dict[str, list[Layer]]) -> bool:
    """Whether every arm holds the same trained parameters (weights, gamma and beta), bit for bit."""
    def params(layers: list[Layer]) -> list[NDArray[Any]]:
        trained = {LinearNoBias: ("w",), Batchnorm1d: ("gamma", "beta")}
        return [getattr(layer, name).array for layer in layers for name in trained.get(type(layer), ())]
    ps = [params(layers) for layers in arms.values()]
    return all(len(p) == len(ps[0]) and all(np.array_equal(a, b) for a, b in zip(ps[0], p)) for p in ps[1:])


def arm_name(momentum: float) -> str:
    return f"momentum {momentum:g}"


def run_population(args: argparse.Namespace) -> int:
    s = setup(args, replace(FULL, runs=3))
    out = out_dir(args, NAME)
    print(f"lazybn run {NAME}: writing to {out}")
    split, source = hipsternet_split(args)
    print(f"data: {source}")
    opt = RMSProp(1e-3, rho=0.9)
    identical: list[bool] = []
    final: list[dict[str, Any]] = []

    def arms(seed: int) -> list[Arm]:
        return [Arm(arm_name(m), hipsternet_net(s, batchnorm=True, init=Init.he, dropout=0.0, seed=seed, momentum=m,
                                                unbiased=True), opt) for m in MOMENTA]

    def evaluate(seed: int, rows: list[dict[str, Any]], layers: dict[str, list[Layer]]) -> None:
        same = same_weights(layers)
        identical.append(same)
        shared: tuple[list[Layer], float, float] | None = None
        for r in rows:
            net = layers[r["arm"]]
            if shared is None or not same:
                pop = population_layers(net, split.x_train)
                shared = (pop, accuracy(pop, split.x_test, split.labels_test),
                          batch_stat_accuracy(net, split.x_test, split.labels_test, TEST_BATCH))
            pop, r["acc_population"], r["acc_batch"] = shared
            if r["epoch"] == s.epochs:
                final.append({"arm": r["arm"], "seed": seed, "acc_moving": r["test_acc"],
                              "acc_population": r["acc_population"], "acc_batch": r["acc_batch"],
                              "acc_batch_small": batch_stat_accuracy(net, split.x_test, split.labels_test, SMALL_BATCH),
                              "acc_batch_all": batch_stat_accuracy(net, split.x_test, split.labels_test,
                                                                   split.x_test.shape[0]),
                              **stat_errors(net, pop)})

    seeds = list(range(args.seed, args.seed + s.runs))
    res = run_seeds(arms, split, s.plan(), seeds, progress=progress(args), on_epoch=evaluate)
    write_metrics(out, "final", final)
    table = []
    for m in MOMENTA:
        mine = [f for f in final if f["arm"] == arm_name(m)]
        entry: dict[str, Any] = {"momentum (new batch)": f"{m:g}", "Keras momentum": f"{1 - m:g}", "runs": len(mine)}
        for key, label in (("acc_moving", "(a) moving average"), ("acc_population", "(b) population"),
                           ("acc_batch", f"(c) test batch {TEST_BATCH}"),
                           ("acc_batch_small", f"test batch {SMALL_BATCH}"), ("acc_batch_all", "whole test set")):
            mu, sd = mean_std(f[key] for f in mine)
            entry[label] = f"{100 * mu:.2f} ± {100 * sd:.2f}"
        table.append(entry)
    keys = [k for k in (final[0] if final else {}) if k.startswith("BN")]
    errors = [{"arm": arm_name(m), **{k: float(np.mean([f[k] for f in final if f["arm"] == arm_name(m)]))
                                      for k in keys}} for m in MOMENTA]
    write_metrics(out, "result", table)
    ok = plot_inference(out, res.rows, s.steps)
    settings = {**s.settings(), "data": source, "weights": "He normal (hipsternet's 'Xavier / 2')",
                "optimizer": "RMSprop, lr 1e-3, rho 0.9", "dropout": "none",
                "batch norm": "before ReLU; eps 1e-8; running variance unbiased (m/(m-1))",
                "momenta (weight of the new batch)": ", ".join(f"{m:g}" for m in MOMENTA), "first seed": args.seed}
    check = ("yes" if all(identical) else "NO") + " (the weights of all momentum arms after every epoch)"
    heading = "Result: test accuracy % after training (mean ± std over runs)"
    heading += f" — {res.stopped}" if res.stopped else ""
    body = (markdown_table(table) if final else
            "No run reached its last epoch, where these are measured; the per-epoch table below has what was.\n")
    sections = [(heading, body),
                ("Moving averages vs population statistics after training",
                 "Mean over features of |mu_run − mu_pop| / sd_pop and of |log(var_run / var_pop)|, per batch-norm "
                 "layer (mean over runs; each run's values are in final.csv):\n\n" + markdown_table(errors)
                 + f"\nIdentical training across momenta: {check}.\n")]
    path = standard_report(out, "Batch norm at inference: moving average vs population vs batch statistics",
                           command_line(args), settings, res.rows, sections, ["inference.png"] if ok else [],
                           steps_per_epoch=s.steps, stopped=res.stopped)
    print(markdown_table(table))
    print(f"report: {path}")
    return res.exit_code()


def plot_inference(out: Path, rows: list[dict[str, Any]], steps: int) -> bool:
    """Test accuracy per method along training (mean over runs), and moving average minus population."""
    arms = [arm_name(m) for m in MOMENTA]

    def curve(arm: str, key: str, minus: str | None = None) -> tuple[list[float], list[float]]:
        # an epoch cut short (Ctrl-C) has rows without the measurements of the epoch hook
        mine = [r for r in rows if r["arm"] == arm and key in r and (minus is None or minus in r)]
        epochs = sorted({r["epoch"] for r in mine})
        mean = [100 * float(np.mean([r[key] - (r[minus] if minus else 0.0) for r in mine if r["epoch"] == e]))
                for e in epochs]
        return [float(e * steps) for e in epochs], mean

    left = {f"(a) moving avg, {a}": curve(a, "test_acc") for a in arms}
    left["(b) population"] = curve(arms[0], "acc_population")
    left[f"(c) test batch {TEST_BATCH}"] = curve(arms[0], "acc_batch")
    right = {a: curve(a, "test_acc", "acc_population") for a in arms}
    right[f"test batch {TEST_BATCH}"] = curve(arms[0], "acc_batch", "acc_population")
    return plot_lines(out / "inference.png", [("test accuracy", "%", left),
                                              ("minus population-statistics accuracy", "points", right)],
                      title="Batch-norm inference statistics", xlabel="iteration")


registry.register(registry.Experiment(
    NAME, "inference with moving averages (small/large momentum) vs exact population vs test-batch statistics",
    "~10 min", run_population))
