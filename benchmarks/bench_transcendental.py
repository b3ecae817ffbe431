"""Element-wise exp, log, tanh and sigmoid: lazybn kernels against numpy's own loops.

numba vectorises a loop that calls a transcendental function only through Intel's SVML, and
only when llvmlite was built with the SVML-patched LLVM; otherwise each element is a scalar libm
call. This benchmark reports whether SVML is operational in this installation (numba's own
diagnosis) and what one pass costs per element, lazybn (``Comp.Seq``) against numpy (whose
float32/float64 exp, log and tanh have hand-vectorised loops) and against lazybn's ReLU as the
memory-bound reference.

    python benchmarks/bench_transcendental.py [--shape 4096 1024] [--dtype float32]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # PYTHONPATH can override

import lazybn as lb  # noqa: E402
from _harness import fmt_time, markdown_table, timeit  # noqa: E402
from lazybn import Fn  # noqa: E402


def svml_state() -> str:
    """numba's view: whether the SVML library is loaded and llvmlite can use it."""
    import numba

    llvm = importlib.import_module("llvmlite.binding")
    return (f"SVML operational: {bool(getattr(numba.config, 'USING_SVML', False))} (llvmlite built with "
            f"the SVML-patched LLVM: {bool(llvm.targets.has_svml())})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 1024])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    print("command: python benchmarks/bench_transcendental.py " + " ".join(sys.argv[1:]))
    print(svml_state())
    rng = np.random.default_rng(0)
    xa = rng.standard_normal(tuple(args.shape)).astype(args.dtype)
    pos = np.abs(xa) + xa.dtype.type(0.5)
    x, xp = lb.matrix(xa), lb.matrix(pos)
    cases: list[tuple[str, Callable[[], object], Callable[[], object] | None]] = [
        ("relu (reference)", lambda: lb.compute(lb.amap(Fn.relu, x)), lambda: np.maximum(xa, 0)),
        ("exp", lambda: lb.compute(lb.amap(Fn.exp, x)), lambda: np.exp(xa)),
        ("log", lambda: lb.compute(lb.amap(Fn.log, xp)), lambda: np.log(pos)),
        ("tanh", lambda: lb.compute(lb.amap(Fn.tanh, x)), lambda: np.tanh(xa)),
        ("sigmoid", lambda: lb.compute(lb.amap(Fn.sigmoid, x)), lambda: 1 / (1 + np.exp(-xa))),
    ]
    n = xa.size
    rows = []
    for name, lazy, ref in cases:
        lazy()
        t_lb = timeit(lazy, repeat=7, min_time=0.05)
        t_np = timeit(ref, repeat=7, min_time=0.05) if ref else None
        rows.append([name, fmt_time(t_lb.median), f"{t_lb.median / n * 1e9:.2f}",
                     fmt_time(t_np.median) if t_np else "-",
                     f"{t_np.median / t_lb.median:.2f}x" if t_np else "-"])
        print(" | ".join(map(str, rows[-1])), flush=True)
    print(f"\n{args.shape[0]}x{args.shape[1]} {args.dtype}, Comp.Seq, one pass each\n")
    print(markdown_table(["function", "lazybn", "ns/element", "numpy", "numpy time / lazybn time"], rows))


if __name__ == "__main__":
    main()
