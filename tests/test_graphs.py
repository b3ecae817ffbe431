"""Random expression graphs against numpy in float64.

``test_fuzz.py`` drives one operation at a time; the engine's riskiest part is what happens to
whole graphs: the algebra's rewrites of sums (split, factors pulled out, squared deviations
turned into column statistics), common subexpressions, several outputs of one kernel, and the
scheduling of reductions into passes. Each example builds a random graph of matrices, column
vectors and row vectors (element-wise arithmetic, element functions, scalars, broadcasts, sums,
maxima, a mean and variance broadcast back), computes a few of its nodes with one
``compute_all``, and compares every output with the same graph evaluated by numpy in float64,
within a bound proportional to the magnitudes that flowed into it (in float32 a bound of a
float32 computation; outputs whose magnitudes approach float32's range are not compared).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn import Fn

F = np.ndarray[Any, np.dtype[np.float64]]
Kind = str  # "M" matrix (r, c), "C" column vector (c,), "R" row vector (r,)

FNS: dict[Fn, tuple[Callable[[F], F], Callable[[F], F]]] = {  # numpy, and a bound on |f| from |a|
    Fn.square: (lambda a: a * a, lambda m: m * m),
    Fn.abs: (np.abs, lambda m: m),
    Fn.relu: (lambda a: np.maximum(a, 0.0), lambda m: m),
    Fn.negate: (lambda a: -a, lambda m: m),
    Fn.tanh: (np.tanh, lambda m: np.minimum(m, 1.0)),
    Fn.sigmoid: (lambda a: 1 / (1 + np.exp(-a)), np.ones_like),
}


@dataclass
class Node:
    lz: Any  # a lazybn array (Delayed or Manifest)
    ref: F  # numpy's value
    mag: F  # a bound on the magnitudes that flowed into it


def _graph(seed: int, dtype: type) -> tuple[list[Node], str]:
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    r, c = rng.choice([0, 1, 2, 3, 5, 17, 600]), rng.choice([0, 1, 2, 3, 5])
    pool: dict[Kind, list[Node]] = {"M": [], "C": [], "R": []}

    def leaf(kind: Kind) -> Node:
        a = nrng.uniform(-2, 2, {"M": (r, c), "C": (c,), "R": (r,)}[kind])
        if kind == "M" and rng.random() < 0.3:
            a = np.asfortranarray(a) if rng.random() < 0.5 else a[::-1, ::-1]
        lz = lb.matrix(a, dtype) if kind == "M" else lb.vector(a, dtype)
        exact = np.asarray(lz.array, np.float64)  # the values the kernel sees
        return Node(lz, exact, np.abs(exact))

    def some(kind: Kind, depth: int) -> Node:
        if pool[kind] and rng.random() < 0.45:
            return rng.choice(pool[kind])
        node = build(kind, depth)
        pool[kind].append(node)
        return node

    def build(kind: Kind, depth: int) -> Node:
        k = rng.random()
        if depth <= 0:
            return leaf(kind)
        if k < 0.3:
            a, b = some(kind, depth - 1), some(kind, depth - 1)
            op = rng.choice("+-*/")
            if op == "+":
                return Node(a.lz + b.lz, a.ref + b.ref, a.mag + b.mag)
            if op == "-":
                return Node(a.lz - b.lz, a.ref - b.ref, a.mag + b.mag)
            if op == "*":
                return Node(a.lz * b.lz, a.ref * b.ref, a.mag * b.mag)
            return Node(a.lz / lb.add_c(lb.amap(Fn.square, b.lz), 1.0), a.ref / (b.ref ** 2 + 1), a.mag)
        if k < 0.42:
            a = some(kind, depth - 1)
            f = rng.choice(list(FNS))
            return Node(lb.amap(f, a.lz), FNS[f][0](a.ref), FNS[f][1](a.mag))
        if k < 0.52:
            a, s = some(kind, depth - 1), rng.choice([0.5, -3.0, 1 / 3, 2.0])
            return rng.choice([Node(lb.scale(s, a.lz), s * a.ref, abs(s) * a.mag),
                               Node(lb.add_c(a.lz, s), a.ref + s, a.mag + abs(s)),
                               Node(-a.lz, -a.ref, a.mag), Node(s - a.lz, s - a.ref, a.mag + abs(s))])
        if kind == "C":
            m = some("M", depth - 1)
            return Node(lb.sum_rows(m.lz), m.ref.sum(0), m.mag.sum(0))
        if kind == "R":
            m = some("M", depth - 1)
            if c > 0 and rng.random() < 0.4:
                return Node(lb.max_cols(m.lz), m.ref.max(1), m.mag.max(1))
            return Node(lb.sum_cols(m.lz), m.ref.sum(1), m.mag.sum(1))
        if k < 0.7:
            v = some("C", depth - 1)
            return Node(lb.br(r, v.lz), np.broadcast_to(v.ref, (r, c)), np.broadcast_to(v.mag, (r, c)))
        if k < 0.82:
            v, m = some("R", depth - 1), some("M", depth - 1)
            return Node(lb.cols_like(v.lz, m.lz), np.broadcast_to(v.ref[:, None], (r, c)),
                        np.broadcast_to(v.mag[:, None], (r, c)))
        m = some("M", depth - 1)  # a deviation from the column mean, perhaps scaled by the variance
        if r == 0:
            return m
        mean = lb.scale(1 / r, lb.sum_rows(m.lz))
        dev = Node(m.lz - lb.rows_like(mean, m.lz), m.ref - m.ref.mean(0), m.mag + m.mag.mean(0))
        if rng.random() < 0.5:
            return dev
        var = lb.scale(1 / r, lb.sum_rows(lb.amap(Fn.square, dev.lz)))
        return Node(dev.lz / lb.rows_like(lb.add_c(var, 1.0), m.lz), dev.ref / ((dev.ref ** 2).mean(0) + 1), dev.mag)

    outs = [some(rng.choice("MMCR"), rng.randint(1, 5)) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.2:
        outs.append(outs[0])  # the same output twice
    return outs, f"seed {seed}, {r} x {c}, {np.dtype(dtype)}"


TOLERANCE: dict[type, float] = {np.float64: 5e-8, np.float32: 1e-5}  # relative to the magnitudes that flowed in


@settings(max_examples=int(os.environ.get("LAZYBN_GRAPH_EXAMPLES", "20")))
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float64, np.float32]))
def test_random_graphs_match_numpy(seed: int, dtype: type) -> None:
    outs, where = _graph(seed, dtype)
    got = lb.compute_all(*[o.lz if isinstance(o.lz, lb.Delayed) else lb.delay(o.lz) for o in outs])
    for k, (o, m) in enumerate(zip(outs, got)):
        a = np.asarray(m.array, np.float64)
        assert a.shape == o.ref.shape and m.dtype == np.dtype(dtype), f"{where}: output {k} is {a.shape} {m.dtype}"
        if dtype is np.float32 and o.mag.size and not o.mag.max() < 1e30:
            continue  # beyond what float32 can hold on the way
        with np.errstate(invalid="ignore"):
            ok = ((np.abs(a - o.ref) <= TOLERANCE[dtype] * (o.mag + 1.0)) | (np.isnan(a) & np.isnan(o.ref))
                  | (a == o.ref))
        assert ok.all(), f"{where}: output {k} differs from numpy by up to {np.nanmax(np.abs(a - o.ref))}"
