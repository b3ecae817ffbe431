"""The traffic floor of a two + two pass batch norm, for ``bench_bn.py``.

Four hand-written numba kernels (one row chunk per thread, private accumulators, unsigned
loop bounds; serial below lazybn's ``Comp.Par`` threshold) that move exactly the bytes of
lazybn's batch-norm step, 8·N·D elements, with as little arithmetic as such passes can have:

1. column sums of x (read x);                          the forward's statistics pass
2. y = x·a + b (read x, write y);                      the forward's output pass
3. column sums of dy and dy·x (read dy and x);         the backward's sums
4. dx = a·dy + b·x + c (read dy and x, write dx);      the backward's output pass

This is not batch norm: it computes no variance and returns nothing useful. Its time is what
any implementation of these passes would take on this machine if arithmetic were free, so the
ratio lazybn / floor separates what the passes cost from what lazybn's arithmetic costs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from lazybn.fuse import PAR_THRESHOLD_BYTES

F = np.ndarray[Any, Any]


def colsum(x: F, out: F, nch: np.int64) -> None:
    n, d, u = np.uint64(x.shape[0]), np.uint64(x.shape[1]), np.uint64(nch)
    part = np.empty((nch, d))
    for t in prange(nch):
        lo, hi = np.uint64(t) * n // u, np.uint64(t + 1) * n // u
        a = np.zeros(d)
        for i in range(lo, hi):
            for j in range(d):
                a[j] += x[i, j]
        for j in range(d):
            part[t, j] = a[j]
    for j in range(d):  # a plain loop: np.sum in a parallel kernel becomes a parallel reduction
        out[j] = part[0, j]
        for t in range(1, nch):
            out[j] += part[t, j]


def affine(x: F, a: F, b: F, y: F, nch: np.int64) -> None:
    n, d, u = np.uint64(x.shape[0]), np.uint64(x.shape[1]), np.uint64(nch)
    for t in prange(nch):
        lo, hi = np.uint64(t) * n // u, np.uint64(t + 1) * n // u
        for i in range(lo, hi):
            for j in range(d):
                y[i, j] = x[i, j] * a[j] + b[j]


def colsum2(x: F, dy: F, o1: F, o2: F, nch: np.int64) -> None:
    n, d, u = np.uint64(x.shape[0]), np.uint64(x.shape[1]), np.uint64(nch)
    p1, p2 = np.empty((nch, d)), np.empty((nch, d))
    for t in prange(nch):
        lo, hi = np.uint64(t) * n // u, np.uint64(t + 1) * n // u
        a, b = np.zeros(d), np.zeros(d)
        for i in range(lo, hi):
            for j in range(d):
                a[j] += dy[i, j]
                b[j] += dy[i, j] * x[i, j]
        for j in range(d):
            p1[t, j], p2[t, j] = a[j], b[j]
    for j in range(d):
        o1[j], o2[j] = p1[0, j], p2[0, j]
        for t in range(1, nch):
            o1[j] += p1[t, j]
            o2[j] += p2[t, j]


def combine(x: F, dy: F, a: F, b: F, c: F, dx: F, nch: np.int64) -> None:
    n, d, u = np.uint64(x.shape[0]), np.uint64(x.shape[1]), np.uint64(nch)
    for t in prange(nch):
        lo, hi = np.uint64(t) * n // u, np.uint64(t + 1) * n // u
        for i in range(lo, hi):
            for j in range(d):
                dx[i, j] = a[j] * dy[i, j] + b[j] * x[i, j] + c[j]


def _compile(parallel: bool) -> tuple[Any, ...]:
    return tuple(njit(parallel=parallel, error_model="numpy", nogil=True)(f) for f in (colsum, affine, colsum2, combine))


_PAR, _SEQ = _compile(True), _compile(False)


def floor_step(x: F, dy: F, threads: int) -> tuple[F, F]:
    """The four passes over fresh outputs, as a batch-norm step allocates them; serial below
    lazybn's threshold for ``Comp.Par`` (as lazybn's kernels are)."""
    par = x.nbytes >= PAR_THRESHOLD_BYTES
    k_colsum, k_affine, k_colsum2, k_combine = _PAR if par else _SEQ
    d, nch = x.shape[1], np.int64(threads if par else 1)
    s, s1, s2 = np.empty(d, x.dtype), np.empty(d, x.dtype), np.empty(d, x.dtype)
    k_colsum(x, s, nch)
    y = np.empty_like(x)
    k_affine(x, s, s, y, nch)
    k_colsum2(x, dy, s1, s2, nch)
    dx = np.empty_like(x)
    k_combine(x, dy, s1, s2, s, dx, nch)
    return y, dx
