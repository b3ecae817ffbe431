"""``lazybn run bn-vs-dropout``: with a good initialisation, batch norm vs dropout (hipsternet article).

The article's second test: the same 784-256-256-10 ReLU network and mini-batches of 256, now
with "Xavier / 2" weights (hipsternet draws ``randn(D, H) / sqrt(D / 2)``, i.e. He/Kaiming
normal, ``Init.he``) and RMSprop (hipsternet's default learning rate 1e-3, decay 0.9), for 1000
iterations: with batch norm only, with dropout 0.5 only, and with neither. It reports mean ±
std test accuracy 0.9740 ± 0.0016, 0.9692 ± 0.0006 and 0.9640 ± 0.0071, and that its numpy
batch norm makes training about 30% slower.

lazybn records the training time of every 100 iterations of every arm (the arms alternate on the
same batches), so the cost of batch norm per iteration is the median time of the batch-norm arm
over that of the arm with neither. Data and batch-norm settings as in ``bad-init-adam``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..construct import matrix
from ..init import Init, mlp
from ..layers import Batchnorm1d, Layer
from ..network import bn_backward, bn_forward
from ..optim import RMSProp, init_state
from ..report import markdown_table, write_metrics
from ..train import train_step
from . import registry
from .bad_init import Setup, comparison, hipsternet_net, hipsternet_split, ms_per_iteration, per_run, setup
from .common import command_line, out_dir, progress, run_seeds, standard_report
from .runner import Arm, Split

NAME = "bn-vs-dropout"
ARTICLE = {"batchnorm": (0.9740, 0.0016), "dropout": (0.9692, 0.0006), "neither": (0.9640, 0.0071)}
LABELS = {"batchnorm": "batch norm only", "dropout": "dropout 0.5 only", "neither": "neither"}
ARMS = {"batchnorm": (True, 0.0), "dropout": (False, 0.5), "neither": (False, 0.0)}  # (batch norm, dropout)


def timing_table(rows: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """Median wall-clock ms per training iteration per arm (first epoch of each run left out)."""
    ms = {arm: ms_per_iteration(rows, arm, steps) for arm in ARMS}
    return [{"measurement": f"training loop, {LABELS[arm]}", "ms per iteration": t,
             "relative to neither": t / ms["neither"]} for arm, t in ms.items()]


def _median_ms(f: Callable[[], object], rounds: int, reps: int, clock: Callable[[], float]) -> float:
    samples = []
    for _ in range(rounds):
        t0 = clock()
        for _ in range(reps):
            f()
        samples.append((clock() - t0) / reps)
    return 1000.0 * float(np.median(samples))


def paired_timing(nets: dict[str, list[Layer]], opt: RMSProp, split: Split, batch_size: int,
                  rounds: int = 15) -> list[dict[str, Any]]:
    """Median ms per training step of each network on one fixed batch, wall-clock and CPU time of
    this process; the networks take turns 10 steps at a time, so a changing machine load hits them alike."""
    x, y = matrix(split.x_train[:batch_size]), matrix(split.y_train[:batch_size])
    states = {name: init_state(opt, layers) for name, layers in nets.items()}
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in nets}
    for _ in range(rounds):
        for name, layers in nets.items():
            def step(layers: list[Layer] = layers, name: str = name) -> object:
                return train_step(layers, opt, states[name], x, y, key=0)
            out[name]["wall"].append(_median_ms(step, 1, 10, time.perf_counter))
            out[name]["cpu"].append(_median_ms(step, 1, 10, time.process_time))
    base = {clock: float(np.median(out["neither"][clock])) for clock in ("wall", "cpu")}
    return [{"measurement": f"paired steps ({clock}), {LABELS[name]}", "ms per iteration": float(np.median(t[clock])),
             "relative to neither": float(np.median(t[clock])) / base[clock]}
            for clock in ("wall", "cpu") for name, t in out.items()]


def _bn_pair(batch_size: int, features: int) -> dict[str, Callable[[], object]]:
    """One batch-norm layer's forward + backward on a (batch, features) input: lazybn's two fused
    kernels, and the article's numpy code (``batchnorm_forward``/``batchnorm_backward``, eps 1e-8)."""
    rng = np.random.default_rng(0)
    x, dz = (matrix(rng.standard_normal((batch_size, features)), dtype=np.float32) for _ in range(2))
    layer = next(la for la in mlp((features, features, 2), batchnorm=True) if isinstance(la, Batchnorm1d))
    X, D, gamma, beta = x.array, dz.array, layer.gamma.array, layer.beta.array

    def lazy() -> object:
        _, mu, var = bn_forward(x, layer)
        return bn_backward(dz, x, layer, mu, var)

    def article() -> object:
        mu, var = np.mean(X, axis=0), np.var(X, axis=0)
        X_norm = (X - mu) / np.sqrt(var + 1e-8)
        _ = gamma * X_norm + beta
        X_mu, std_inv = X - mu, 1.0 / np.sqrt(var + 1e-8)
        dX_norm = D * gamma
        dvar = np.sum(dX_norm * X_mu, axis=0) * -0.5 * std_inv**3
        dmu = np.sum(dX_norm * -std_inv, axis=0) + dvar * np.mean(-2.0 * X_mu, axis=0)
        return (dX_norm * std_inv) + (dvar * 2 * X_mu / batch_size) + (dmu / batch_size), np.sum(D * X_norm, axis=0)

    return {"lazybn": lazy, "numpy": article}


