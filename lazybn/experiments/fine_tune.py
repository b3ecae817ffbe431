"""``lazybn run fine-tune``: what must be frozen when a batch-norm network is fine-tuned?

The MNIST batch-norm network of ``lazybn train`` (784-300-50-10, batch norm before each ReLU,
no biases, standardised pixels), with He-initialised weights N(0, 2/inputs), is pretrained with
SGD (lr 0.1, batch 100) on the digits 0-4, the *source* task. Its head (the last
``LinearNoBias``) is then drawn afresh and the network is fine-tuned on 500 images of the
digits 5-9 (100 per class), the *target* task, with SGD (lr 0.1, batch 50), in four arms:

* ``all``: every layer trains, and batch norm normalises with each batch (training as usual).
* ``head, bn drift``: the features (both hidden ``LinearNoBias`` layers and batch norm's γ and
  β) are ``trainable=False``, but batch norm still trains: it normalises with the target
  batches' statistics and its running statistics move to them. This is what Keras did with
  ``trainable=False`` before version 2.1.3, and what a PyTorch loop does that calls
  ``requires_grad_(False)`` but leaves the batch-norm modules in train mode.
* ``head, bn frozen``: the same, with ``frozen=True`` on batch norm: the features are exactly the
  pretrained ones (Keras's ``trainable=False`` since then).
* ``all, bn frozen``: every weight, γ and β trains, and batch norm normalises with its running
  statistics, which stay as they are (``bn.eval()`` inside a PyTorch training loop).

After every epoch each arm is measured on the target test images (5-9), and for *source
retention*: the pretrained head is put back on the arm's features and the source test images
(0-4) are classified in inference mode. The pretrained network's own source accuracy is the
reference; ``head, bn frozen`` keeps it exactly (checked every epoch and reported).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, final

import numpy as np

from ..errors import DataError
from ..init import Init, mlp
from ..layers import Batchnorm1d, Layer, LinearNoBias
from ..optim import SGD
from ..report import markdown_table, plot_lines, write_metrics
from ..train import accuracy
from . import registry
from .common import command_line, epoch_summary, load_split, mean_std, out_dir, progress, run_seeds, standard_report
from .train_settings import SIZES
from .runner import Arm, Plan, Split, run

NAME = "fine-tune"
ARMS = ("all", "head, bn drift", "head, bn frozen", "all, bn frozen")
SOURCE = (0, 1, 2, 3, 4)


@final
@dataclass(frozen=True, slots=True)
class Setup:
    pretrain_epochs: int = 3
    per_class: int = 100  # target training images per class
    epochs: int = 20
    batch_size: int = 50
    runs: int = 3


FULL = Setup()
QUICK = Setup(pretrain_epochs=2, per_class=10, epochs=3, batch_size=25, runs=2)


def tasks(data: Split, per_class: int) -> tuple[Split, Split]:
    """The source task (every image of the digits 0-4) and the target task (``per_class`` training
    images of each digit 5-9, the same for every seed, and all their test images)."""
    def part(train: np.ndarray[Any, Any], test: np.ndarray[Any, Any]) -> Split:
        return Split(x_train=data.x_train[train], y_train=data.y_train[train], labels_train=data.labels_train[train],
                     x_test=data.x_test[test], labels_test=data.labels_test[test])

    src_train, src_test = np.isin(data.labels_train, SOURCE), np.isin(data.labels_test, SOURCE)
    order = np.random.default_rng(0).permutation(data.labels_train.shape[0])
    picked = np.sort(np.concatenate([order[data.labels_train[order] == c][:per_class]
                                     for c in sorted(set(range(10)) - set(SOURCE))]))
    return part(np.flatnonzero(src_train), np.flatnonzero(src_test)), part(picked, np.flatnonzero(~src_test))


def fine_tune_arms(pretrained: list[Layer], head: LinearNoBias, opt: SGD) -> list[Arm]:
    """The four arms: the pretrained features with a fresh head, fixed or not, batch norm frozen or not."""
    def features(fixed: bool, frozen: bool) -> list[Layer]:
        out: list[Layer] = []
        for layer in pretrained[:-1]:
            if isinstance(layer, Batchnorm1d):
                layer = replace(layer, frozen=frozen, trainable=not fixed)
            elif isinstance(layer, LinearNoBias):
                layer = replace(layer, trainable=not fixed)
            out.append(layer)
        return [*out, head]

    return [Arm(name, features(fixed, frozen), opt)
            for name, fixed, frozen in zip(ARMS, (False, True, True, False), (False, False, True, True))]


def run_fine_tune(args: argparse.Namespace) -> int:
    s = QUICK if args.quick else FULL
    out = out_dir(args, NAME)
    print(f"lazybn run {NAME}: writing to {out}")
    data, source = load_split(args, args.quick)
    src, tgt = tasks(data, s.per_class)
    for task, digits in ((src, "0-4"), (tgt, "5-9")):
        if task.x_train.shape[0] < 2 or task.x_test.shape[0] < 1:
            raise DataError(f"{NAME} trains on the digits 0-4, then on 5-9; {source} has {task.x_train.shape[0]} "
                            f"training and {task.x_test.shape[0]} test images of {digits}, and each task needs at "
                            "least 2 and 1")
    print(f"data: {source}; source task: {src.x_train.shape[0]} images of 0-4; target task: "
          f"{tgt.x_train.shape[0]} images of 5-9")
    opt = SGD(0.1)
    pretrained: dict[int, tuple[list[Layer], float]] = {}  # per seed: the network and its source accuracy

    def arms(seed: int) -> list[Arm]:
        net = mlp(SIZES, batchnorm=True, init=Init.he, seed=seed)
        done = run([Arm("pretrain", net, opt)], src, Plan(s.pretrain_epochs, 100, seed, train_accuracy=False),
                   progress=progress(args))
        if done.interrupted:  # the run stops here, not with a network pretrained for fewer epochs
            raise KeyboardInterrupt
        layers = done.layers["pretrain"]
        ref = accuracy(layers, src.x_test, src.labels_test)
        pretrained[seed] = (layers, ref)
        print(f"seed {seed}: pretrained on 0-4 for {s.pretrain_epochs} epochs: source test accuracy {100 * ref:.2f}%")
        head = mlp(SIZES, batchnorm=True, init=Init.he, seed=seed + 10_000)[-1]
        assert isinstance(head, LinearNoBias)
        return fine_tune_arms(layers, head, opt)

    def retention(seed: int, rows: list[dict[str, Any]], layers: dict[str, list[Layer]]) -> None:
        old, ref = pretrained[seed]
        for r in rows:  # both keys at once: a row has both or neither
            r |= {"source_acc": accuracy([*layers[r["arm"]][:-1], old[-1]], src.x_test, src.labels_test),
                  "source_acc_pretrained": ref}

    seeds = list(range(args.seed, args.seed + s.runs))
    res = run_seeds(arms, tgt, Plan(s.epochs, s.batch_size), seeds, progress=progress(args), on_epoch=retention)
    measured = [r for r in res.rows if "source_acc" in r]  # a Ctrl-C in ``retention`` leaves rows without it
    last = max((r["epoch"] for r in measured), default=0)
    table = []
    for arm in ARMS:
        final = [r for r in measured if r["arm"] == arm and r["epoch"] == last]
        (t_m, t_s), (s_m, s_s), (r_m, _) = (mean_std(r[k] for r in final) for k in ("test_acc", "source_acc",
                                                                                      "source_acc_pretrained"))
        table.append({"arm": arm, "runs": len(final), "target test acc %": f"{100 * t_m:.2f} ± {100 * t_s:.2f}",
                      "source retention %": f"{100 * s_m:.2f} ± {100 * s_s:.2f}",
                      "change from pretrained (points)": f"{100 * (s_m - r_m):+.2f}"})
    frozen = [r["source_acc"] == r["source_acc_pretrained"] for r in measured if r["arm"] == "head, bn frozen"]
    check = (f"`head, bn frozen` kept the pretrained source accuracy exactly after every epoch of every run: "
             f"{('yes' if all(frozen) else 'NO') if frozen else 'no epoch was measured'}.\n")
    write_metrics(out, "result", table)
    settings = {"network": "784-300-50-10, batch norm before each ReLU, no biases, He weights N(0, 2/inputs)",
                "data": source, "pretraining": f"digits 0-4, SGD lr 0.1, batch 100, {s.pretrain_epochs} epochs",
                "fine-tuning": f"digits 5-9, {s.per_class} images per class, a fresh head, SGD lr 0.1, "
                               f"batch {s.batch_size}, {s.epochs} epochs",
                "runs (seeds)": s.runs, "first seed": args.seed}
    sections = [("Result after the last epoch (mean ± std over runs)" + (f" — {res.stopped}" if res.stopped else ""),
                 markdown_table(table)),
                ("Exact retention", check)]
    summary = epoch_summary(measured)

    def series(key: str) -> dict[str, tuple[list[float], list[float]]]:
        return {arm: ([float(r["epoch"]) for r in summary if r["arm"] == arm],
                      [100.0 * r[key] for r in summary if r["arm"] == arm]) for arm in ARMS}

    retained = series("source_acc")
    if summary:
        retained["pretrained"] = ([float(r["epoch"]) for r in summary if r["arm"] == ARMS[0]],
                                  [100.0 * r["source_acc_pretrained"] for r in summary if r["arm"] == ARMS[0]])
    drawn = plot_lines(out / "retention.png", [("target task: test accuracy (5-9)", "%", series("test_acc")),
                                               ("source task with the pretrained head (0-4)", "%", retained)],
                       title="Fine-tuning a batch-norm network (mean over runs)")
    path = standard_report(out, "Fine-tuning a batch-norm network: what to freeze", command_line(args), settings,
                           res.rows, sections, ["retention.png"] if drawn else [], stopped=res.stopped)
    print(markdown_table(table))
    print(check, end="")
    print(f"report: {path}")
    return res.exit_code()


registry.register(registry.Experiment(
    NAME, "pretrain on digits 0-4, fine-tune on 5-9: frozen features with and without frozen batch norm",
    "~2 min", run_fine_tune))
