"""What batch norm's variants cost per training step, against batch norm in the same run.

The MNIST batch-norm network (784-300-50-10, batch 100, SGD, float32) trained by ``train_step``
with batch norm, with a cumulative average of the running statistics (``momentum=None``), with
batch renormalisation (rmax 3, dmax 5; and with new bounds every step, ramped by ``RenormRamp``
and set with ``dataclasses.replace`` as a loop of one's own would) and with ghost batches of 25
rows. The networks take turns, blocks of 50 steps on the same 50 batches for ``--rounds`` rounds,
the order rotating;
each ratio is the median over rounds of that round's ratio to batch norm, so the machine's drift
cancels.

    python benchmarks/bench_variants.py [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_facts, markdown_table  # noqa: E402

STEPS = 50
RAMPED = "renormalisation, bounds ramped every step"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import lazybn as lb
    from lazybn.layers import Batchnorm1d, Layer
    from lazybn.optim import OptState, init_state

    rng = np.random.default_rng(0)
    xs = [lb.matrix(rng.random((100, 784), dtype=np.float32)) for _ in range(STEPS)]
    ys = [lb.matrix(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 100)]) for _ in range(STEPS)]
    base = lb.mlp([784, 300, 50, 10], batchnorm=True, seed=0)

    def variant(**kw: Any) -> list[Layer]:
        return [replace(layer, **kw) if isinstance(layer, Batchnorm1d) else layer for layer in base]

    nets = {"batch norm": base, "cumulative average": variant(momentum=None),
            "renormalisation (3, 5)": variant(renorm=lb.Renorm(3.0, 5.0)),
            RAMPED: variant(renorm=lb.Renorm(3.0, 5.0)), "ghost batches of 25": variant(ghost_batch=25)}
    ramp = lb.RenormRamp(3.0, 5.0, start=0, rmax_steps=10**6, dmax_steps=10**6)  # new bounds at every step
    opt = lb.SGD(0.1)
    state: dict[str, tuple[list[Layer], OptState]] = {k: (v, init_state(opt, v)) for k, v in nets.items()}

    def block(name: str) -> float:
        layers, st = state[name]
        t0 = time.perf_counter()
        for x, y in zip(xs, ys):
            if name == RAMPED:
                bounds = ramp.at(st.step)
                layers = [replace(layer, renorm=bounds) if isinstance(layer, Batchnorm1d) else layer for layer in layers]
            step = lb.train_step(layers, opt, st, x, y)
            layers, st = step.layers, step.opt_state
        state[name] = (layers, st)
        return (time.perf_counter() - t0) / STEPS

    for name in nets:  # warm-up: traces and kernels
        block(name)
    times: dict[str, list[float]] = {name: [] for name in nets}
    names = list(nets)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(block(name))
    base_t = np.array(times["batch norm"])
    rows = [[name, f"{1e6 * float(np.median(t)):.0f} µs", f"{float(np.median(np.array(t) / base_t)):.3f}x"]
            for name, t in times.items()]
    print(json.dumps(machine_facts(), indent=1))
    print(markdown_table(["batch norm in the MNIST network", "step, median", "step / batch norm's step"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_facts(), "seconds": times}, indent=1))


if __name__ == "__main__":
    main()
