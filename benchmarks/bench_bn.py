"""Batch-norm training forward + backward: lazybn's step-by-step code vs numpy and PyTorch.

lazybn runs exactly the code of ``_train_pass``'s Batchnorm1d case (``bn_forward`` then
``bn_backward``: the derivation's steps, fused into two kernels). Baselines: the naive numpy
computational graph, numpy with the closed-form backward, PyTorch ``F.batch_norm`` + autograd
(in its own process, threads = cores; skipped without torch), and the numpy copy bandwidth as
the roofline. BN forward + backward must move at least 5·N·D·itemsize bytes (read x, write y,
read dy, read x, write dx). The "floor" is four hand-written kernels that move lazybn's 8·N·D
with almost no arithmetic (``_floor.py``): what any two + two pass step would take here if
arithmetic were free. Every contender runs with malloc keeping freed memory for reuse
(``--malloc default`` to measure glibc's own policy).

All contenders (lazybn, the roofline copy, the floor, both numpy baselines and PyTorch)
alternate for ``--rounds`` rounds per case; each figure is the median of its rounds (lazybn's
"±" is the spread of its round medians), so a drift of the machine's speed moves the
contenders and the roofline together. The naive/lazybn and lazybn/floor ratios are medians of
each round's ratio.

    python benchmarks/bench_bn.py [--quick] [--rounds 3] [--malloc retain|default] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _floor import floor_step  # noqa: E402
from _harness import (JSON, Timing, copy_bandwidth, fmt_time, machine_facts, markdown_table, retain_freed_memory,  # noqa: E402
                      run_isolated, timeit)

import lazybn as lb  # noqa: E402
from lazybn.layers import Batchnorm1d  # noqa: E402
from lazybn.network import bn_backward, bn_forward  # noqa: E402

SHAPES = [(100, 300), (256, 1024), (1024, 1024), (4096, 1024), (8192, 2048)]
EPS = 1e-5
F = np.ndarray[Any, Any]


def naive_numpy(x: F, dy: F, gamma: F, beta: F) -> tuple[F, F, F, F]:
    """The computational-graph forward and backward, step by step, as the numpy article writes it."""
    n = x.shape[0]
    mu = np.mean(x, axis=0)
    xmu = x - mu
    sq = xmu ** 2
    var = np.mean(sq, axis=0)
    sqrtvar = np.sqrt(var + EPS)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    y = gamma * xhat + beta
    dbeta = np.sum(dy, axis=0)
    dgamma = np.sum(dy * xhat, axis=0)
    dxhat = dy * gamma
    divar = np.sum(dxhat * xmu, axis=0)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / (sqrtvar ** 2) * divar
    dvar = 0.5 * ivar * dsqrtvar
    dsq = np.ones_like(x) / n * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -np.sum(dx1, axis=0)
    dx = dx1 + np.ones_like(x) / n * dmu
    return y, dx, dgamma, dbeta


def closed_numpy(x: F, dy: F, gamma: F, beta: F) -> tuple[F, F, F, F]:
    """Forward, then the simplified closed-form backward."""
    n = x.shape[0]
    mu = x.mean(axis=0)
    xmu = x - mu
    ivar = 1.0 / np.sqrt((xmu * xmu).mean(axis=0) + EPS)
    xhat = xmu * ivar
    y = gamma * xhat + beta
    dbeta = dy.sum(axis=0)
    dgamma = (dy * xhat).sum(axis=0)
    dx = (gamma * ivar / n) * (n * dy - dbeta - xhat * dgamma)
    return y, dx, dgamma, dbeta


def torch_child(shape: list[int], dtype: str, threads: int) -> JSON:
    """PyTorch CPU F.batch_norm training forward + autograd backward, timed in its own process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from _harness import timeit as child_timeit

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=dt, generator=gen).requires_grad_(True)
    dy = torch.randn(*shape, dtype=dt, generator=gen)
    g = torch.ones(shape[1], dtype=dt, requires_grad=True)
    b = torch.zeros(shape[1], dtype=dt, requires_grad=True)
    rm, rv = torch.zeros(shape[1], dtype=dt), torch.ones(shape[1], dtype=dt)

    def step() -> None:
        torch_step(x, dy, g, b, rm, rv)
        x.grad = g.grad = b.grad = None

    t = child_timeit(step, repeat=9, min_time=0.05)
    return {"median_s": t.median, "spread": t.spread, "torch": torch.__version__}


def torch_step(x: Any, dy: Any, g: Any, b: Any, rm: Any, rv: Any) -> Any:
    """PyTorch's training forward, then autograd's backward of ``dy`` (into ``x.grad``, ``g.grad``
    and ``b.grad``); returns the forward's output."""
    import torch

    y: Any = torch.nn.functional.batch_norm(x, rm, rv, g, b, training=True, momentum=0.1, eps=EPS)
    y.backward(dy)
    return y


