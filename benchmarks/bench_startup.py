"""Start-up costs, each in a fresh process: ``import lazybn``; the time ``lazybn train`` takes from
the command's start to the end of its first batch, with warm kernel and MNIST caches; a script's
first training step on a synthetic batch (the engine's part of that time); and the cold-cache
compile time of the whole training path (both networks of ``lazybn train``, training step and
inference).

The ``lazybn train`` measure runs the real command (``lazybn.cli.main``) with the first batch's
progress callback replaced by one that stamps the wall clock and ends the process; it needs
MNIST in the cache (run ``lazybn train`` once) or in ``$LAZYBN_DATA_DIR``, and is skipped
otherwise.

    python benchmarks/bench_startup.py [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import _MARK, JSON, machine_facts, markdown_table, run_snippet  # noqa: E402

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


LAZYBN_TRAIN = """
import json, os, sys, time
import lazybn.experiments.runner as runner

_epoch = runner.train_epoch

def _first_batch(*args, progress=None, **kwargs):
    def stamp(loss):
        print({mark!r} + json.dumps(time.time()), flush=True)
        os._exit(0)
    return _epoch(*args, progress=stamp, **kwargs)

runner.train_epoch = _first_batch
from lazybn.cli import main
main(["train", "--epochs", "1", "--out", {out!r}])
result = None  # not reached: the first batch ends the process
"""


def lazybn_train_first_batch(out: str) -> float:
    """Seconds from starting a ``lazybn train`` process to the end of its first batch."""
    t0 = time.time()
    stamp = run_snippet(LAZYBN_TRAIN.format(mark=_MARK, out=out))
    assert isinstance(stamp, float)
    return stamp - t0


def mnist_available() -> bool:
    from lazybn.data.mnist import DATA_DIR_ENV, default_cache_file

    return bool(os.environ.get(DATA_DIR_ENV)) or default_cache_file().is_file()


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
    train_runs: list[float] = []
    if mnist_available():
        with tempfile.TemporaryDirectory() as out:
            lazybn_train_first_batch(out)  # fills the user's kernel cache if it is not warm yet
            train_runs = [lazybn_train_first_batch(out) for _ in range(5)]
    else:
        print("skipped the `lazybn train` measure: MNIST is not in the cache (run `lazybn train` once) "
              "nor in $LAZYBN_DATA_DIR")
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
        "lazybn_train_first_batch_s": list[JSON](train_runs),
        # numba's start-up imports scipy.linalg when scipy is installed (lazybn does not need it): +0.3 s
        "scipy_installed": importlib.util.find_spec("scipy") is not None,
    }
    for k, v in res.items():
        print(f"{k:>26}: {v:.3f}" if isinstance(v, float) else f"{k:>26}: {v}")
    train = (f"{statistics.median(train_runs):.2f} s (5 runs: {min(train_runs):.2f}-{max(train_runs):.2f} s)"
             if train_runs else "skipped: no MNIST")
    if res["scipy_installed"]:
        train += "; scipy installed"
    print(markdown_table(["measure", "value", "target"], [
        ["`import lazybn`", f"{res['import_lazybn_s']:.3f} s", "< 0.3 s"],
        ["`lazybn train` reaches the end of its first batch, warm caches, from the command's start", train,
         "< 1.5 s"],
        ["a script's first training step (synthetic batch), warm kernel cache, from `import lazybn`",
         f"{res['warm_first_step_s']:.2f} s ({res['warm_kernels_compiled']} kernels compiled)", ""],
        ["whole training path, cold cache (both networks, step + inference)",
         f"{res['cold_whole_path_s']:.1f} s ({res['cold_kernels_compiled']} kernels compiled)", "< 15 s"],
    ]))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), "results": res}, indent=1))


if __name__ == "__main__":
    main()
