"""The array core in a few lines: delayed expressions, explicit broadcasting, one fused kernel.

Run: python examples/array_basics.py
"""

from __future__ import annotations

import numpy as np

import lazybn as lb
from lazybn import Fn, fuse


def main() -> None:
    x = lb.matrix(np.arange(12.0).reshape(4, 3))  # 4 samples, 3 features (float64 kept)
    n = lb.rows(x)
    mu = lb.scale(1.0 / n, lb.sum_rows(x))  # Delayed[Ix1]: one mean per column, nothing computed yet
    xmu = x - lb.rows_like(mu, x)  # explicit broadcast: the mean as every row
    var = lb.scale(1.0 / n, lb.sum_rows(lb.amap(Fn.square, xmu)))
    xhat = xmu * lb.rows_like(lb.amap(Fn.recip, lb.amap(Fn.sqrt, lb.add_c(var, 1e-5))), x)
    print(xhat)  # Delayed[Ix2] Seq (4, 3) float64 = ...
    print(fuse.plan([xhat.node], xhat.dtype, False).source)  # the kernel it becomes
    out, mean = lb.compute_all(xhat, mu)  # one launch, two passes over x
    print(out)
    print(mean)


if __name__ == "__main__":
    main()
