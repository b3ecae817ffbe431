"""``lazybn run bad-init-adam``: batch norm rescues a badly initialised network (hipsternet article).

The article's test: a 784-256-256-10 ReLU network, weights drawn from a standard normal
(``W = np.random.randn(D, H)``), dropout 0.5 after each hidden ReLU, mini-batches of 256,
1000 iterations of Adam with learning rate 1e-2; with batch norm before each ReLU and without.
It reports the mean ± std test accuracy over repeated runs: 0.8853 ± 0.0079 (batch norm) and
0.1388 ± 0.0219 (no batch norm).

As in hipsternet's ``run.py``, pixels are scaled to [0, 1] and the training set's mean pixel (one
scalar) is subtracted; batch norm uses eps 1e-8 and a running average with weight 0.1 for the new
batch of the biased batch variance. Differences that remain (see docs/experiments.md): lazybn
adds no L2 penalty (hipsternet's ``lam=1e-3``), takes each block of 100 iterations as disjoint
batches of a fresh shuffle of all 60000 training images (hipsternet: each batch a random one of
the fixed batches of 55000), and its
batch-norm network has no redundant biases.
"""

# This module also holds the hipsternet setup shared with ``bn-vs-dropout`` and ``population-stats``.

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, final

import numpy as np

from ..init import Init, mlp
from ..layers import Batchnorm1d, Layer
from ..optim import Adam
from ..report import markdown_table, write_metrics
from ..preprocess import Pixels
from . import registry
from .common import command_line, load_split, mean_std, out_dir, progress, run_seeds, standard_report
from .runner import Arm, Plan, Split

NAME = "bad-init-adam"
ARTICLE = {"batchnorm": (0.8853, 0.0079), "plain": (0.1388, 0.0219)}


@final
@dataclass(frozen=True, slots=True)
class Setup:
    """Size of a hipsternet-style run: ``epochs`` reported "epochs" of ``steps`` iterations each."""

    hidden: int = 256
    batch_size: int = 256
    epochs: int = 10
    steps: int = 100
    runs: int = 5
    train_eval: int = 10000  # training samples used for the train accuracy

    @property
    def iterations(self) -> int:
        return self.epochs * self.steps

    def plan(self) -> Plan:
        return Plan(epochs=self.epochs, batch_size=self.batch_size, steps_per_epoch=self.steps,
                    max_train_eval=self.train_eval)

    def settings(self) -> dict[str, Any]:
        return {"network": f"784-{self.hidden}-{self.hidden}-10, ReLU", "batch size": self.batch_size,
                "iterations": self.iterations, "runs (seeds)": self.runs}


FULL = Setup()
QUICK = Setup(hidden=64, batch_size=64, epochs=2, steps=5, runs=2, train_eval=600)


def setup(args: argparse.Namespace, full: Setup = FULL) -> Setup:
    return QUICK if args.quick else full


def hipsternet_split(args: argparse.Namespace) -> tuple[Split, str]:
    """The data as hipsternet's ``run.py`` prepares it: pixels / 255 minus the training mean pixel."""
    split, source = load_split(args, args.quick, Pixels.unit)
    mean = np.float32(split.x_train.mean(dtype=np.float64))
    centred = replace(split, x_train=split.x_train - mean, x_test=split.x_test - mean)
    return centred, f"{source}; pixels / 255 minus the training mean pixel ({float(mean):.4f})"


def hipsternet_net(s: Setup, *, batchnorm: bool, init: Init, dropout: float, seed: int,
                   momentum: float = 0.1, unbiased: bool = False) -> list[Layer]:
    """784-H-H-10 with batch norm (eps 1e-8, by default a biased running variance) before each ReLU, or not."""
    layers = mlp((784, s.hidden, s.hidden, 10), batchnorm=batchnorm, init=init, seed=seed, dropout=dropout,
                 eps=1e-8, momentum=momentum)
    return [replace(layer, unbiased=unbiased) if isinstance(layer, Batchnorm1d) else layer for layer in layers]


