"""One MNIST training epoch (784-300-50-10, batch 100, SGD, float32), with and without batch norm.

Contenders: lazybn's ``train_epoch``; the same networks in plain numpy with the closed-form
batch-norm backward (updating batch norm's running statistics every step, as lazybn and PyTorch
do); PyTorch CPU (skipped without torch); and the epoch's matrix products alone
(3 forward, 3 weight-gradient and 2 input-gradient products per step), the floor at batch 100.
The three networks do what a training loop does: each block of steps is a pass over its rows in
a fresh shuffled order (every batch gathered from the data by index) and every step computes
its batch's mean cross-entropy. Data are random (the epoch's cost does not depend on the
values); every contender is warmed up first.

lazybn, numpy and the products alone share one runtime (numpy's BLAS; lazybn's kernels are
serial here), so they run in one process, in blocks of ``--block`` steps taken in turn for
``--rounds`` rounds (the order rotates). Each ratio in the table is the median over rounds of
that round's ratio, so the machine's drift, which moves neighbouring blocks alike, cancels.
PyTorch starts its own thread pool, so each of its rounds runs in a fresh process between the
rounds of the others (its ratio divides by the shared process's products-alone median).
Times are scaled to a 600-step epoch.

    python benchmarks/bench_epoch.py [--block 100] [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import JSON, machine_facts, markdown_table, run_isolated  # noqa: E402

SIZES = (784, 300, 50, 10)
BATCH = 100
LR = 0.01
EPOCH = 600  # steps of an epoch
BATCHES = 600  # distinct batches of random data
WARM = 30  # untimed steps first
F = np.ndarray[Any, Any]
Block = Callable[[int, int], None]  # block(start, steps): one shuffled pass over batches start .. start + steps


def _data(batches: int) -> tuple[F, F]:
    rng = np.random.default_rng(0)
    x = rng.random((batches * BATCH, SIZES[0]), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batches * BATCH)]
    return x, y


def _batch(k: int, x: F) -> slice:
    b = k % (x.shape[0] // BATCH)
    return slice(b * BATCH, (b + 1) * BATCH)


def _rows(start: int, steps: int, x: F) -> slice:
    """The rows of batches ``start .. start + steps`` (``start`` taken modulo the data's batches;
    the block must end within the data)."""
    b = start % (x.shape[0] // BATCH)
    assert b + steps <= x.shape[0] // BATCH, "a block must fit in the data"
    return slice(b * BATCH, (b + steps) * BATCH)


def _shuffled(start: int, steps: int, x: F, rng: np.random.Generator) -> list[F]:
    """Index arrays of the block's batches, in a fresh shuffled order (as ``train_epoch`` draws them)."""
    order = _rows(start, steps, x).start + rng.permutation(steps * BATCH)
    return [order[k * BATCH:(k + 1) * BATCH] for k in range(steps)]


def lazybn_blocks(bn: bool, x: F, y: F) -> Block:
    import lazybn as lb
    from lazybn.optim import init_state
    from lazybn.train import train_epoch

    layers = lb.mlp(SIZES, batchnorm=bn, seed=0)
    opt = lb.SGD(LR)
    state = [layers, init_state(opt, layers)]
    rng = np.random.default_rng(1)

    def block(start: int, steps: int) -> None:
        rows = _rows(start, steps, x)
        state[0], state[1], _ = train_epoch(state[0], opt, state[1], x[rows], y[rows], BATCH, rng)  # type: ignore[arg-type]

    return block


def numpy_params(bn: bool) -> dict[str, list[F]]:
    """The numpy networks' parameters as ``lb.mlp(SIZES, batchnorm=bn, seed=0)`` draws them (He
    init, all weights first): ``w`` and, without batch norm, ``b`` of each linear layer; with it,
    ``gamma``, ``beta`` and the running ``mean`` and ``var`` of each batch-norm layer."""
    rng = np.random.default_rng(0)
    hidden = SIZES[1:-1] if bn else ()
    return {"w": [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])],
            "b": [] if bn else [np.zeros(b, np.float32) for b in SIZES[1:]],
            "gamma": [np.ones(b, np.float32) for b in hidden], "beta": [np.zeros(b, np.float32) for b in hidden],
            "mean": [np.zeros(b, np.float32) for b in hidden], "var": [np.ones(b, np.float32) for b in hidden]}


