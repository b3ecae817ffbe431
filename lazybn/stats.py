"""Per-feature batch statistics that merge across shards.

``moments(x)`` gives the count, the per-feature (column) mean and the per-feature sum of squared
deviations from that mean (``m2``) of a matrix, in one fused kernel. ``merge(a, b)`` combines the
moments of two shards of rows with Chan et al.'s pairwise update, in float64: the result is the
moments of all their rows together, without ever summing raw squares (no cancellation under a
large mean). ``merge_all`` folds any number of shards, so statistics over a data set too large
for one batch, or spread over several processes, are one merge away::

    total = merge_all(moments(matrix(x[i:i + 1000])) for i in range(0, len(x), 1000))
    total.mean, total.biased_var, total.unbiased_var

Shards may hold any number of rows, one or none included: the merge weights each by its count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, final

import numpy as np

from .array import Delayed, Manifest, Matrix, Vector, compute, compute_all
from .construct import matrix, vector
from .errors import ArgumentError, DTypeError, ShapeError, ValueRangeError, a_kind
from .fuse.graph import Fn
from .layers import _check, _finite
from .ops import _mat, amap, cols, rows_like, scale, sum_rows

_F64 = np.dtype(np.float64)


def _vec64(name: str, a: object) -> Manifest[Any]:
    """A finite float64 vector, checked as the layers check their parameters."""
    v = _check("Moments", name, a, 1)
    if v.dtype != _F64:
        raise DTypeError(f"Moments.{name}: must be float64, got {v.dtype} "
                         f"(lb.vector(v, np.float64) makes a float64 copy)")
    _finite("Moments", name, v)
    return v


@final
@dataclass(frozen=True, slots=True)
class Moments:
    """The statistics of ``n`` rows, per feature: their mean and ``m2``, the sum of squared
    deviations from that mean. Both are float64 vectors of one length (the number of features).

    ``Moments.empty(features)`` is the moments of no rows; build others with :func:`moments`
    and combine them with :func:`merge` / :func:`merge_all`.

    Raises:
        ArgumentError, RankError, DTypeError, ShapeError: ``n`` is not an int, or ``mean`` and
            ``m2`` are not float64 vectors of one length.
        ValueRangeError: ``n`` < 0, NaN/inf, a negative ``m2``, or moments that no rows have
            (0 rows with a nonzero mean or m2, 1 row with a nonzero m2).
    """

    n: int
    mean: Vector
    m2: Vector

    def __post_init__(self) -> None:
        if type(self.n) is not int:
            raise ArgumentError(f"Moments.n: expected an int (the number of rows), got {self.n!r}")
        if self.n < 0:
            raise ValueRangeError(f"Moments.n: the number of rows must be >= 0, got {self.n}")
        mean, m2 = _vec64("mean", self.mean), _vec64("m2", self.m2)
        if mean.shape != m2.shape:
            raise ShapeError("Moments", mean.shape, m2.shape, "mean and m2 must have one length (the features)")
        dev = m2._leaf.array
        if dev.size and dev.min() < 0:
            raise ValueRangeError("Moments.m2: a sum of squared deviations is negative")
        if self.n == 0 and (np.any(mean._leaf.array) or np.any(dev)):
            raise ValueRangeError("Moments: the moments of 0 rows must have a zero mean and a zero m2")
        if self.n == 1 and np.any(dev):
            raise ValueRangeError("Moments: one row deviates from nothing: its m2 must be zero")

    @classmethod
    def empty(cls, features: int) -> Moments:
        """The moments of no rows with ``features`` features: n = 0, a zero mean and m2."""
        if type(features) is not int:
            raise ArgumentError(f"Moments.empty: expected an int (the number of features), got {features!r}")
        if features < 0:
            raise ValueRangeError(f"Moments.empty: the number of features must be >= 0, got {features}")
        zero = vector(np.zeros(features), dtype=np.float64)
        return cls(0, zero, zero)

    @property
    def features(self) -> int:
        """The number of features (columns of the data)."""
        return self.mean.shape[0]

    @property
    def biased_var(self) -> Vector:
        """The variance ``m2 / n`` (what batch norm normalises a batch with); needs n >= 1."""
        if self.n < 1:
            raise ValueRangeError("Moments.biased_var: the variance of 0 rows is undefined")
        return vector(self.m2.array / self.n, dtype=np.float64)

    @property
    def unbiased_var(self) -> Vector:
        """The unbiased variance ``m2 / (n - 1)`` (batch norm's population statistic); needs n >= 2."""
        if self.n < 2:
            raise ValueRangeError(f"Moments.unbiased_var: the unbiased variance needs at least 2 rows, "
                                  f"got {self.n}")
        return vector(self.m2.array / (self.n - 1), dtype=np.float64)


def moments(x: Matrix) -> Moments:
    """The moments of the rows of ``x``: per column, the count, mean and sum of squared deviations.

    One kernel computes both (the deviations' pass is fused with the mean's), in float64: float32
    data is widened first (a copy), since a sum of squared deviations leaves float32's range (it
    underflows to 0 or overflows) long before float64's. A matrix of no rows gives
    ``Moments.empty(cols(x))``, without NaN.

    Raises:
        ArgumentError, RankError: ``x`` is not a lazybn matrix.
        ValueRangeError: the statistics are not finite (NaN or infinity in ``x``, or squared
            deviations beyond float64's range).
    """
    n = _mat(x, "moments")[0].shape[0]  # the error names moments, not rows
    if n == 0:
        return Moments.empty(cols(x))
    if x.dtype != _F64:
        given: object = x  # an untyped caller's delayed matrix (a float64 one joins the kernel below)
        x = matrix((compute(given) if isinstance(given, Delayed) else x).array, np.float64, x.comp)
    # Step 1: the mean of each column
    mean = scale(1.0 / n, sum_rows(x))
    # Step 2: the deviations from it
    xmu = x - rows_like(mean, x)
    # Step 3: their sum of squares
    m2 = sum_rows(amap(Fn.square, xmu))
    mean_m, m2_m = compute_all(mean, m2)
    mean64, m2_64 = mean_m.array.astype(np.float64, copy=False), m2_m.array.astype(np.float64, copy=False)
    if not (np.isfinite(mean64).all() and np.isfinite(m2_64).all()):
        raise ValueRangeError(f"moments: the statistics of the {x.shape} matrix are not finite "
                              "(it holds NaN or infinity, or its squared deviations overflow)")
    return Moments(n, vector(mean64, dtype=np.float64), vector(m2_64, dtype=np.float64))


def merge(a: Moments, b: Moments) -> Moments:
    """The moments of the rows of ``a`` and ``b`` together (Chan et al.'s pairwise update, float64).

    With ``d = b.mean - a.mean`` and ``n = a.n + b.n``: ``mean = a.mean + d · b.n / n`` and
    ``m2 = a.m2 + b.m2 + d² · a.n · b.n / n``. An empty shard changes nothing (the other is
    returned as it is); the order of the arguments changes only the rounding.

    Raises:
        ArgumentError: an argument is not :class:`Moments`.
        ShapeError: the shards have different numbers of features.
    """
    for name, m in (("first", a), ("second", b)):
        if not isinstance(m, Moments):
            raise ArgumentError(f"merge: the {name} argument must be lazybn Moments, got {type(m).__name__}")
    if a.features != b.features:
        raise ShapeError("merge", a.mean.shape, b.mean.shape,
                         f"the shards must have the same features, got {a.features} and {b.features}")
    if b.n == 0:
        return a
    if a.n == 0:
        return b
    n = a.n + b.n
    ma, mb = a.mean.array, b.mean.array
    delta = mb - ma
    mean = ma + delta * (b.n / n)
    m2 = a.m2.array + b.m2.array + np.square(delta) * (a.n * b.n / n)
    if not (np.isfinite(mean).all() and np.isfinite(m2).all()):
        raise ValueRangeError("merge: the merged statistics overflow float64")
    return Moments(n, vector(mean, dtype=np.float64), vector(m2, dtype=np.float64))


def merge_all(parts: Iterable[Moments]) -> Moments:
    """Merge the moments of any number of shards, in the order given (an iterator is read once).

    Raises:
        ValueRangeError: ``parts`` is empty (``Moments.empty(features)`` is the moments of no rows).
        ArgumentError, ShapeError: as :func:`merge`.
    """
    try:
        it = iter(parts)
    except TypeError:  # one Moments, say
        raise ArgumentError(f"merge_all: expected an iterable of lazybn Moments (a list), got "
                            f"{a_kind(parts)}") from None
    try:
        total = next(it)
    except StopIteration:
        raise ValueRangeError("merge_all: no moments to merge; pass at least one "
                              "(the moments of no rows are Moments.empty(features))") from None
    if not isinstance(total, Moments):
        raise ArgumentError(f"merge_all: expected lazybn Moments, got {type(total).__name__}")
    for part in it:
        total = merge(total, part)
    return total