def final_accuracies(rows: list[dict[str, Any]], arm: str) -> list[float]:
    """Each run's test accuracy at its last epoch, in seed order."""
    mine = [r for r in rows if r["arm"] == arm]
    last = max((r["epoch"] for r in mine), default=0)
    return [float(r["test_acc"]) for r in mine if r["epoch"] == last]


def ms_per_iteration(rows: list[dict[str, Any]], arm: str, steps: int) -> float:
    """Median training time per iteration (ms), leaving out each run's first epoch (kernel compilation)."""
    times = [r["seconds"] for r in rows if r["arm"] == arm and r["epoch"] > 1]
    times = times or [r["seconds"] for r in rows if r["arm"] == arm]
    return 1000.0 * float(np.median(times)) / steps if times else float("nan")


def comparison(rows: list[dict[str, Any]], article: dict[str, tuple[float, float]],
               labels: dict[str, str]) -> list[dict[str, Any]]:
    """Per arm: lazybn's mean ± std of the final test accuracy next to the article's (in %)."""
    table = []
    for arm, (a_mean, a_std) in article.items():
        accs = final_accuracies(rows, arm)
        m, s = mean_std(accs)
        table.append({"network": labels[arm], "runs": len(accs), "lazybn test acc %": f"{100 * m:.2f} ± {100 * s:.2f}",
                      "article %": f"{100 * a_mean:.2f} ± {100 * a_std:.2f}",
                      "difference (points)": f"{100 * (m - a_mean):+.2f}"})
    return table


def per_run(rows: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    accs = {arm: final_accuracies(rows, arm) for arm in arms}
    return [{"seed": seed, **{f"{arm} %": 100 * accs[arm][i] for arm in arms if i < len(accs[arm])}}
            for i, seed in enumerate(seeds)]


def run_bad_init(args: argparse.Namespace) -> int:
    s = setup(args)
    out = out_dir(args, NAME)
    print(f"lazybn run {NAME}: writing to {out}")
    split, source = hipsternet_split(args)
    print(f"data: {source}")
    opt = Adam(1e-2)

    def arms(seed: int) -> list[Arm]:
        return [Arm(name, hipsternet_net(s, batchnorm=name == "batchnorm", init=Init.normal, dropout=0.5,
                                         seed=seed), opt) for name in ("batchnorm", "plain")]

    seeds = list(range(args.seed, args.seed + s.runs))
    res = run_seeds(arms, split, s.plan(), seeds, progress=progress(args))
    labels = {"batchnorm": "with batch norm", "plain": "without batch norm"}
    table = comparison(res.rows, ARTICLE, labels)
    write_metrics(out, "result", table)
    t_bn, t_plain = (ms_per_iteration(res.rows, arm, s.steps) for arm in ("batchnorm", "plain"))
    timing = (f"Median training time per iteration (batch {s.batch_size}, both with dropout; first epoch of each run "
              f"left out): {t_bn:.1f} ms with batch norm, {t_plain:.1f} ms without: batch norm costs "
              f"{100 * (t_bn / t_plain - 1):+.0f}% (the article: about +30% for its numpy code).\n")
    settings = {**s.settings(), "data": source, "weights": "N(0, 1) (Init.normal), zero biases",
                "optimizer": "Adam, lr 1e-2, betas 0.9/0.999, eps 1e-8", "dropout": 0.5,
                "batch norm": "before ReLU; eps 1e-8; running averages: momentum 0.1, biased variance",
                "first seed": args.seed}
    sections = [("Result: lazybn vs the article (final test accuracy, mean ± std over runs)", markdown_table(table)),
                ("Per run (final test accuracy %)", markdown_table(per_run(res.rows, list(labels)), "{:.2f}")),
                ("Time per iteration", timing)]
    path = standard_report(out, "Bad initialisation with Adam: batch norm vs none (hipsternet)", command_line(args),
                           settings, res.rows, sections, steps_per_epoch=s.steps, stopped=res.stopped,
                           log_loss=True)
    print(markdown_table(table))
    print(timing, end="")
    print(f"report: {path}")
    return res.exit_code()


registry.register(registry.Experiment(
    NAME, "3-layer MLP, N(0,1) weights, Adam 1e-2, dropout 0.5: batch norm vs none (hipsternet article)",
    "~5 min", run_bad_init))
