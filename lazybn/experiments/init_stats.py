"""``lazybn run init-stats``: activation statistics of a deep tanh network at initialisation.

The TensorFlow batch-norm article's first experiment (its code is adapted from CS231n): 500
samples of 200 standard-normal inputs pass through 10 fully connected tanh layers of 200 units
(``H = tanh(X · W)``, no bias) and each layer's mean and standard deviation are plotted, for

* small weights ``W = 0.01 · N(0, 1)`` (``lazybn.init.weights(Init.small, ...)``), and
* Xavier weights ``W = N(0, 1) / sqrt(fan_in)`` as the article's code draws them
  (``lazybn.init.weights(Init.normal, ..., gain=1/sqrt(fan_in))``; lazybn's ``Init.xavier``,
  Glorot's ``sqrt(2 / (fan_in + fan_out))``, is the same here because fan_in = fan_out = 200),

each without and with batch norm before every tanh (``LinearNoBias, Batchnorm1d, Activation``).
Nothing is trained: batch norm normalises with the batch's own statistics (the training-mode
forward, :func:`lazybn.batchnorm.bn_forward`; gamma 1, beta 0, eps 1e-5), the plain layers run
lazybn's forward. Both inits use the same N(0, 1) draws (only the scale differs) and every
variant sees the same input. The article's numpy code, run on the same numbers, is the reference.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..array import Matrix
from ..construct import matrix, ones, zeros
from ..init import Init, weights
from ..layers import Act, Activation, Batchnorm1d, Layer, LinearNoBias
from ..network import bn_forward, logits
from ..report import markdown_table, write_metrics, write_report
from . import registry
from .activations import pyplot, save_figure
from .common import command_line, mean_std, out_dir

NAME = "init-stats"
DEPTH, WIDTH, SAMPLES = 10, 200, 500
EPS = 1e-5
INITS = ("small", "xavier")
VARIANTS = tuple((init, bn) for init in INITS for bn in (False, True))
F64 = NDArray[np.float64]


def label(init: str, bn: bool) -> str:
    scale = "0.01·N(0,1)" if init == "small" else "N(0,1)/sqrt(fan_in)"
    return f"{scale}, {'batch norm' if bn else 'no batch norm'}"


def weight_draws(init: str, seed: int) -> list[Matrix]:
    """The 10 weight matrices (200 x 200, float64); both inits scale the same N(0, 1) draws."""
    rng = np.random.default_rng([seed, 1])
    if init == "small":
        return [weights(Init.small, WIDTH, WIDTH, rng, np.float64) for _ in range(DEPTH)]
    return [weights(Init.normal, WIDTH, WIDTH, rng, np.float64, gain=1.0 / math.sqrt(WIDTH)) for _ in range(DEPTH)]


def network(ws: Sequence[Matrix], batchnorm: bool) -> list[Layer]:
    """``[LinearNoBias, (Batchnorm1d), Activation(tanh)] * 10``."""
    layers: list[Layer] = []
    for w in ws:
        layers.append(LinearNoBias(w))
        if batchnorm:
            n = w.shape[1]
            layers.append(Batchnorm1d(zeros(n, np.float64), ones(n, np.float64), ones(n, np.float64),
                                      zeros(n, np.float64), eps=EPS))
        layers.append(Activation(Act.tanh))
    return layers


def tanh_outputs(layers: Sequence[Layer], x: Matrix) -> list[F64]:
    """Every tanh layer's output; batch norm normalises with the batch's statistics (training mode)."""
    outs = []
    for layer in layers:
        x = bn_forward(x, layer)[0] if isinstance(layer, Batchnorm1d) else logits([layer], x)
        if isinstance(layer, Activation):
            outs.append(np.asarray(x.array, dtype=np.float64))
    return outs


def article_code(x: F64, ws: Sequence[F64], batchnorm: bool) -> list[F64]:
    """The article's numpy loop (``H = tanh(X · W)``), with a numpy batch norm before tanh if asked."""
    outs, h = [], x
    for w in ws:
        z = h @ w
        if batchnorm:
            z = (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + EPS)
        h = np.tanh(z)
        outs.append(h)
    return outs


def tanh_std_of_unit_normal() -> float:
    """sqrt(E[tanh(Z)^2]) for Z ~ N(0, 1): the std of tanh after an exact standardisation."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sqrt(np.sum(w * np.tanh(z) ** 2) / np.sum(w)))


def measure(seed: int, samples: int) -> tuple[list[dict[str, Any]], dict[tuple[str, bool], list[F64]]]:
    """Per variant and layer: lazybn's mean/std, the article code's, and the largest difference."""
    x = np.random.default_rng([seed, 0]).standard_normal((samples, WIDTH))
    rows: list[dict[str, Any]] = []
    acts: dict[tuple[str, bool], list[F64]] = {}
    for init, bn in VARIANTS:
        ws = weight_draws(init, seed)
        mine = tanh_outputs(network(ws, bn), matrix(x, np.float64))
        ref = article_code(x, [np.asarray(w.array, dtype=np.float64) for w in ws], bn)
        acts[(init, bn)] = mine
        for k, (h, r) in enumerate(zip(mine, ref), start=1):
            rows.append({"init": init, "batchnorm": bn, "seed": seed, "layer": k, "mean": float(h.mean()),
                         "std": float(h.std()), "article_code_mean": float(r.mean()),
                         "article_code_std": float(r.std()), "max_abs_diff": float(np.max(np.abs(h - r)))})
    return rows, acts


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of each variant's per-layer mean and std."""
    out = []
    ratio = 0.01 * math.sqrt(WIDTH)
    for init, bn in VARIANTS:
        for k in range(1, DEPTH + 1):
            sel = [r for r in rows if r["init"] == init and r["batchnorm"] == bn and r["layer"] == k]
            (m, dm), (s, ds) = mean_std(r["mean"] for r in sel), mean_std(r["std"] for r in sel)
            entry: dict[str, Any] = {"variant": label(init, bn), "layer": k, "mean": f"{m:+.2e} ± {dm:.1e}",
                                     "std": f"{s:.4g} ± {ds:.1g}"}
            if init == "small" and not bn:
                entry["std if tanh were linear"] = f"{ratio ** k:.4g}"
            out.append(entry)
    return out