def numpy_step(bn: bool, params: dict[str, list[F]], x: F, y: F) -> Callable[[F], float]:
    """One SGD step of the numpy network on the rows ``idx`` of ``x`` and ``y``: updates ``params``
    in place (batch norm's running statistics as ``Batchnorm1d``'s defaults: momentum 0.1, the
    variance unbiased) and returns the batch's mean cross-entropy."""
    ws, bs, gs, be, rm, rv = (params[k] for k in ("w", "b", "gamma", "beta", "mean", "var"))
    tiny = np.finfo(np.float32).tiny

    def step(idx: F) -> float:
        h, t = x[idx], y[idx]
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
                mu = z.mean(0)
                xmu = z - mu
                var = (xmu * xmu).mean(0)
                ivar = 1 / np.sqrt(var + 1e-5)
                norm.append((xmu * ivar, ivar))
                z = gs[i] * norm[-1][0] + be[i]
                rm[i] = 0.9 * rm[i] + 0.1 * mu
                rv[i] = 0.9 * rv[i] + (0.1 * BATCH / (BATCH - 1)) * var
            else:
                z = z + bs[i]
            pre.append(z)
            h = np.maximum(z, 0)
        e = np.exp(h - h.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        loss = -float((t * np.log(p + tiny)).sum()) / BATCH
        d = (p - t) / BATCH
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
        return loss

    return step


def numpy_blocks(bn: bool, x: F, y: F) -> Block:
    """The same networks in plain numpy, closed-form batch-norm backward."""
    step = numpy_step(bn, numpy_params(bn), x, y)
    rng = np.random.default_rng(1)

    def block(start: int, steps: int) -> None:
        losses = [step(idx) for idx in _shuffled(start, steps, x, rng)]
        assert all(np.isfinite(losses))

    return block


def matmul_blocks(x: F, y: F) -> Block:
    """Only the matrix products of one step: the floor at batch 100."""
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])]
    hs = [rng.standard_normal((BATCH, b)).astype(np.float32) for b in SIZES[1:]]

    def block(start: int, steps: int) -> None:
        for k in range(start, start + steps):
            step_products(x[_batch(k, x)], ws, hs)

    return block


def step_products(x0: F, ws: list[F], hs: list[F]) -> list[F]:
    """The 8 products of a step on the batch ``x0``, with each layer's output-sized ``hs`` standing
    for its gradients: 3 forward, 3 weight-gradient (``input.T @ grad``) and 2 input-gradient
    (``grad @ w.T``, none for the first layer's input)."""
    out = []
    h = x0
    for w in ws:
        h = h @ w
        out.append(h)
    ins = [x0, hs[0], hs[1]]
    for i, w in enumerate(ws):
        out.append(ins[i].T @ hs[i])
        if i > 0:
            out.append(hs[i] @ w.T)
    return out


