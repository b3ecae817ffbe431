"""``lazybn run activations``: first-layer activations and training loss of 784-64-128-10 with
and without batch norm (the PyTorch custom batch-norm article).

The article's notebook (sinitame/neural-networks-experiments, batch_normalization.ipynb):
``SimpleNet`` is Linear(784, 64), ReLU, Linear(64, 128), ReLU, Linear(128, 10); ``SimpleNetBN``
puts its ``CustomBatchNorm`` after each hidden Linear, before the ReLU. Pixels in [0, 1]
(``ToTensor``), batches of 512 reshuffled every epoch, plain SGD with learning rate 0.01, 20
epochs. After each epoch it plots the distribution of the first layer's outputs in inference
mode (Linear for SimpleNet, Linear then batch norm for SimpleNetBN) and at the end the training
loss of every iteration.

lazybn builds the same networks explicitly (``mlp`` has no PyTorch-style init): weights and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as ``nn.Linear`` draws them, the Linear layers keep their
biases in front of batch norm (as the article's do; batch norm cancels them), gamma ~ U(0, 1),
beta 0, eps 1e-5, running averages with weight 0.1 for the new batch (the article's
``momentum=0.9`` on the old value) of the unbiased batch variance. Both networks start from the
same weights (the article draws them separately). The activations are recorded by the runner's
epoch hook on a fixed probe batch (the first 512 training images) with ``logits(layers[:k], x)``.
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

import numpy as np
from numpy.typing import NDArray

from .._files import atomic_write_bytes
from ..construct import matrix, ones, vector, zeros
from ..layers import Act, Activation, Batchnorm1d, Layer, Linear
from ..network import logits
from ..optim import SGD
from ..report import markdown_table, write_metrics
from ..preprocess import Pixels
from . import registry
from .common import command_line, load_split, out_dir, progress, run_seeds, standard_report
from .runner import Arm, Plan, batches_per_pass

NAME = "activations"
SIZES = (784, 64, 128, 10)
ARMS = ("plain", "batchnorm")
COLORS = {"plain": "tab:red", "batchnorm": "tab:green"}
# The article's notebook: running loss of the last 40 batches of epochs 10 and 20.
ARTICLE_LOSS = {10: {"plain": 0.679, "batchnorm": 0.271}, 20: {"plain": 0.395, "batchnorm": 0.162}}
QUANTILES = (1, 5, 25, 50, 75, 95, 99)
F32 = NDArray[np.float32]


@final
@dataclass(frozen=True, slots=True)
class Setup:
    epochs: int = 20
    batch_size: int = 512
    lr: float = 0.01
    probe: int = 512
    shown: tuple[int, ...] = (0, 1, 2, 5, 10, 20)  # epochs whose histograms are drawn


FULL = Setup()
QUICK = Setup(epochs=3, batch_size=64, probe=200, shown=(0, 1, 3))


def pyplot() -> Any:
    """matplotlib's pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt: Any, fig: Any, path: Path, tight: bool = True) -> None:
    """Write a matplotlib figure as PNG (atomically) and close it (``tight``: tight layout first;
    it is slow on figures with many panels)."""
    if tight:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def networks(seed: int) -> dict[str, list[Layer]]:
    """SimpleNet and SimpleNetBN with PyTorch's default Linear init, the same weights in both."""
    rng = np.random.default_rng(seed)
    linears = []
    for nin, nout in zip(SIZES[:-1], SIZES[1:]):
        bound = 1.0 / math.sqrt(nin)
        w = rng.uniform(-bound, bound, (nin, nout))
        linears.append(Linear(matrix(w, np.float32), vector(rng.uniform(-bound, bound, nout), np.float32)))
    gammas = [rng.uniform(0.0, 1.0, n) for n in SIZES[1:-1]]
    plain: list[Layer] = []
    bn: list[Layer] = []
    for i, lin in enumerate(linears):
        plain.append(lin)
        bn.append(lin)
        if i < len(gammas):
            n = SIZES[i + 1]
            bn.append(Batchnorm1d(zeros(n), ones(n), vector(gammas[i], np.float32), zeros(n), eps=1e-5, momentum=0.1))
            plain.append(Activation(Act.relu))
            bn.append(Activation(Act.relu))
    return {"plain": plain, "batchnorm": bn}


