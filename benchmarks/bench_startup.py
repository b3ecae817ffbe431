"""Start-up costs: ``import lazybn``, time to the first training step with a warm kernel cache,
and the cold-cache compile time of the whole training path (both networks of ``lazybn train``,
training step and inference), each in a fresh process.

    python benchmarks/bench_startup.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import JSON, machine_facts, markdown_table, run_snippet  # noqa: E402

IMPORT = """
import time
t0 = time.perf_counter()
import lazybn
result = time.perf_counter() - t0
"""

FIRST_STEP = """
import time
t0 = time.perf_counter()
import numpy as np
import lazybn as lb
from lazybn.optim import init_state
from lazybn.train import accuracy, train_step
rng = np.random.default_rng(0)
x = lb.matrix(rng.random((100, 784), dtype=np.float32))
y = lb.matrix(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 100)])
first = None
for bn in (True, False):
    layers = lb.mlp((784, 300, 50, 10), batchnorm=bn, init=lb.Init.small)
    opt = lb.SGD(0.1)
    step = train_step(layers, opt, init_state(opt, layers), x, y)
    if first is None:
        first = time.perf_counter() - t0
    accuracy(step.layers, np.asarray(x.array), np.zeros(100, np.int64))
s = lb.fuse.stats()
result = {"first_step_s": first, "whole_path_s": time.perf_counter() - t0, "compiled": s.compiled,
          "disk_hits": s.disk_hits}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print("command: python benchmarks/bench_startup.py " + " ".join(sys.argv[1:]))
    imports = [float(run_snippet(IMPORT)) for _ in range(5)]  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as cache:
        env = {"LAZYBN_CACHE_DIR": cache}
        cold = run_snippet(FIRST_STEP, env=env)
        warm = [run_snippet(FIRST_STEP, env=env) for _ in range(3)]
    def num(r: JSON, key: str) -> float:
        assert isinstance(r, dict)
        v = r[key]
        assert isinstance(v, (int, float))
        return float(v)

    res: dict[str, JSON] = {
        "import_lazybn_s": statistics.median(imports),
        "cold_whole_path_s": num(cold, "whole_path_s"), "cold_kernels_compiled": int(num(cold, "compiled")),
        "warm_first_step_s": statistics.median(num(w, "first_step_s") for w in warm),
        "warm_kernels_compiled": max(int(num(w, "compiled")) for w in warm),
    }
    for k, v in res.items():
        print(f"{k:>24}: {v:.3f}" if isinstance(v, float) else f"{k:>24}: {v}")
    print(markdown_table(["measure", "value", "target"], [
        ["`import lazybn`", f"{res['import_lazybn_s']:.3f} s", "< 0.3 s"],
        ["first training step, warm kernel cache, from process start",
         f"{res['warm_first_step_s']:.2f} s ({res['warm_kernels_compiled']} kernels compiled)", "< 1.5 s"],
        ["whole training path, cold cache (both networks, step + inference)",
         f"{res['cold_whole_path_s']:.1f} s ({res['cold_kernels_compiled']} kernels compiled)", "< 15 s"],
    ]))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), "results": res}, indent=1))


if __name__ == "__main__":
    main()
