"""Inference with batch norm against the same network folded (``lb.fold_batchnorm``), and numpy.

The MNIST batch-norm network (784-300-50-10, float32, running statistics made unlike the
initial ones so the folding is not trivial) computes its logits with ``lb.logits``, unfolded
and folded, and in plain numpy, unfolded (each batch-norm layer as ``(z − μ)/√(σ² + ε)·γ + β``)
and folded. Batches of 100 rows and of 10000 (the size of MNIST's test set). The four take
turns in blocks for ``--rounds`` rounds, the order rotating; each ratio is the median over
rounds of that round's ratio to lazybn unfolded, so the machine's drift cancels.

    python benchmarks/bench_inference.py [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fmt_time, machine_facts, markdown_table  # noqa: E402

if TYPE_CHECKING:
    from lazybn import Layer

F = np.ndarray[Any, np.dtype[np.floating[Any]]]


def numpy_logits(layers: Sequence[Layer], x: F) -> F:
    """The inference pass in numpy (ReLU activations, as ``lb.mlp``'s networks)."""
    import lazybn as lb

    for layer in layers:
        if isinstance(layer, lb.Linear):
            x = x @ layer.w.array + layer.b.array
        elif isinstance(layer, lb.LinearNoBias):
            x = x @ layer.w.array
        elif isinstance(layer, lb.Batchnorm1d):
            x = (x - layer.mu.array) / np.sqrt(layer.var.array + np.float32(layer.eps)) * layer.gamma.array \
                + layer.beta.array
        elif isinstance(layer, lb.Activation):
            x = np.maximum(x, np.float32(0))
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import lazybn as lb

    rng = np.random.default_rng(0)
    layers: list[lb.Layer] = []
    for layer in lb.mlp([784, 300, 50, 10], batchnorm=True, seed=0):
        if isinstance(layer, lb.Batchnorm1d):
            n = layer.features
            mu, var, gamma, beta = (lb.vector(v, np.float32) for v in (
                rng.normal(0, 1, n), rng.uniform(0.5, 2, n), rng.normal(1, 0.2, n), rng.normal(0, 0.5, n)))
            layer = lb.Batchnorm1d(mu, var, gamma, beta)
        layers.append(layer)
    folded = lb.fold_batchnorm(layers)
    contenders: dict[str, Callable[[F, lb.Matrix], object]] = {
        "lazybn": lambda _, m: lb.logits(layers, m), "lazybn folded": lambda _, m: lb.logits(folded, m),
        "numpy": lambda a, _: numpy_logits(layers, a), "numpy folded": lambda a, _: numpy_logits(folded, a)}
    rows = []
    seconds: dict[str, dict[str, list[float]]] = {}
    for batch, calls in ((100, 200), (10000, 4)):
        a = rng.random((batch, 784), dtype=np.float32)
        m = lb.matrix(a)
        np.testing.assert_allclose(lb.logits(folded, m).array, lb.logits(layers, m).array, rtol=1e-3, atol=1e-3)
        names = list(contenders)
        times: dict[str, list[float]] = {name: [] for name in names}
        for name in names:  # warm-up: traces and kernels
            contenders[name](a, m)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                for _ in range(calls):
                    contenders[name](a, m)
                times[name].append((time.perf_counter() - t0) / calls)
        base = np.array(times["lazybn"])
        rows += [[str(batch), name, fmt_time(float(np.median(t))), f"{float(np.median(np.array(t) / base)):.2f}x"]
                 for name, t in times.items()]
        seconds[str(batch)] = times
    print(json.dumps(machine_facts(), indent=1))
    print(markdown_table(["rows", "logits of the MNIST BN network", "median", "/ lazybn unfolded"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_facts(), "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
