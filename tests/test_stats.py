"""Per-feature moments and their merge across shards (``lazybn.stats``) against a long-double oracle.

The oracle is written here, independently of lazybn: the two-pass mean and sum of squared
deviations of the WHOLE data, in numpy's long double. Merged shards must equal it within a bound
from the magnitudes involved: a shard's mean is a float64, so it carries a rounding of the
data's magnitude ``M``, and the merge's ``d² · a.n · b.n / n`` term carries that rounding into
``m2`` as about ``sqrt(n · m2) · M`` times it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lazybn as lb
from lazybn import Moments, merge, merge_all, moments

from .helpers import DTYPES, F, arrays

F64 = np.dtype(np.float64)
F32 = np.dtype(np.float32)
LD = np.ndarray[Any, np.dtype[np.longdouble]]
REL = {F64: 1e-12, F32: 1e-6}  # float32 data: its values are float32 (the moments are float64 sums)


def oracle(x: F) -> tuple[int, LD, LD]:
    """Count, mean and sum of squared deviations of the columns of ``x``: two passes in long double."""
    xl = x.astype(np.longdouble)
    n = int(x.shape[0])
    mean = xl.sum(axis=0) / n if n else np.zeros(x.shape[1], dtype=np.longdouble)
    return n, mean, np.square(xl - mean).sum(axis=0)


def assert_matches_oracle(got: Moments, x: F, rel: float = 1e-12) -> None:
    n, mean, m2 = oracle(x)
    assert got.n == n
    assert got.mean.dtype == F64 and got.m2.dtype == F64
    assert got.mean.shape == got.m2.shape == (x.shape[1],)
    big = np.abs(x).max(axis=0).astype(np.longdouble) if n else np.zeros(x.shape[1], dtype=np.longdouble)
    tiny = np.longdouble(np.finfo(F64).tiny)
    mean_err = np.abs(got.mean.array.astype(np.longdouble) - mean)
    assert (mean_err <= rel * big + tiny).all(), f"mean {got.mean.array} != {mean}"
    m2_tol = rel * (m2 + np.sqrt(n * m2) * big) + n * np.square(rel * big) + tiny
    m2_err = np.abs(got.m2.array.astype(np.longdouble) - m2)
    assert (m2_err <= m2_tol).all(), f"m2 {got.m2.array} != {m2} (error {m2_err}, bound {m2_tol})"


def assert_close(a: Moments, b: Moments, x: F, rel: float = 1e-12) -> None:
    """Two merges of the same rows agree within the bound both have to the oracle."""
    assert a.n == b.n
    n = a.n
    big = np.abs(x).max(axis=0) if n else np.zeros(x.shape[1])
    m2 = np.maximum(a.m2.array, b.m2.array)
    assert (np.abs(a.mean.array - b.mean.array) <= 2 * rel * big).all()
    assert (np.abs(a.m2.array - b.m2.array) <= 2 * (rel * (m2 + np.sqrt(n * m2) * big) + n * (rel * big) ** 2)).all()


def shards(x: F, sizes: list[int]) -> list[F]:
    bounds = list(itertools.accumulate(sizes, initial=0))
    assert bounds[-1] == x.shape[0]
    return [x[a:b] for a, b in zip(bounds, bounds[1:])]


def moments_of(parts: list[F]) -> list[Moments]:
    return [moments(lb.matrix(p)) for p in parts]


@st.composite
def split_data(draw: st.DrawFn, dtype: np.dtype[Any] = F64) -> tuple[F, list[int]]:
    """A matrix of 0-40 rows and 0-4 features (mixed magnitudes, maybe a large offset) and a split of its
    rows into consecutive shards, empty ones and one-row ones included."""
    n, d = draw(st.integers(0, 40)), draw(st.integers(0, 4))
    x = draw(arrays(dtype, (n, d))) + dtype.type(draw(st.sampled_from([0.0, 1e3, -1e5])))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    bounds = [0, *cuts, n]
    return x, [b - a for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_moments_of_a_matrix_match_the_long_double_oracle(dtype: np.dtype[Any], data: st.DataObject) -> None:
    x, _ = data.draw(split_data(dtype))
    assert_matches_oracle(moments(lb.matrix(x)), x, REL[dtype])


@given(split_data())
def test_merged_shards_equal_the_whole_data(case: tuple[F, list[int]]) -> None:
    x, sizes = case
    merged = merge_all(moments_of(shards(x, sizes)))
    assert_matches_oracle(merged, x)
    assert_close(merged, moments(lb.matrix(x)), x)


@given(split_data(), st.randoms(use_true_random=False))
def test_merge_order_does_not_matter(case: tuple[F, list[int]], rnd: Any) -> None:
    x, sizes = case
    parts = moments_of(shards(x, sizes))
    in_order = merge_all(parts)
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    assert_close(in_order, merge_all(shuffled), x)
    assert_close(in_order, merge_all(reversed(parts)), x)
    tree = list(parts)  # pairwise, as shards reduced across processes would be
    while len(tree) > 1:
        tree = [merge(*tree[i:i + 2]) if i + 1 < len(tree) else tree[i] for i in range(0, len(tree), 2)]
    assert_close(in_order, tree[0], x)


def test_shards_of_1_4_12_20_rows_and_an_empty_one_equal_the_whole_batch() -> None:
    x = np.random.default_rng(28).normal(100.0, 5.0, (37, 4))
    parts = moments_of(shards(x, [1, 4, 0, 12, 20]))
    assert [p.n for p in parts] == [1, 4, 0, 12, 20]
    merged = merge_all(parts)
    n, mean, m2 = oracle(x)
    assert merged.n == n == 37
    np.testing.assert_allclose(merged.mean.array, mean.astype(F64), rtol=1e-12)
    np.testing.assert_allclose(merged.biased_var.array, (m2 / n).astype(F64), rtol=1e-12)
    np.testing.assert_allclose(merged.unbiased_var.array, (m2 / (n - 1)).astype(F64), rtol=1e-12)
    np.testing.assert_allclose(merged.unbiased_var.array, np.var(x, axis=0, ddof=1), rtol=1e-12)
    whole = moments(lb.matrix(x))
    np.testing.assert_allclose(merged.mean.array, whole.mean.array, rtol=1e-12)
    np.testing.assert_allclose(merged.m2.array, whole.m2.array, rtol=1e-12)


def test_constant_shards_are_weighted_by_their_counts() -> None:
    three = moments(lb.matrix(np.array([[1.0, -2.0]] * 3)))
    one = moments(lb.matrix(np.array([[5.0, 2.0]])))
    assert three.m2.array.tolist() == one.m2.array.tolist() == [0.0, 0.0]
    for merged in (merge(three, one), merge(one, three), merge_all([three, one])):
        assert merged.n == 4
        assert merged.mean.array.tolist() == [2.0, -1.0]  # not 3.0 and 0.0, the mean of the two means
        assert merged.biased_var.array.tolist() == [3.0, 3.0]
        assert merged.unbiased_var.array.tolist() == [4.0, 4.0]


def test_a_shard_of_one_row_is_legal() -> None:
    one = moments(lb.matrix(np.array([[3.0, -7.5]])))
    assert (one.n, one.mean.array.tolist(), one.m2.array.tolist()) == (1, [3.0, -7.5], [0.0, 0.0])
    assert one.biased_var.array.tolist() == [0.0, 0.0]
    with pytest.raises(lb.ValueRangeError, match="at least 2 rows, got 1"):
        one.unbiased_var
    two = merge(moments(lb.matrix(np.array([[1.0, 1.0]]))), moments(lb.matrix(np.array([[3.0, 1.0]]))))
    assert (two.n, two.mean.array.tolist(), two.m2.array.tolist()) == (2, [2.0, 1.0], [2.0, 0.0])
    assert two.unbiased_var.array.tolist() == [2.0, 0.0]


def test_float32_data_gives_float64_moments() -> None:
    x = np.random.default_rng(3).normal(1e4, 1.0, (300, 3)).astype(np.float32)
    got = moments(lb.matrix(x))
    assert got.mean.dtype == got.m2.dtype == F64
    _, mean, m2 = oracle(x)
    np.testing.assert_allclose(got.mean.array, mean.astype(F64), rtol=1e-7)
    np.testing.assert_allclose(got.m2.array, m2.astype(F64), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_delayed_matrix_gives_the_moments_of_its_values(dtype: np.dtype[Any]) -> None:
    rng = np.random.default_rng(11)
    a, b = rng.normal(3.0, 2.0, (9, 4)), rng.normal(size=(9, 4))
    delayed = lb.matrix(a, dtype) * lb.matrix(b, dtype)  # not computed, as an untyped caller may pass it
    got = moments(delayed)  # type: ignore[arg-type]
    x = a.astype(dtype) * b.astype(dtype)  # the product in the dtype, rounded as the kernel rounds it
    assert got.n == 9
    assert_matches_oracle(got, x)


def test_a_large_offset_does_not_cancel() -> None:
    x = 1e8 + np.random.default_rng(5).standard_normal((100, 3))
    merged = merge_all(moments_of(shards(x, [7, 1, 30, 0, 62])))
    n, mean, m2 = oracle(x)
    np.testing.assert_allclose(merged.mean.array, mean.astype(F64), rtol=1e-15)
    np.testing.assert_allclose(merged.unbiased_var.array, (m2 / (n - 1)).astype(F64), rtol=1e-7)


def test_an_empty_matrix_gives_zeros_and_merges_as_nothing() -> None:
    empty = moments(lb.matrix(np.zeros((0, 3))))
    assert (empty.n, empty.mean.array.tolist(), empty.m2.array.tolist()) == (0, [0.0] * 3, [0.0] * 3)
    assert empty.mean.dtype == F64
    assert moments(lb.matrix(np.zeros((0, 3), dtype=np.float32))).m2.dtype == F64
    some = moments(lb.matrix(np.array([[1e30, -3.0, 0.5], [-1e30, 4.0, 0.25]])))
    assert merge(empty, some) is some and merge(some, empty) is some
    assert merge_all([empty, empty]).n == 0
    assert Moments.empty(3).mean.array.tolist() == [0.0] * 3
    with pytest.raises(lb.ValueRangeError, match="variance of 0 rows"):
        empty.biased_var
    with pytest.raises(lb.ValueRangeError, match="at least 2 rows, got 0"):
        empty.unbiased_var


def test_mismatched_features_are_a_shape_error_naming_both() -> None:
    a, b = moments(lb.matrix(np.ones((2, 3)))), moments(lb.matrix(np.ones((2, 4))))
    for x, y in ((a, b), (b, a)):
        with pytest.raises(lb.ShapeError) as err:
            merge(x, y)
        assert (err.value.op, err.value.left, err.value.right) == ("merge", x.mean.shape, y.mean.shape)
        assert f"shapes {x.mean.shape} and {y.mean.shape} do not match" in str(err.value)
    with pytest.raises(lb.ShapeError, match=r"\(3,\) and \(4,\)"):
        merge_all([a, a, b])
    with pytest.raises(lb.ShapeError, match=r"\(3,\) and \(4,\)"):  # an empty shard still has its features
        merge(Moments.empty(3), b)


def test_merging_nothing_is_refused() -> None:
    none: list[Moments] = []
    for nothing in (none, iter(none), (m for m in none)):
        with pytest.raises(lb.ValueRangeError, match="no moments to merge"):
            merge_all(nothing)
    with pytest.raises(lb.ArgumentError, match="Moments"):
        merge_all([np.zeros(3)])  # type: ignore[list-item]
    with pytest.raises(lb.ArgumentError, match="second argument"):
        merge(Moments.empty(3), None)  # type: ignore[arg-type]


def _v(xs: list[float], dtype: Any = np.float64) -> lb.Vector:
    return lb.vector(xs, dtype=dtype)


INVALID: list[tuple[str, Any, type[Exception], str]] = [
    ("negative count", lambda: Moments(-1, _v([0.0]), _v([0.0])), lb.ValueRangeError, "Moments.n: .* >= 0, got -1"),
    ("float count", lambda: Moments(2.0, _v([0.0]), _v([0.0])),  # type: ignore[arg-type]
     lb.ArgumentError, "Moments.n: expected an int"),
    ("bool count", lambda: Moments(True, _v([0.0]), _v([0.0])), lb.ArgumentError, "Moments.n: expected an int"),
    ("lengths differ", lambda: Moments(2, _v([0.0, 1.0]), _v([0.0])), lb.ShapeError, r"\(2,\) and \(1,\)"),
    ("float32 mean", lambda: Moments(2, _v([0.0], np.float32), _v([0.0])), lb.DTypeError,
     "Moments.mean: must be float64, got float32"),
    ("float32 m2", lambda: Moments(2, _v([0.0]), _v([0.0], np.float32)), lb.DTypeError, "Moments.m2: must be float64"),
    ("NaN mean", lambda: Moments(2, _v([np.nan]), _v([0.0])), lb.ValueRangeError, "Moments.mean: contains NaN"),
    ("infinite m2", lambda: Moments(2, _v([0.0]), _v([np.inf])), lb.ValueRangeError, "Moments.m2: contains NaN"),
    ("negative m2", lambda: Moments(2, _v([0.0, 1.0]), _v([1.0, -1e-300])), lb.ValueRangeError,
     "Moments.m2: .* negative"),
    ("matrix mean", lambda: Moments(2, lb.matrix(np.zeros((1, 1))), _v([0.0])),  # type: ignore[arg-type]
     lb.RankError, r"Moments.mean: expected a vector, got shape \(1, 1\)"),
    ("numpy m2", lambda: Moments(2, _v([0.0]), np.zeros(1)),  # type: ignore[arg-type]
     lb.ArgumentError, "Moments.m2: .* got ndarray"),
    ("no rows, a mean", lambda: Moments(0, _v([1.0]), _v([0.0])), lb.ValueRangeError, "0 rows must have a zero"),
    ("no rows, an m2", lambda: Moments(0, _v([0.0]), _v([1.0])), lb.ValueRangeError, "0 rows must have a zero"),
    ("one row, an m2", lambda: Moments(1, _v([3.0]), _v([0.5])), lb.ValueRangeError, "one row .* m2 must be zero"),
    ("negative features", lambda: Moments.empty(-1), lb.ValueRangeError, "Moments.empty: .* >= 0"),
    ("NaN data", lambda: moments(lb.matrix(np.array([[1.0], [np.nan]]))), lb.ValueRangeError,
     r"moments: the statistics of the \(2, 1\) matrix are not finite"),
    ("overflowing data", lambda: moments(lb.matrix(np.array([[1e300], [-1e300]]))), lb.ValueRangeError,
     "moments: .* not finite"),
    ("a vector", lambda: moments(_v([1.0, 2.0])), lb.RankError,  # type: ignore[arg-type]
     r"^moments: expected a matrix, got a vector of shape \(2,\)"),
    ("one Moments to merge_all", lambda: merge_all(Moments.empty(2)), lb.ArgumentError,  # type: ignore[arg-type]
     r"^merge_all: expected an iterable of lazybn Moments \(a list\), got a Moments$"),
    ("a numpy array", lambda: moments(np.ones((2, 2))), lb.ArgumentError,  # type: ignore[arg-type]
     "^moments: expected a lazybn Manifest or Delayed array, got ndarray"),
]


@pytest.mark.parametrize(("name", "call", "error", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_moments_are_refused_with_a_clear_error(name: str, call: Any, error: type[Exception],
                                                        message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_moments_are_frozen_and_valid_ones_are_accepted() -> None:
    m = Moments(3, _v([1.0, -2.0]), _v([0.0, 4.5]))
    assert (m.features, m.biased_var.array.tolist(), m.unbiased_var.array.tolist()) == (2, [0.0, 1.5], [0.0, 2.25])
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.n = 4  # type: ignore[misc]
