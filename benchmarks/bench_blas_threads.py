"""Training steps with numpy's BLAS on every core or on one, on an idle machine and beside busy processes.

lazybn's matrix products are numpy's, so they run on OpenBLAS's thread pool (one thread per
core unless ``OPENBLAS_NUM_THREADS`` says otherwise). Its threads wait for work by spinning; on
a machine with no core to spare, a spinning thread holds a core that another thread needs. This
benchmark trains the MNIST batch-norm network (784-300-50-10, batch 100, SGD, float32, random
data) in a fresh process per measure, with the default thread count and with
``OPENBLAS_NUM_THREADS=1``, while 0, 1 or 2 other processes spin on the CPU (a Python busy loop
each, started before the measure and stopped after it). Each measure is the median time of
blocks of 100 steps, scaled to a 600-step epoch; the two settings alternate for ``--rounds``
rounds, and the ratio is the median of each round's ratio.

    python benchmarks/bench_blas_threads.py [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import JSON, machine_facts, markdown_table, run_snippet  # noqa: E402

EPOCH = """
import time, statistics
import numpy as np
import lazybn as lb
rng = np.random.default_rng(0)
x = rng.random((6000, 784), dtype=np.float32)
y = lb.one_hot(rng.integers(0, 10, 6000), 10)
layers = lb.mlp((784, 300, 50, 10), batchnorm=True, seed=0)
opt = lb.SGD(0.01)
state = lb.init_state(opt, layers)
layers, state, _ = lb.train_epoch(layers, opt, state, x, y, 100, rng, max_steps=30)  # kernels loaded, warm
blocks = []
for _ in range(BLOCKS):
    t0 = time.perf_counter()
    layers, state, _ = lb.train_epoch(layers, opt, state, x, y, 100, rng, max_steps=100)
    blocks.append(time.perf_counter() - t0)
result = 6 * statistics.median(blocks)
"""

SPIN = "import time\nwhile True:\n    pass\n"


def measure(busy: int, threads: str | None, blocks: int) -> float:
    """Seconds per 600-step epoch in a fresh process, beside ``busy`` spinning processes."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        # None: OpenBLAS's default, one thread per core, whatever the caller's environment says
        env = {"OPENBLAS_NUM_THREADS": threads or str(os.cpu_count() or 1)}
        got = run_snippet(EPOCH.replace("BLOCKS", str(blocks)), env=env)
        assert isinstance(got, float)
        return got
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per load (default 3)")
    ap.add_argument("--blocks", type=int, default=3, help="blocks of 100 steps per measure (default 3)")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print("command: python benchmarks/bench_blas_threads.py " + " ".join(sys.argv[1:]))
    print(json.dumps(machine_facts(), indent=1))
    rows: list[list[object]] = []
    results: list[dict[str, JSON]] = []
    for busy in (0, 1, 2):
        default: list[float] = []
        one: list[float] = []
        for r in range(args.rounds):
            for threads in ((None, "1") if r % 2 == 0 else ("1", None)):
                (default if threads is None else one).append(measure(busy, threads, args.blocks))
        ratio = statistics.median(d / o for d, o in zip(default, one))
        rows.append([busy, f"{statistics.median(default):.2f} s", f"{statistics.median(one):.2f} s", f"{ratio:.2f}x"])
        results.append({"busy": busy, "default_s": list[JSON](default), "one_thread_s": list[JSON](one), "ratio": ratio})
        print(f"busy processes {busy}: BLAS threads {cores}: {default}; one: {one}", flush=True)
    print()
    print(markdown_table(["busy processes", f"epoch, {cores} BLAS threads (default)", "epoch, 1 BLAS thread",
                          "default / one thread"], rows, "rrrr"))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