def lazybn_case(x: F, dy: F, comp: lb.Comp) -> Callable[[], tuple[lb.Matrix, lb.Vector, lb.Vector]]:
    d = x.shape[1]
    dt = x.dtype
    layer = Batchnorm1d(lb.zeros(d, dt, comp), lb.ones(d, dt, comp), lb.ones(d, dt, comp), lb.zeros(d, dt, comp))
    xm, dym = lb.matrix(x, comp=comp), lb.matrix(dy, comp=comp)

    def step() -> tuple[lb.Matrix, lb.Vector, lb.Vector]:
        out, mu, var = bn_forward(xm, layer)
        return bn_backward(dym, xm, layer, mu, var)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two small shapes, float32 only")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--rounds", type=int, default=3, help="alternating lazybn/torch rounds per case")
    ap.add_argument("--malloc", choices=["retain", "default"], default="retain",
                    help="retain: every contender's malloc keeps freed memory for reuse (see "
                         "_harness.retain_freed_memory); default: glibc's own policy")
    args = ap.parse_args()
    shapes = SHAPES[:2] if args.quick else SHAPES
    dtypes = ["float32"] if args.quick else ["float32", "float64"]
    threads = os.cpu_count() or 1
    print("command: python benchmarks/bench_bn.py " + " ".join(sys.argv[1:]))
    print(json.dumps(machine_facts(), indent=1))
    # The roofline's buffers first, with the default allocator: retained heap memory is not backed
    # by transparent huge pages here and copies at under half the speed (6 vs 16 GB/s measured).
    bw = copy_bandwidth(256 << 20)
    src = np.random.default_rng(0).random((256 << 20) // 4, dtype=np.float32)
    dst = np.zeros_like(src)

    def copy_gbps() -> float:  # one round's roofline, measured between the contenders
        return 2 * src.nbytes / timeit(lambda: np.copyto(dst, src), repeat=5, min_time=0.02).median / 1e9

    child_env = retain_freed_memory() if args.malloc == "retain" else {}
    print(f"malloc: {args.malloc}")
    print(f"copy bandwidth (numpy, 256 MiB, read+write): {bw.gbps:.1f} GB/s")
    try:
        import importlib.util
        has_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    except ImportError:
        has_torch = False
    if not has_torch:
        print("torch not installed (pip install torch==2.13.0): the PyTorch column is skipped")
    rows: list[list[object]] = []
    results: list[dict[str, JSON]] = []
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        for n, d in shapes:
            x = rng.standard_normal((n, d)).astype(dtype)
            dy = rng.standard_normal((n, d)).astype(dtype)
            gamma, beta = np.ones(d, dtype), np.zeros(d, dtype)
            step = lazybn_case(x, dy, lb.Comp.Par)
            dx, _, _ = step()
            _, dx_ref, dg_ref, db_ref = closed_numpy(x.astype(np.float64), dy.astype(np.float64), gamma.astype(np.float64),
                                                     beta.astype(np.float64))
            tol = 1e-3 if dtype == "float32" else 1e-9
            assert np.allclose(dx.array, dx_ref, atol=tol * np.abs(dx_ref).max()), "lazybn dx differs from numpy"
            # lazybn and torch alternate for --rounds rounds (the machine's speed drifts); each
            # keeps the median of its rounds' medians
            lb_rounds: list[Timing] = []
            torch_rounds: list[float] = []
            copy_rounds: list[float] = []
            floor_rounds: list[float] = []
            naive_rounds: list[float] = []
            closed_rounds: list[float] = []
            for _ in range(args.rounds):
                lb_rounds.append(timeit(step, repeat=5, min_time=0.05))
                copy_rounds.append(copy_gbps())
                floor_rounds.append(timeit(lambda: floor_step(x, dy, threads), repeat=5, min_time=0.05).median)
                naive_rounds.append(timeit(lambda: naive_numpy(x, dy, gamma, beta), repeat=5, min_time=0.05).median)
                closed_rounds.append(timeit(lambda: closed_numpy(x, dy, gamma, beta), repeat=5, min_time=0.05).median)
                if has_torch:
                    tj = run_isolated(torch_child, [n, d], dtype, threads, env=child_env)
                    assert isinstance(tj, dict)
                    torch_rounds.append(float(tj["median_s"]))  # type: ignore[arg-type]
            t_lb = Timing(tuple(sorted(t.median for t in lb_rounds)), lb_rounds[0].loops)
            t_torch = statistics.median(torch_rounds) if torch_rounds else None
            t_naive = statistics.median(naive_rounds)
            t_closed = statistics.median(closed_rounds)
            need = 5 * n * d * x.itemsize
            gbps = statistics.median(copy_rounds)
            roof = need / t_lb.median / 1e9 / gbps
            t_floor = statistics.median(floor_rounds)
            naive_ratio = statistics.median(a / b.median for a, b in zip(naive_rounds, lb_rounds))  # same round
            floor_ratio = statistics.median(a.median / b for a, b in zip(lb_rounds, floor_rounds))
            rows.append([f"{n}x{d}", dtype, str(t_lb), fmt_time(t_naive), fmt_time(t_closed),
                         fmt_time(t_torch) if t_torch else "-",
                         f"{t_torch / t_lb.median:.2f}x" if t_torch else "-",
                         f"{naive_ratio:.1f}x", f"{100 * roof:.0f}%",
                         f"{100 * need / t_floor / 1e9 / gbps:.0f}%", f"{floor_ratio:.2f}x"])
            results.append({"shape": [n, d], "dtype": dtype, "lazybn_s": t_lb.median, "lazybn_spread": t_lb.spread,
                            "naive_numpy_s": t_naive, "closed_numpy_s": t_closed,
                            "torch_s": t_torch, "copy_gbps": gbps, "roofline_fraction": roof, "floor_s": t_floor})
            print(" | ".join(map(str, rows[-1])), flush=True)
    table = markdown_table(["N x D", "dtype", "lazybn", "naive numpy", "closed numpy", "torch", "torch/lazybn",
                            "naive/lazybn", "% of copy bw (5ND)", "floor: % of copy bw", "lazybn/floor"], rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), "copy_gbps": bw.gbps, "results": results,
                                         "table": table}, indent=1))


if __name__ == "__main__":
    main()