def torch_net(bn: bool) -> Any:
    """The network in PyTorch (its own initialisation, seed 0)."""
    import torch

    torch.manual_seed(0)
    layers: list[Any] = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(torch.nn.Linear(a, b, bias=not bn))
        if i < len(SIZES) - 2:
            layers += ([torch.nn.BatchNorm1d(b)] if bn else []) + [torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def torch_step(net: Any, x: F, y: F) -> Callable[[Any], float]:
    """One SGD step of ``net`` on the rows ``idx`` (a tensor) of ``x`` and ``y``; returns the batch's
    mean cross-entropy."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y.argmax(1))
    opt = torch.optim.SGD(net.parameters(), lr=LR)

    def step(idx: Any) -> float:
        opt.zero_grad()
        loss: Any = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


def torch_blocks(bn: bool, x: F, y: F) -> Block:
    import torch

    step = torch_step(torch_net(bn), x, y)
    rng = np.random.default_rng(1)

    def block(start: int, steps: int) -> None:
        losses = [step(torch.from_numpy(idx)) for idx in _shuffled(start, steps, x, rng)]
        assert all(np.isfinite(losses))

    return block


def _block(block: Block, start: int, steps: int) -> float:
    """Seconds per 600-step epoch, from ``steps`` steps."""
    t0 = time.perf_counter()
    block(start, steps)
    return (time.perf_counter() - t0) * EPOCH / steps


def torch_round(bn: bool, block: int) -> JSON:
    """One round of PyTorch in its own process: warm-up, then one block."""
    x, y = _data(BATCHES)
    run = torch_blocks(bn, x, y)
    _block(run, 0, WARM)
    return _block(run, WARM, block)


def shared_rounds(block: int, rounds: int) -> JSON:
    """The contenders of one runtime, in turn in this process: epoch seconds of every round."""
    x, y = _data(BATCHES)
    blocks: dict[str, Block] = {"matmul only": matmul_blocks(x, y)}
    for bn in (True, False):
        tag = "BN" if bn else "no BN"
        blocks[f"lazybn {tag}"] = lazybn_blocks(bn, x, y)
        blocks[f"numpy {tag}"] = numpy_blocks(bn, x, y)
    for run in blocks.values():
        _block(run, 0, WARM)
    names = list(blocks)
    runs: dict[str, list[float]] = {name: [] for name in names}
    per_pass = BATCHES // block  # blocks that fit in the data
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # the order rotates
            runs[name].append(_block(blocks[name], (r % per_pass) * block, block))
    return {name: list[JSON](ts) for name, ts in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block", type=int, default=100, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=15, help="blocks of every contender")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print("command: python benchmarks/bench_epoch.py " + " ".join(sys.argv[1:]))
    facts = machine_facts()
    print(json.dumps(facts, indent=1))
    has_torch = importlib.util.find_spec("torch") is not None
    torch_runs: dict[str, list[float]] = {"torch BN": [], "torch no BN": []} if has_torch else {}
    torch_rounds = max(1, args.rounds // 3)  # each is a process start: fewer, spread between the others
    runs: dict[str, list[float]] = {}
    for part in range(torch_rounds):
        share = args.rounds // torch_rounds + (part < args.rounds % torch_rounds)
        got = run_isolated(shared_rounds, args.block, share)
        assert isinstance(got, dict)
        for name, got_ts in got.items():
            assert isinstance(got_ts, list)
            runs.setdefault(name, []).extend(float(t) for t in got_ts)  # type: ignore[arg-type]
        for name in torch_runs:
            torch_runs[name].append(float(run_isolated(torch_round, name == "torch BN", args.block)))  # type: ignore[arg-type]
    mm = runs["matmul only"]
    rows = []
    for name, ts in {**runs, **torch_runs}.items():
        ratios = [t / m for t, m in zip(ts, mm)] if name in runs else [t / statistics.median(mm) for t in ts]
        rows.append([name, f"{statistics.median(ts):.3f} s", f"{min(ts):.3f} s", f"{statistics.median(ratios):.2f}x"])
    pairs = [("lazybn BN", "numpy BN"), ("lazybn no BN", "numpy no BN"), ("lazybn BN", "lazybn no BN"),
             ("numpy BN", "numpy no BN")]
    paired = [[f"{a} / {b}", f"{statistics.median(t / u for t, u in zip(runs[a], runs[b])):.2f}x"] for a, b in pairs]
    table = markdown_table(["epoch (600 steps of 100)", "median", "best", "median / matmul only"], rows)
    table2 = markdown_table(["same round", "median ratio"], paired)
    print(table)
    print()
    print(table2)
    if args.json:
        res: dict[str, JSON] = {k: [float(t) for t in v] for k, v in {**runs, **torch_runs}.items()}
        args.json.write_text(json.dumps({"machine": facts, "results": res, "table": table, "paired": table2},
                                        indent=1))


if __name__ == "__main__":
    main()
