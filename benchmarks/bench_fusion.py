"""Fusion benchmark: an 8-operation elementwise chain plus a row reduction, lazybn vs numpy.

    y = square(2 * (relu(x * a + b) - 0.5) + 0.1 * x)      (a, b broadcast as rows)
    s = sum_rows(y)                                        (one sum per column)

lazybn computes both with ``compute_all(y, s)``: one kernel reads ``x`` once and writes ``y``
and ``s``. numpy runs the same code with a temporary per operation. Reported per variant:
median time, the numpy/variant ratio, and effective bandwidth = (bytes read + bytes written)
/ time as a percentage of the single-threaded ``np.copyto`` bandwidth measured in the same run
(2 * nbytes / time; see ``_harness``). Issue targets for ``Comp.Par``: >= 3x faster than numpy,
>= 60% of copy bandwidth.

    python benchmarks/bench_fusion.py [--shape 4096 1024] [--dtype float32] [--json PATH]

``--overhead`` adds the per-call cost of ``compute_all`` on small matrices, broken down into
its steps (uses ``lazybn.fuse`` internals; µs per call, best of the repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # PYTHONPATH can override

import lazybn as lb  # noqa: E402
from _harness import JSON, Timing, copy_bandwidth, fmt_time, machine_facts, markdown_table, timeit  # noqa: E402
from lazybn import Comp, Delayed, Fn, Ix1, Ix2, Matrix, Vector  # noqa: E402

F = NDArray[np.floating[Any]]
TARGET_RATIO, TARGET_PCT = 3.0, 60.0


def chain_lazybn(x: Matrix, a: Vector, b: Vector) -> tuple[Delayed[Ix2], Delayed[Ix1]]:
    """The benchmark expression: 8 elementwise operations and a sum over the rows."""
    h = lb.amap(Fn.relu, x * lb.rows_like(a, x) + lb.rows_like(b, x))
    y = lb.amap(Fn.square, lb.scale(2.0, lb.add_c(h, -0.5)) + lb.scale(0.1, x))
    return y, lb.sum_rows(y)


def chain_numpy(x: F, a: F, b: F) -> tuple[F, F]:
    """The same expression in plain numpy (one temporary per operation)."""
    h = np.maximum(x * a + b, 0.0)
    y = np.square(2.0 * (h + -0.5) + 0.1 * x)
    return y, y.sum(axis=0)


def check(x: F, a: F, b: F, comp: Comp) -> None:
    """lazybn's results equal numpy's (y to rounding; the sum against a float64-accumulated reference)."""
    dt = x.dtype
    y_lb, s_lb = lb.compute_all(*chain_lazybn(lb.matrix(x, comp=comp), lb.vector(a, comp=comp),
                                              lb.vector(b, comp=comp)))
    y_np, s_np = chain_numpy(x, a, b)
    tight = 1e-6 if dt == np.float32 else 1e-13
    np.testing.assert_allclose(y_lb.array, y_np, rtol=tight, atol=0)
    s_ref = y_np.sum(axis=0, dtype=np.float64)
    scale = np.abs(y_np).sum(axis=0, dtype=np.float64)
    np.testing.assert_allclose(s_lb.array, s_ref, rtol=0, atol=float(np.max(scale)) * 4 * tight)
    np.testing.assert_allclose(s_lb.array, s_np, rtol=0, atol=float(np.max(scale)) * x.shape[0] * tight)


def _computer(y: Delayed[Ix2], s: Delayed[Ix1]) -> Callable[[], object]:
    return lambda: lb.compute_all(y, s)


def measure(shape: tuple[int, int], dtype: np.dtype[Any], repeat: int, min_time: float,
            rounds: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x, a, b = (rng.standard_normal(s).astype(dtype) for s in (shape, shape[1], shape[1]))
    for comp in Comp:
        check(x, a, b, comp)
    moved = x.nbytes + a.nbytes + b.nbytes + x.nbytes + a.nbytes  # read x, a, b; write y, s
    cases: dict[str, Callable[[], object]] = {"numpy": lambda: chain_numpy(x, a, b)}
    for comp in Comp:
        y, s = chain_lazybn(lb.matrix(x, comp=comp), lb.vector(a, comp=comp), lb.vector(b, comp=comp))
        cases[f"lazybn {comp.value}"] = _computer(y, s)
    samples: dict[str, list[float]] = {k: [] for k in ["copy", *cases]}
    loops: dict[str, int] = {}
    for _ in range(rounds):  # interleave the variants: a noisy neighbour hurts all of them alike
        bw = copy_bandwidth(x.nbytes, repeat=repeat, min_time=min_time)
        samples["copy"] += bw.timing.samples
        loops["copy"] = bw.timing.loops
        for name, fn in cases.items():
            t = timeit(fn, repeat=repeat, min_time=min_time)
            samples[name] += t.samples
            loops[name] = t.loops
    timings = {k: Timing(tuple(v), loops[k]) for k, v in samples.items()}
    copy_gbps = 2 * x.nbytes / timings["copy"].median / 1e9
    copy_best_gbps = 2 * x.nbytes / timings["copy"].best / 1e9
    results: dict[str, dict[str, JSON]] = {}
    for name, t in timings.items():
        nbytes = 2 * x.nbytes if name == "copy" else moved
        gbps, best_gbps = nbytes / t.median / 1e9, nbytes / t.best / 1e9
        results[name] = {**t.as_json(), "vs_numpy": timings["numpy"].median / t.median, "gbps": gbps,
                         "pct_copy": 100 * gbps / copy_gbps, "best_gbps": best_gbps,
                         "best_pct_copy": 100 * best_gbps / copy_best_gbps}
    par_t = timings["lazybn Par"].median
    ok_ratio = timings["numpy"].median / par_t >= TARGET_RATIO
    ok_pct = 100 * moved / par_t / 1e9 / copy_gbps >= TARGET_PCT
    plan = lb.fuse.plan([y.node, s.node], dtype, True)
    return {"bytes_moved": moved, "copy_bytes": 2 * x.nbytes, "copy_gbps": copy_gbps, "results": results,
            "targets": {"ratio": TARGET_RATIO, "pct_copy": TARGET_PCT, "ratio_met": ok_ratio, "pct_met": ok_pct},
            "kernel": {"key": plan.key, "path": str(lb.fuse.cache.kernel_dir() / f"k_{plan.key[:16]}.py"),
                       "par": plan.par, "passes": plan.passes, "source": plan.source}}


def overhead(dtype: np.dtype[Any], repeat: int) -> dict[str, dict[str, float]]:
    """µs per call of ``compute_all(y, s)`` on small matrices, and of its steps run one by one."""
    from lazybn.fuse import _kernel, cache
    from lazybn.fuse.canon import canonicalize

    out: dict[str, dict[str, float]] = {}
    for shape in ((4, 4), (100, 300)):
        rng = np.random.default_rng(1)
        x, a, b = (rng.standard_normal(s).astype(dtype) for s in (shape, shape[1], shape[1]))
        xm, am, bm = lb.matrix(x), lb.vector(a), lb.vector(b)
        y, s = chain_lazybn(xm, am, bm)
        lb.compute_all(y, s)
        roots = [y.node, s.node]
        canon = canonicalize(roots)
        kern = _kernel(canon, dtype, False)
        fn = cache.load(kern)

        def empty() -> list[F]:
            return [np.empty(tuple(canon.sizes[d] for d in dims), dtype) for dims in kern.outputs]

        outs = empty()
        args = [*canon.leaves, *(dtype.type(v) for v in canon.consts), *(np.uint64(n) for n in canon.sizes), *outs]
        steps: dict[str, Callable[[], object]] = {
            "compute_all (total)": lambda: lb.compute_all(y, s),
            "lb.matrix(x): copy in (not in total)": lambda: lb.matrix(x),
            "build the expression (not in total)": lambda: chain_lazybn(xm, am, bm),
            "canonicalize": lambda: canonicalize(roots),
            "kernel lookup (key tuple + dict)": lambda: _kernel(canon, dtype, False),
            "np.empty outputs": empty,
            "argument list": lambda: [*canon.leaves, *(dtype.type(v) for v in canon.consts),
                                      *(np.uint64(n) for n in canon.sizes), *outs],
            "numba dispatch + kernel": lambda: fn(*args),
        }
        # best of the repeats: micro-timings are skewed upwards by any other load on the machine
        row = {k: 1e6 * timeit(f, repeat=repeat, min_time=0.02).best for k, f in steps.items()}
        row["rest (Manifest, flags, dedup, counters)"] = row["compute_all (total)"] - sum(
            v for k, v in row.items() if k != "compute_all (total)" and "not in total" not in k)
        out[f"{shape[0]}x{shape[1]}"] = row
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--shape", type=int, nargs=2, default=[4096, 1024], metavar=("ROWS", "COLS"))
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeat", type=int, default=11, help="samples per variant per round")
    p.add_argument("--min-time", type=float, default=0.03, help="seconds per sample (several calls)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all variants")
    p.add_argument("--overhead", action="store_true", help="also break down the per-call overhead")
    p.add_argument("--show-kernel", action="store_true", help="print the generated Par kernel source")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    ns = p.parse_args(argv)
    shape, dtype = (ns.shape[0], ns.shape[1]), np.dtype(ns.dtype)

    print("$ " + " ".join([os.path.basename(sys.executable), *sys.argv]))
    res = measure(shape, dtype, ns.repeat, ns.min_time, ns.rounds)
    facts = {**machine_facts(), "lazybn": f"{lb.__version__} ({os.path.dirname(lb.__file__)})"}
    print("\n".join(f"- {k}: {v}" for k, v in facts.items()))  # after the run: numba's layer is known
    print(f"\n{shape[0]}x{shape[1]} {dtype.name}; y = square(2*(relu(x*a + b) - 0.5) + 0.1*x), s = sum_rows(y); "
          f"bytes moved {res['bytes_moved'] / 1e6:.1f} MB; copy {res['copy_gbps']:.1f} GB/s "
          f"(np.copyto, 2*nbytes/time); results checked against numpy\n")
    rows = [[name, fmt_time(r["median_s"]), f"±{100 * r['spread']:.0f}%", fmt_time(r["best_s"]),
             f"{r['vs_numpy']:.2f}x", f"{r['gbps']:.1f}", f"{r['pct_copy']:.0f}%", f"{r['best_pct_copy']:.0f}%"]
            for name, r in res["results"].items()]
    print(markdown_table(["variant", "median", "IQR", "best", "numpy/variant", "GB/s", "% of copy",
                          "best vs best copy"], rows))
    print("(IQR: interquartile range / median. The targets use medians; the last column compares best times,"
          " a guide on a busy machine.)")
    tg = res["targets"]
    print(f"\nComp.Par targets: >= {TARGET_RATIO:g}x numpy: {'met' if tg['ratio_met'] else 'NOT met'}; "
          f">= {TARGET_PCT:g}% of copy bandwidth: {'met' if tg['pct_met'] else 'NOT met'}")
    print(f"kernel: {res['kernel']['path']} ({res['kernel']['passes']} pass)")
    if ns.show_kernel:
        print(res["kernel"]["source"])
    if ns.overhead:
        ov = overhead(dtype, ns.repeat)
        res["overhead_us"] = ov
        names = list(next(iter(ov.values())))
        print("\nPer-call overhead of compute_all(y, s), Seq, µs per call (best of the repeats):\n")
        print(markdown_table(["step", *ov], [[n, *(f"{ov[s][n]:.1f}" for s in ov)] for n in names]))
    if ns.json:
        doc = {"benchmark": "fusion", "command": sys.argv, "machine": facts, "shape": list(shape),
               "dtype": dtype.name, **res}
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {ns.json}")


if __name__ == "__main__":
    main()