def first_layer(arm: str, layers: Sequence[Layer], probe: F32) -> F32:
    """The first layer's output in inference mode: Linear (plain), Linear then batch norm (batchnorm)."""
    k = 2 if arm == "batchnorm" else 1
    return np.asarray(logits(layers[:k], matrix(probe)).array, dtype=np.float32)


def stats(values: F32) -> dict[str, float]:
    out = {"act_mean": float(values.mean()), "act_std": float(values.std())}
    out |= {f"act_p{q:02d}": float(v) for q, v in zip(QUANTILES, np.percentile(values, QUANTILES))}
    return out


def plot_histograms(path: Path, acts: dict[str, dict[int, F32]], shown: Sequence[int], iters: int) -> bool:
    """Density histograms of the first layer's outputs at a few epochs, both networks overlaid."""
    plt = pyplot()
    if plt is None:
        return False
    epochs = [e for e in shown if all(e in acts[a] for a in ARMS)]
    every = np.concatenate([acts[a][e].ravel() for a in ARMS for e in epochs])
    lo, hi = np.percentile(every, [0.05, 99.95])
    edges = np.linspace(lo, hi, 81)
    ncols = min(3, len(epochs))
    nrows = math.ceil(len(epochs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), sharey=True, squeeze=False)
    for ax, e in zip(axes.ravel(), epochs):
        for arm in ARMS:
            v = acts[arm][e]
            counts, _ = np.histogram(v, edges, density=True)
            ax.stairs(counts, edges, fill=True, alpha=0.45, color=COLORS[arm],
                      label=f"{arm} (mean {v.mean():.2f}, std {v.std():.2f})")
        ax.set_title(f"epoch {e} (iteration {e * iters})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(epochs):]:
        ax.set_visible(False)
    fig.suptitle("First-layer outputs on a fixed probe batch (inference mode): Linear (plain) vs Linear + batch norm")
    save_figure(plt, fig, path)
    return True


def plot_quantiles(path: Path, rows: Sequence[dict[str, Any]], iters: int) -> bool:
    """The first layer's 1/5/25/50/75/95/99th percentiles over training, one panel per network."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(ARMS), figsize=(11, 4), sharey=True)
    for ax, arm in zip(axes, ARMS):
        sel = sorted((r for r in rows if r["arm"] == arm), key=lambda r: int(r["epoch"]))
        x = [r["epoch"] * iters for r in sel]
        for lo, hi, alpha in ((1, 99, 0.15), (5, 95, 0.25), (25, 75, 0.4)):
            ax.fill_between(x, [r[f"act_p{lo:02d}"] for r in sel], [r[f"act_p{hi:02d}"] for r in sel],
                            color=COLORS[arm], alpha=alpha, label=f"{lo}-{hi}th percentile")
        ax.plot(x, [r["act_p50"] for r in sel], color=COLORS[arm], label="median")
        ax.set_title(arm)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Distribution of first-layer outputs over training (probe batch, inference mode)")
    save_figure(plt, fig, path)
    return True


def article_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """lazybn's mean training loss of epochs 10 and 20 next to the article's running loss."""
    table = []
    for epoch, ref in ARTICLE_LOSS.items():
        for arm in ARMS:
            mine = [r["loss"] for r in rows if r["arm"] == arm and r["epoch"] == epoch]
            if mine:
                table.append({"epoch": epoch, "network": arm, "lazybn loss": f"{mine[0]:.3f}",
                              "article loss": f"{ref[arm]:.3f}", "lazybn test acc %": "{:.2f}".format(
                                  100 * next(r["test_acc"] for r in rows if r["arm"] == arm and r["epoch"] == epoch))})
    return table


def run_activations(args: argparse.Namespace) -> int:
    s = QUICK if args.quick else FULL
    out = out_dir(args, NAME)
    print(f"lazybn run {NAME}: writing to {out}")
    split, source = load_split(args, args.quick, Pixels.unit)
    print(f"data: {source}")
    probe = split.x_train[: s.probe]
    iters = batches_per_pass(split.x_train.shape[0], s.batch_size)
    acts: dict[str, dict[int, F32]] = {arm: {} for arm in ARMS}
    init_rows: list[dict[str, Any]] = []
    for arm, layers in networks(args.seed).items():
        acts[arm][0] = first_layer(arm, layers, probe)
        init_rows.append({"arm": arm, "seed": args.seed, "epoch": 0, **stats(acts[arm][0])})

    def record(seed: int, rows: list[dict[str, Any]], layers: dict[str, list[Layer]]) -> None:
        for r in rows:
            acts[r["arm"]][r["epoch"]] = first_layer(r["arm"], layers[r["arm"]], probe)
            r |= stats(acts[r["arm"]][r["epoch"]])

    opt = SGD(s.lr)
    plan = Plan(epochs=s.epochs, batch_size=s.batch_size, train_accuracy=False)
    res = run_seeds(lambda seed: [Arm(a, layers, opt) for a, layers in networks(seed).items()], split, plan,
                    [args.seed], progress=progress(args), on_epoch=record)
    act_rows = init_rows + [r for r in res.rows if "act_mean" in r]  # an epoch cut short was not recorded
    write_metrics(out, "activations", [{k: v for k, v in r.items() if k in init_rows[0]} for r in act_rows])
    ok = plot_histograms(out / "activations-hist.png", acts, s.shown, iters)
    ok = plot_quantiles(out / "activations-quantiles.png", act_rows, iters) and ok
    table = article_table(res.rows)
    last = {arm: next(r for r in reversed(act_rows) if r["arm"] == arm) for arm in ARMS}
    notes = ("First-layer outputs on the probe batch after the last epoch: " + "; ".join(
        f"{arm} mean {last[arm]['act_mean']:.3f}, std {last[arm]['act_std']:.3f}, 1-99th percentile "
        f"[{last[arm]['act_p01']:.2f}, {last[arm]['act_p99']:.2f}]" for arm in ARMS)
        + ". The article: with batch norm the distribution stays Gaussian-like around 0 (a small learned scale "
          "and shift); without it, it is skewed to the right with a long tail (to about 5).\n")
    sections = [("lazybn vs the article (training loss)", markdown_table(table) if table else "(too few epochs)\n"),
                ("First-layer activations", notes + "\n" + markdown_table(
                    [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in act_rows]))]
    settings = {"network": "784-64-128-10, ReLU; batch norm after each hidden Linear (before ReLU)",
                "init": "PyTorch Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases; "
                        "gamma ~ U(0,1), beta 0", "batch norm": "eps 1e-5, momentum 0.1 (new batch), unbiased var",
                "optimizer": f"SGD lr {s.lr}", "batch size": s.batch_size, "epochs": s.epochs,
                "data": f"{source}; pixels in [0, 1]", "probe": f"first {s.probe} training images",
                "seed": args.seed}
    path = standard_report(out, "Activation distributions and training loss: 784-64-128-10 with and without batch "
                           "norm", command_line(args), settings,
                           [{k: v for k, v in r.items() if not k.startswith("act_p")} for r in res.rows], sections,
                           ["activations-hist.png", "activations-quantiles.png"] if ok else [],
                           steps_per_epoch=iters, stopped=res.stopped)
    print(markdown_table(table) if table else "")
    print(f"report: {path}")
    return res.exit_code()


registry.register(registry.Experiment(
    NAME, "784-64-128-10 with/without BN: first-layer activation histograms over training, loss curves "
          "(PyTorch article)", "~3 min", run_activations))