def bn_layer_timing(batch_size: int, features: int, rounds: int = 15) -> list[dict[str, Any]]:
    """Median CPU ms of one batch-norm layer's forward + backward, lazybn and numpy taking turns
    10 calls at a time; at the experiment's size and at 8x8 (where only fixed per-call costs remain)."""
    rows = []
    for n, d in ((batch_size, features), (8, 8)):
        pair = _bn_pair(n, d)
        samples: dict[str, list[float]] = {name: [] for name in pair}
        for f in pair.values():
            f()
        for _ in range(rounds):
            for name, f in pair.items():
                samples[name].append(_median_ms(f, 1, 10, time.process_time))
        rows += [{"measurement": f"one batch-norm layer, forward + backward, {n}x{d} ({name}, cpu)",
                  "ms per iteration": float(np.median(t)), "relative to neither": ""} for name, t in samples.items()]
    return rows


def timing_text(times: list[dict[str, Any]], s: Setup) -> str:
    """A sentence per measurement kind: batch norm's cost relative to the network without it."""
    def rel(prefix: str) -> str:
        vals = [r["relative to neither"] for r in times if r["measurement"].startswith(prefix)
                and LABELS["batchnorm"] in r["measurement"]]
        return f"{100 * (vals[0] - 1):+.0f}%" if vals else "n/a"

    size = f"{s.batch_size}x{s.hidden} ("
    layer = {r["measurement"].split("(")[1].split(",")[0]: r["ms per iteration"] for r in times
             if r["measurement"].startswith("one batch-norm layer") and size in r["measurement"]}
    tiny = {r["measurement"].split("(")[1].split(",")[0]: r["ms per iteration"] for r in times
            if r["measurement"].startswith("one batch-norm layer") and "8x8 (" in r["measurement"]}
    return (f"Batch norm's cost per training iteration (batch {s.batch_size}, forward, backward and RMSprop update) "
            f"over the same network without it: {rel('training loop')} in the training loop (median wall-clock time "
            f"per {s.steps} iterations, the first {s.steps} left out: kernel compilation), "
            f"{rel('paired steps (wall)')} wall-clock and {rel('paired steps (cpu)')} CPU time in the paired "
            f"micro-benchmark (the trained networks taking turns on one batch). The article measured about +30% "
            f"for its numpy code. One batch-norm layer's forward and backward alone: "
            f"{layer.get('lazybn', float('nan')):.2f} ms in lazybn's two fused kernels vs "
            f"{layer.get('numpy', float('nan')):.2f} ms for the article's numpy code (CPU time); on an 8x8 input, "
            f"where only fixed per-call costs remain, {tiny.get('lazybn', float('nan')):.2f} ms vs "
            f"{tiny.get('numpy', float('nan')):.2f} ms.\n")


def run_bn_vs_dropout(args: argparse.Namespace) -> int:
    s = setup(args)
    out = out_dir(args, NAME)
    print(f"lazybn run {NAME}: writing to {out}")
    split, source = hipsternet_split(args)
    print(f"data: {source}")
    opt = RMSProp(1e-3, rho=0.9)

    def arms(seed: int) -> list[Arm]:
        return [Arm(name, hipsternet_net(s, batchnorm=bn, init=Init.he, dropout=p, seed=seed), opt)
                for name, (bn, p) in ARMS.items()]

    seeds = list(range(args.seed, args.seed + s.runs))
    res = run_seeds(arms, split, s.plan(), seeds, progress=progress(args))
    table = comparison(res.rows, ARTICLE, LABELS)
    last = res.layers[max(res.layers)] if res.layers else {}
    times = timing_table(res.rows, s.steps)
    if not res.stopped:  # a stopped run reports what it measured now, without further benchmarks
        if "batchnorm" in last and "neither" in last:
            times += paired_timing({arm: last[arm] for arm in ("batchnorm", "neither")}, opt, split, s.batch_size,
                                   rounds=3 if args.quick else 15)
        times += bn_layer_timing(s.batch_size, s.hidden, rounds=3 if args.quick else 15)
    timing = timing_text(times, s) if not res.stopped else (
        f"The run was {res.stopped}: the table has the training loop's times; the micro-benchmarks were not run.\n")
    write_metrics(out, "result", table)
    write_metrics(out, "timing", times)
    settings = {**s.settings(), "data": source, "weights": "He normal N(0, 2/fan_in) (hipsternet's 'Xavier / 2')",
                "optimizer": "RMSprop, lr 1e-3, rho 0.9, eps 1e-8", "dropout arm": "p = 0.5 after each hidden ReLU",
                "batch norm": "before ReLU; eps 1e-8; running averages: momentum 0.1, biased variance",
                "first seed": args.seed}
    sections = [("Result: lazybn vs the article (final test accuracy, mean ± std over runs)", markdown_table(table)),
                ("Per run (final test accuracy %)", markdown_table(per_run(res.rows, list(ARMS)), "{:.2f}")),
                ("Cost of batch norm", markdown_table(times, "{:.2f}") + "\n" + timing)]
    path = standard_report(out, "Good initialisation: batch norm vs dropout vs neither (hipsternet)",
                           command_line(args), settings, res.rows, sections, steps_per_epoch=s.steps,
                           stopped=res.stopped)
    print(markdown_table(table))
    print(markdown_table(times, "{:.2f}") + timing, end="")
    print(f"report: {path}")
    return res.exit_code()


registry.register(registry.Experiment(
    NAME, "Xavier/2 init, RMSprop: batch norm only vs dropout only vs neither, and batch norm's time cost",
    "~8 min", run_bn_vs_dropout))