def plot_stats(path: Path, rows: Sequence[dict[str, Any]], seed: int) -> bool:
    """Layer mean and layer std (log scale) per variant, as the article's first graph."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for init, bn in VARIANTS:
        sel = [r for r in rows if r["init"] == init and r["batchnorm"] == bn and r["seed"] == seed]
        style = dict(marker="s" if init == "small" else "o", markersize=8 if init == "small" else 4,
                     linestyle="-" if bn else "--", label=label(init, bn))
        axes[0].plot([r["layer"] for r in sel], [r["mean"] for r in sel], **style)
        axes[1].plot([r["layer"] for r in sel], [r["std"] for r in sel], **style)
    axes[1].set_yscale("log")
    for ax, title in zip(axes, ("layer mean", "layer std (log scale)")):
        ax.set_title(title)
        ax.set_xlabel("tanh layer")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"10 tanh layers of 200 units, 500 N(0,1) inputs, at initialisation (seed {seed})")
    save_figure(plt, fig, path)
    return True


def plot_histograms(path: Path, acts: dict[tuple[str, bool], list[F64]]) -> bool:
    """Histograms of every layer's tanh output in [-1, 1] (30 bins), one row per variant."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(len(VARIANTS), DEPTH, figsize=(2.0 * DEPTH, 2.0 * len(VARIANTS)), sharex=True)
    for row, (init, bn) in enumerate(VARIANTS):
        for k, h in enumerate(acts[(init, bn)]):
            ax = axes[row][k]
            counts, edges = np.histogram(h, 30, range=(-1, 1))
            ax.stairs(counts, edges, fill=True, color="tab:green" if bn else "tab:blue")
            ax.set_yticks([])
            ax.set_title(f"layer {k + 1}\nmean {h.mean():+.4f}\nstd {h.std():.6f}", fontsize=7)
        axes[row][0].set_ylabel(label(init, bn), fontsize=7)
    fig.suptitle("tanh outputs per layer at initialisation (rows: weights, batch norm or not)")
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.05, top=0.86, hspace=0.9, wspace=0.1)
    save_figure(plt, fig, path, tight=False)
    return True


def run_init_stats(args: argparse.Namespace) -> int:
    out = out_dir(args, NAME)
    samples, n_seeds = (100, 1) if args.quick else (SAMPLES, 5)
    print(f"lazybn run {NAME}: writing to {out}")
    if getattr(args, "data_dir", None):
        print(f"note: {NAME} feeds the networks random inputs, not MNIST; --data-dir is not used")
    rows: list[dict[str, Any]] = []
    acts: dict[tuple[str, bool], list[F64]] = {}
    for seed in range(args.seed, args.seed + n_seeds):
        seed_rows, seed_acts = measure(seed, samples)
        rows += seed_rows
        acts = acts or seed_acts
    write_metrics(out, "metrics", rows)
    table = summary(rows)
    write_metrics(out, "summary", table)
    ok = plot_stats(out / "layer-stats.png", rows, args.seed)
    ok = plot_histograms(out / "histograms.png", acts) and ok
    worst = max(r["max_abs_diff"] for r in rows)
    bn_std = tanh_std_of_unit_normal()
    notes = (f"Largest difference between lazybn's activations and the article's numpy code on the same numbers: "
             f"{worst:.2e} (float64).\n\nWith batch norm each tanh input is standardised per unit, so every layer's "
             f"std is close to sqrt(E[tanh(Z)^2]) = {bn_std:.4f} for Z ~ N(0, 1), whatever the weights' scale (the "
             "two batch-norm variants scale the same draws, so they differ only through eps). "
             f"Without it, 0.01 weights shrink the std by about 0.01·sqrt(200) = {0.01 * math.sqrt(WIDTH):.4f} "
             "per layer (tanh is nearly linear there); Xavier weights keep the pre-activation variance and only "
             "tanh's squashing shrinks it, slowly.\n")
    settings = {"network": f"{DEPTH} x (linear {WIDTH}->{WIDTH}, no bias; tanh)", "input": f"{samples} x {WIDTH} N(0,1)",
                "small init": "0.01·N(0,1): lazybn.init.weights(Init.small)",
                "xavier init": "N(0,1)/sqrt(fan_in): lazybn.init.weights(Init.normal, gain=1/sqrt(200))",
                "batch norm": f"training-mode statistics of the batch (bn_forward), gamma 1, beta 0, eps {EPS:g}",
                "dtype": "float64", "seeds": f"{args.seed}..{args.seed + n_seeds - 1} (figures: seed {args.seed})"}
    sections = [("Observations", notes), ("Per layer: mean ± std over seeds", markdown_table(table))]
    path = write_report(out, "Activation statistics at initialisation: 10 tanh layers, with and without batch norm",
                        command_line(args), settings, sections, ["layer-stats.png", "histograms.png"], ok)
    last = [r for r in table if r["layer"] == DEPTH]
    print(markdown_table([{k: r[k] for k in ("variant", "layer", "mean", "std")} for r in last]))
    print(f"report: {path}")
    return 0


registry.register(registry.Experiment(
    NAME, "10 tanh layers at init: per-layer mean/std, 0.01 vs Xavier weights, with/without BN (TF article)",
    "~10 s", run_init_stats))
