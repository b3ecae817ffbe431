"""One MNIST training epoch (784-300-50-10, batch 100, SGD, float32), with and without batch norm.

Each measurement runs in its own process (no two thread pools in one process): lazybn's
``train_step``; the same networks in plain numpy with the closed-form batch-norm backward;
PyTorch CPU (skipped without torch); and the epoch's matrix products alone (3 forward, 3
weight-gradient and 2 input-gradient products per step), the floor at batch 100. Data are
random (the epoch's cost does not depend on the values); the first steps are a warm-up. Every
configuration runs ``--rounds`` times, the rounds interleaved (a noisy machine slows
neighbouring runs alike); the table gives the median round and the fastest.

    python benchmarks/bench_epoch.py [--steps 600] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import JSON, machine_facts, markdown_table, run_isolated  # noqa: E402

SIZES = (784, 300, 50, 10)
BATCH = 100
LR = 0.01
F = np.ndarray[Any, Any]


def _data(steps: int) -> tuple[F, F]:
    rng = np.random.default_rng(0)
    x = rng.random((steps * BATCH, SIZES[0]), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, steps * BATCH)]
    return x, y


def _timed(step: Any, steps: int, warm: int = 20) -> float:
    for k in range(warm):
        step(k)
    t0 = time.perf_counter()
    for k in range(steps):
        step(k)
    return (time.perf_counter() - t0) * 600 / steps  # seconds per 600-step epoch


def lazybn_epoch(bn: bool, steps: int) -> JSON:
    import lazybn as lb
    from lazybn.optim import init_state
    from lazybn.train import train_step

    x, y = _data(steps)
    layers = lb.mlp(SIZES, batchnorm=bn, seed=0)
    opt = lb.SGD(LR)
    state = [layers, init_state(opt, layers)]

    def step(k: int) -> None:
        s = slice((k % steps) * BATCH, (k % steps + 1) * BATCH)
        r = train_step(state[0], opt, state[1], lb.matrix(x[s]), lb.matrix(y[s]))  # type: ignore[arg-type]
        state[0], state[1] = r.layers, r.opt_state

    return _timed(step, steps)


def numpy_epoch(bn: bool, steps: int) -> JSON:
    """The same networks in plain numpy, closed-form batch-norm backward."""
    x, y = _data(steps)
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])]
    bs = [np.zeros(b, np.float32) for b in SIZES[1:]]
    gs = [np.ones(b, np.float32) for b in SIZES[1:-1]]
    be = [np.zeros(b, np.float32) for b in SIZES[1:-1]]

    def step(k: int) -> None:
        s = slice((k % steps) * BATCH, (k % steps + 1) * BATCH)
        h, t = x[s], y[s]
        inputs: list[F] = []  # input of each linear layer
        pre: list[F] = []  # input of each ReLU
        norm: list[tuple[F, F]] = []  # (xhat, 1/sigma) of each batch norm
        last = len(ws) - 1
        for i, w in enumerate(ws):
            inputs.append(h)
            z = h @ w
            if i == last:
                h = z if bn else z + bs[i]
                break
            if bn:
                xmu = z - z.mean(0)
                ivar = 1 / np.sqrt((xmu * xmu).mean(0) + 1e-5)
                norm.append((xmu * ivar, ivar))
                z = gs[i] * norm[-1][0] + be[i]
            else:
                z = z + bs[i]
            pre.append(z)
            h = np.maximum(z, 0)
        e = np.exp(h - h.max(1, keepdims=True))
        d = (e / e.sum(1, keepdims=True) - t) / BATCH
        for i in range(last, -1, -1):
            if i < last:
                d = d * (pre[i] > 0)
                if bn:
                    xhat, ivar = norm[i]
                    dg, db = (d * xhat).sum(0), d.sum(0)
                    d = (gs[i] * ivar / BATCH) * (BATCH * d - db - xhat * dg)
                    gs[i] -= LR * dg
                    be[i] -= LR * db
            if not bn:
                bs[i] -= LR * d.sum(0)
            dw = inputs[i].T @ d
            if i > 0:
                d = d @ ws[i].T
            ws[i] -= LR * dw

    return _timed(step, steps)


def matmul_epoch(steps: int) -> JSON:
    """Only the matrix products of one epoch: the floor at batch 100."""
    x, y = _data(steps)
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])]
    hs = [rng.standard_normal((BATCH, b)).astype(np.float32) for b in SIZES[1:]]

    def step(k: int) -> None:
        s = slice((k % steps) * BATCH, (k % steps + 1) * BATCH)
        h = x[s]
        for w in ws:
            h = h @ w
        ins = [x[s], hs[0], hs[1]]
        for i, w in enumerate(ws):
            ins[i].T @ hs[i]
            if i > 0:
                hs[i] @ w.T

    return _timed(step, steps)


def torch_epoch(bn: bool, steps: int) -> JSON:
    import torch

    torch.manual_seed(0)
    x, y = _data(steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.argmax(1))
    layers: list[Any] = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(torch.nn.Linear(a, b, bias=not bn))
        if i < len(SIZES) - 2:
            layers += ([torch.nn.BatchNorm1d(b)] if bn else []) + [torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(net.parameters(), lr=LR)

    def step(k: int) -> None:
        s = slice((k % steps) * BATCH, (k % steps + 1) * BATCH)
        opt.zero_grad()
        loss: Any = torch.nn.functional.cross_entropy(net(xt[s]), yt[s])
        loss.backward()
        opt.step()

    return _timed(step, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="timed steps (scaled to a 600-step epoch)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved runs of every configuration")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print("command: python benchmarks/bench_epoch.py " + " ".join(sys.argv[1:]))
    facts = machine_facts()
    print(json.dumps(facts, indent=1))
    try:
        import importlib.util
        has_torch = importlib.util.find_spec("torch") is not None
    except ImportError:
        has_torch = False
    configs: list[tuple[str, Any, tuple[JSON, ...]]] = [("matmul only", matmul_epoch, (args.steps,))]
    for bn in (True, False):
        tag = "BN" if bn else "no BN"
        configs.append((f"lazybn {tag}", lazybn_epoch, (bn, args.steps)))
        configs.append((f"numpy {tag}", numpy_epoch, (bn, args.steps)))
        if has_torch:
            configs.append((f"torch {tag}", torch_epoch, (bn, args.steps)))
    runs: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for _ in range(args.rounds):
        for name, fn, fargs in configs:
            runs[name].append(float(run_isolated(fn, *fargs)))  # type: ignore[arg-type]
    res: dict[str, JSON] = {k: [float(t) for t in sorted(v)] for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in runs.items()}
    mm = med["matmul only"]
    rows = [[k, f"{med[k]:.3f} s", f"{min(v):.3f} s", f"{med[k] / mm:.2f}x"] for k, v in runs.items()]
    table = markdown_table(["epoch (600 steps of 100)", "median", "best", "median / matmul only"], rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "results": res, "table": table}, indent=1))


if __name__ == "__main__":
    main()
