"""Peak extra memory of one batch-norm training forward + backward (lazybn's step code).

The unavoidable outputs are y and dx (two N x D arrays) plus O(D) vectors; a fused engine
must add no N x D temporaries beyond them. Each case runs in its own process: the inputs are
made, the step runs once (tracing it and loading its kernels), the kernel-side peak is reset
(``/proc/self/clear_refs``), then the step runs again and the rise of the peak resident set
size over the resident size before it is the step's extra memory. The same is measured for
the naive numpy step (its temporaries are what fusion removes). Linux only.

    python benchmarks/bench_memory.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import JSON, machine_facts, markdown_table, run_isolated  # noqa: E402

SHAPES = [(4096, 1024), (8192, 2048)]


def _kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_extra(which: str, n: int, d: int, dtype: str) -> JSON:
    """Bytes the step adds to the resident set at its peak, in a fresh process."""
    import gc

    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(dtype)
    dy = rng.standard_normal((n, d)).astype(dtype)
    if which == "lazybn":
        import lazybn as lb
        from lazybn.layers import Batchnorm1d
        from lazybn.network import bn_backward, bn_forward

        comp = lb.Comp.Par
        layer = Batchnorm1d(lb.zeros(d, dtype, comp), lb.ones(d, dtype, comp), lb.ones(d, dtype, comp),
                            lb.zeros(d, dtype, comp))
        x.flags.writeable = dy.flags.writeable = False  # so the Manifests share them (no copies)
        xm: lb.Matrix = lb.Manifest(x, comp)
        dym: lb.Matrix = lb.Manifest(dy, comp)

        def step() -> object:
            out, mu, var = bn_forward(xm, layer)
            return out, bn_backward(dym, xm, layer, mu, var)
    else:
        from bench_bn import naive_numpy

        gamma, beta = np.ones(d, dtype), np.zeros(d, dtype)

        def step() -> object:
            return naive_numpy(x, dy, gamma, beta)

    step()  # trace, load kernels, start thread pools
    gc.collect()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset the peak resident set size to the current one
    before = _kib("VmRSS")
    kept = step()
    extra = (_kib("VmHWM") - before) * 1024
    del kept
    return extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print("command: python benchmarks/bench_memory.py " + " ".join(sys.argv[1:]))
    facts = machine_facts()
    print(json.dumps(facts, indent=1))
    rows: list[list[object]] = []
    results: list[JSON] = []
    for dtype in ("float32", "float64"):
        for n, d in SHAPES:
            nd = n * d * (4 if dtype == "float32" else 8)
            got = {w: float(run_isolated(peak_extra, w, n, d, dtype)) for w in ("lazybn", "naive numpy")}  # type: ignore[arg-type]
            rows.append([f"{n}x{d}", dtype, f"{2 * nd / 2**20:.0f} MiB",
                         f"{got['lazybn'] / 2**20:.0f} MiB ({got['lazybn'] / nd:.2f} N·D)",
                         f"{got['naive numpy'] / 2**20:.0f} MiB ({got['naive numpy'] / nd:.2f} N·D)"])
            results.append({"shape": [n, d], "dtype": dtype, "outputs_bytes": 2 * nd,
                            "lazybn_bytes": got["lazybn"], "naive_numpy_bytes": got["naive numpy"]})
            print(" | ".join(map(str, rows[-1])), flush=True)
    table = markdown_table(["N x D", "dtype", "outputs y + dx", "lazybn peak extra", "naive numpy peak extra"], rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "results": results, "table": table}, indent=1))


if __name__ == "__main__":
    main()
