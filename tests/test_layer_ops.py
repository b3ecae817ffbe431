"""The operations custom layers are written with (layer norm, RMSNorm, leaky ReLU, GELU, clipping,
weight standardisation): ``abs``, ``**``, ``@``, ``maximum``/``minimum``, ``max_rows``/``min_rows``/
``min_cols`` and ``Fn.erf``, against plain numpy (and torch's GELU), fused and replayed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lazybn as lb
from lazybn import Comp, Fn, fuse

from .helpers import DTYPES, F, arrays, assert_matches_numpy, elements, shapes2
from .test_ops import COMPS, parallel_kernels

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0]


def values(dtype: np.dtype[Any], shape: tuple[int, ...] | st.SearchStrategy[tuple[int, int]]) -> st.SearchStrategy[F]:
    """Arrays of mixed magnitudes with NaN, infinities and signed zeros among them."""
    return hnp.arrays(dtype, shape, elements=st.one_of(elements(dtype), st.sampled_from(SPECIAL)))


def exact(got: F, want: F) -> None:
    """Equal element by element, NaN where numpy has NaN, in numpy's dtype and shape."""
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_array_equal(got, want)


EXPONENTS = st.one_of(
    st.sampled_from([2, 2.0, 0.5, -1, -1.0, 0, 1, 3, -2, 2.5, -0.5, 1e-3, 40, np.int64(3), np.float32(0.5)]),
    st.floats(-6.0, 6.0), st.integers(-5, 5),
)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), k=EXPONENTS)
def test_abs_and_a_power_of_a_number_are_numpys(dtype: np.dtype[Any], data: st.DataObject, k: Any) -> None:
    x = data.draw(values(dtype, shapes2()))
    m = lb.matrix(x)
    exact(lb.compute(abs(m)).array, np.abs(x))
    exact(lb.compute(abs(lb.delay(lb.vector(x.ravel())))).array, np.abs(x.ravel()))
    with np.errstate(all="ignore"):
        want = x ** dtype.type(k)  # numpy's power in the array's dtype (x ** np.int64(3) would be float64)
        got = lb.compute(m ** k).array
        back = lb.compute(dtype.type(k) ** m).array
        want_back = dtype.type(k) ** x
    if float(k) in (2.0, 0.5, -1.0, 0.0, 1.0):  # numpy's exact shortcuts (square, sqrt, reciprocal)
        exact(got, want)
    else:  # C's pow, as numpy's power loop calls it: within an ulp
        assert_matches_numpy(got, want, dtype, scale=np.abs(want) * 2)
    assert_matches_numpy(back, want_back, dtype, scale=np.abs(want_back) * 2)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_a_power_of_an_array_is_numpys_elementwise_and_nan_for_negative_bases(dtype: np.dtype[Any],
                                                                            data: st.DataObject) -> None:
    shape = data.draw(shapes2())
    x, y = data.draw(values(dtype, shape)), data.draw(arrays(dtype, shape, 8.0))
    with np.errstate(all="ignore"):
        got = lb.compute(lb.matrix(x) ** lb.delay(lb.matrix(y))).array
        want = x ** y
    assert_matches_numpy(got, want, dtype, scale=np.abs(want) * 2)
    fractional = (x < 0) & np.isfinite(x) & (y != np.round(y))
    assert np.isnan(got[fractional]).all()


def test_powers_two_half_and_minus_one_are_square_sqrt_and_recip_kernels() -> None:
    """``x ** 2`` is ``Fn.square`` (so the variance about a broadcast mean keeps its one-pass
    statistics), ``** 0.5`` ``Fn.sqrt``, ``** -1`` ``Fn.recip``: the same kernels."""
    x = lb.matrix(np.arange(12.0).reshape(4, 3))
    mu = lb.scale(0.25, lb.sum_rows(x))
    dt = np.dtype(np.float32)
    for power, fn in ((x - lb.rows_like(mu, x)) ** 2, Fn.square), (x ** 0.5, Fn.sqrt), (x ** -1, Fn.recip):
        base = x - lb.rows_like(mu, x) if fn is Fn.square else x
        want = lb.sum_rows(lb.amap(fn, base))
        got = lb.sum_rows(power)
        assert fuse.plan([got.node], dt, False).key == fuse.plan([want.node], dt, False).key
    var = lb.sum_rows((x - lb.rows_like(mu, x)) ** 2)
    assert fuse.plan([var.node], dt, False).passes == 1


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), k=st.sampled_from([2.0, 0.5, -1.0, 2, -1, np.float32(0.5), 3.0, 1.5]))
def test_a_dynamic_exponent_gives_the_bits_of_a_number_exponent(dtype: np.dtype[Any], data: st.DataObject,
                                                                 k: Any) -> None:
    """``x ** k`` with k a dynamic argument of a @fused body (a kernel argument) is what the body
    gives with k a number: numpy's ``**``, whose 2, 0.5 and -1 are square, sqrt and reciprocal
    (sqrt(-0.0) is -0.0 and sqrt(-inf) NaN, where C's pow gives 0.0 and inf)."""
    x = data.draw(values(dtype, shapes2()))

    def body(m: lb.Matrix, p: Any) -> lb.Matrix:
        return lb.compute(m ** p)

    power = lb.fused(dynamic=("p",))(body)
    m = lb.matrix(x)
    with np.errstate(all="ignore"):
        want = x ** k
    got = [power(m, k).array, power(m, k).array, body(m, k).array]  # trace, replay, body
    for g in got:
        if float(k) in (2.0, 0.5, -1.0):
            exact(g, want.astype(dtype))
            assert (np.signbit(g) == np.signbit(want)).all()
        np.testing.assert_array_equal(np.signbit(g), np.signbit(got[2]))
        np.testing.assert_array_equal(g, got[2])


@pytest.mark.parametrize("bad", ["2", None, [2.0], True])
def test_a_power_that_is_not_a_number_or_an_array_is_an_argument_error(bad: object) -> None:
    m = lb.matrix([[1.0, 2.0]])
    with pytest.raises(lb.ArgumentError, match="pow"):
        m ** bad  # type: ignore[operator]


def test_a_power_of_arrays_of_other_ranks_or_shapes_is_refused() -> None:
    m, v = lb.matrix([[1.0, 2.0]]), lb.vector([1.0, 2.0])
    with pytest.raises(lb.RankError, match="pow"):
        m ** v  # type: ignore[operator]
    with pytest.raises(lb.ShapeError, match="pow"):
        m ** lb.matrix([[1.0], [2.0]])
    with pytest.raises(lb.DTypeError, match="pow"):
        m ** lb.matrix([[1.0, 2.0]], np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_matmul_operator_is_lb_matmul_and_numpys(dtype: np.dtype[Any], data: st.DataObject) -> None:
    n, k, p = data.draw(st.integers(1, 6)), data.draw(st.integers(0, 6)), data.draw(st.integers(1, 6))
    a, b = data.draw(arrays(dtype, (n, k), 100.0)), data.draw(arrays(dtype, (k, p), 100.0))
    ma, mb = lb.matrix(a), lb.matrix(b)
    got = ma @ mb
    assert got.shape == (n, p)
    exact(got.array, lb.matmul(ma, mb).array)
    assert_matches_numpy(got.array, a @ b, dtype, scale=np.abs(a) @ np.abs(b))
    exact((lb.transpose(mb) @ lb.transpose(ma)).array, lb.matmul(lb.transpose(mb), lb.transpose(ma)).array)


def test_matmul_operator_of_a_delayed_matrix_says_to_compute_it_first() -> None:
    m = lb.matrix([[1.0, 2.0], [3.0, 4.0]])
    for left, right in ((lb.delay(m), m), (m, m * 2.0), (m + 1.0, m - 1.0)):
        with pytest.raises(lb.ArgumentError, match="compute it first"):
            left @ right  # type: ignore[operator]
    with pytest.raises(lb.RankError):
        lb.vector([1.0, 2.0]) @ m  # type: ignore[misc]
    with pytest.raises(lb.ShapeError):
        m @ lb.matrix([[1.0, 2.0]])
    with pytest.raises(lb.ArgumentError):
        m @ np.ones((2, 2))  # type: ignore[operator]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", COMPS)
@pytest.mark.parametrize("name", ["maximum", "minimum"])
@given(data=st.data())
def test_maximum_and_minimum_are_numpys_with_nan_propagated(dtype: np.dtype[Any], comp: Comp, name: str,
                                                           data: st.DataObject) -> None:
    ours, theirs = getattr(lb, name), getattr(np, name)
    shape = data.draw(st.one_of(shapes2(), st.tuples(st.integers(0, 9))))
    x, y = data.draw(values(dtype, shape)), data.draw(values(dtype, shape))
    s = data.draw(st.one_of(elements(dtype), st.sampled_from(SPECIAL)))
    make = lb.matrix if len(shape) == 2 else lb.vector
    mx: Any = make(x, comp=comp)
    my: Any = make(y, comp=comp)
    with parallel_kernels():
        exact(lb.compute(ours(mx, my)).array, theirs(x, y))
        exact(lb.compute(ours(lb.delay(mx), my * 1.0)).array, theirs(x, y))
        exact(lb.compute(ours(mx, s)).array, theirs(x, dtype.type(s)))
        exact(lb.compute(ours(s, mx)).array, theirs(dtype.type(s), x))


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_and_minimum_refuse_what_arithmetic_refuses(name: str) -> None:
    f = getattr(lb, name)
    m, v = lb.matrix([[1.0, 2.0]]), lb.vector([1.0, 2.0])
    with pytest.raises(lb.RankError, match=name):
        f(m, v)
    with pytest.raises(lb.ShapeError, match=name):
        f(m, lb.matrix([[1.0], [2.0]]))
    with pytest.raises(lb.DTypeError, match=name):
        f(m, lb.matrix([[1.0, 2.0]], np.float64))
    for bad in ((1.0, 2.0), (m, "1"), (np.ones((1, 2)), m), (m, True)):
        with pytest.raises(lb.ArgumentError, match=name):
            f(*bad)


REDUCTIONS = [("max_rows", lambda x: x.max(axis=0)), ("min_rows", lambda x: x.min(axis=0)),
              ("max_cols", lambda x: x.max(axis=1)), ("min_cols", lambda x: x.min(axis=1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", COMPS)
@pytest.mark.parametrize("name,oracle", REDUCTIONS)
@given(data=st.data())
def test_row_and_column_extremes_are_numpys_with_nan_propagated(dtype: np.dtype[Any], comp: Comp, name: str,
                                                                oracle: Any, data: st.DataObject) -> None:
    """Par kernels split the rows into chunks (some empty when there are fewer rows than threads)
    whose extremes are merged in order: still numpy's values."""
    x = data.draw(values(dtype, shapes2(1, 12)))
    m = lb.matrix(x, comp=comp)
    with parallel_kernels():
        got = lb.compute(getattr(lb, name)(m)).array
        fused_with_more = lb.compute_all(getattr(lb, name)(m * 1.0), lb.sum_rows(m), lb.max_cols(m))[0].array
    exact(got, oracle(x))
    exact(fused_with_more, oracle(x))


@pytest.mark.parametrize("name", ["max_rows", "min_rows", "min_cols"])
def test_extremes_refuse_a_vector_an_empty_dimension_and_what_is_not_an_array(name: str) -> None:
    f = getattr(lb, name)
    with pytest.raises(lb.RankError, match=name):
        f(lb.vector([1.0, 2.0]))
    with pytest.raises(lb.ArgumentError, match=name):
        f(np.ones((2, 2)))
    over_rows = name.endswith("rows")
    empty = lb.matrix(np.zeros((0, 3) if over_rows else (3, 0)))
    with pytest.raises(lb.ShapeError, match=f"zero {'rows' if over_rows else 'columns'}"):
        f(empty)
    other = lb.matrix(np.zeros((3, 0) if over_rows else (0, 3)))  # nothing to reduce over is an empty vector
    assert lb.compute(f(other)).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", COMPS)
@given(data=st.data())
def test_a_sum_of_squared_deviations_from_a_column_extreme_is_numpys_with_infinities(
        dtype: np.dtype[Any], comp: Comp, data: st.DataObject) -> None:
    """sum_rows((x - rows_like(max_rows(x), x)) ** 2) is never taken from x's mean and M2: where
    a column holds -inf and a finite maximum, the sum is inf (those statistics would be NaN)."""
    x = data.draw(values(dtype, shapes2(1, 12)))
    m = lb.matrix(x, comp=comp)
    with parallel_kernels():
        got = [lb.compute(lb.sum_rows((m - lb.rows_like(f(m), m)) ** 2)).array for f in (lb.max_rows, lb.min_rows)]
    for g, w in zip(got, (x.max(axis=0), x.min(axis=0))):
        with np.errstate(all="ignore"):
            want = ((x.astype(np.float64) - w) ** 2).sum(axis=0).astype(dtype)
        assert_matches_numpy(g, want, dtype)


def _erf(x: F) -> F:
    """erf in float64 (Python's ``math.erf``), rounded to x's dtype."""
    return np.array([math.erf(v) for v in x.astype(np.float64).ravel()]).reshape(x.shape).astype(x.dtype)


def within_ulps(got: F, want: F, n: int) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    with np.errstate(all="ignore"):
        bad = ~((got == want) | (np.isnan(got) & np.isnan(want))
                | (np.abs(got - want) <= n * np.spacing(np.abs(want))))
    assert not bad.any(), f"{got[bad][:3]} != {want[bad][:3]}"


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_erf_is_within_two_ulps_of_the_exact_value(dtype: np.dtype[Any], data: st.DataObject) -> None:
    x = data.draw(values(dtype, shapes2()))
    within_ulps(lb.compute(lb.amap(Fn.erf, lb.matrix(x))).array, _erf(x), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_gelu_written_with_erf_is_torchs_gelu(dtype: np.dtype[Any], data: st.DataObject) -> None:
    x = data.draw(arrays(dtype, shapes2(1, 9), 20.0))
    m = lb.matrix(x)
    got = lb.compute(m * lb.add_c(lb.amap(Fn.erf, m * (1 / math.sqrt(2.0))), 1.0) * 0.5).array
    want = torch.nn.functional.gelu(torch.from_numpy(x.astype(np.float64))).numpy().astype(dtype)
    # 1 + erf(x / sqrt 2) cancels for negative x: the error is relative to |x|, not to the result
    assert_matches_numpy(got, want, dtype, scale=np.abs(x) + np.abs(want))


def layer(x: lb.Matrix, w: lb.Matrix, slope: float, lo: float,
          hi: float) -> tuple[lb.Matrix, lb.Vector, lb.Vector, lb.Vector]:
    """A custom layer with every new operation: standardised weights (``**``, ``@``), RMSNorm,
    leaky ReLU (``maximum``), GELU (``Fn.erf``), clipping, column ranges and row extremes."""
    c = lb.rows(w)
    wm = lb.scale(1.0 / c, lb.sum_rows(w))
    wc = w - lb.rows_like(wm, w)
    ws = lb.compute(wc * lb.rows_like(lb.add_c(lb.scale(1.0 / c, lb.sum_rows(wc ** 2)), 1e-5) ** -0.5, w))
    h = x @ ws
    n = lb.cols(h)
    rms = h * lb.cols_like(lb.add_c(lb.scale(1.0 / n, lb.sum_cols(h ** 2)), 1e-6) ** -0.5, h)
    leaky = lb.maximum(rms, rms * slope)
    gelu = leaky * lb.add_c(lb.amap(Fn.erf, leaky * (1 / math.sqrt(2.0))), 1.0) * 0.5
    clipped = lb.minimum(lb.maximum(gelu, lo), hi)
    span = lb.max_rows(abs(clipped)) - lb.min_rows(clipped)
    return lb.compute_all(clipped, span, lb.min_cols(clipped), lb.max_cols(clipped))


def layer_numpy(x: F, w: F, slope: float, lo: float, hi: float) -> tuple[F, ...]:
    wc = w - w.mean(0)
    ws = wc / np.sqrt((wc ** 2).mean(0) + 1e-5)
    h = x @ ws
    rms = h / np.sqrt((h ** 2).mean(1, keepdims=True) + 1e-6)
    leaky = np.maximum(rms, rms * slope)
    gelu = torch.nn.functional.gelu(torch.from_numpy(leaky)).numpy()
    clipped = np.minimum(np.maximum(gelu, lo), hi)
    return clipped, np.abs(clipped).max(0) - clipped.min(0), clipped.min(1), clipped.max(1)


SMALL = hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)),
                   elements=st.integers(-8, 8).map(float))


@settings(max_examples=20, deadline=None)
@given(data=st.data(), slope=st.floats(0.0, 0.3), lo=st.floats(-1.0, 0.0), hi=st.floats(0.1, 3.0))
def test_a_custom_layer_fuses_replays_and_matches_numpy(data: st.DataObject, slope: float, lo: float,
                                                         hi: float) -> None:
    """One kernel for the weights, one for the rest; the fused function traces once and its
    replays give what the body gives, bit for bit, and numpy's values."""
    w0 = data.draw(SMALL)
    rows = data.draw(st.integers(1, 7))
    step = lb.fused(layer)
    before = fuse.stats()
    for k in range(3):
        w = lb.matrix(data.draw(hnp.arrays(np.float64, w0.shape, elements=st.integers(-8, 8).map(float))), np.float64)
        x = lb.matrix(data.draw(arrays(np.dtype(np.float64), (rows, w0.shape[0]), 10.0)), np.float64)
        launches = fuse.stats().launches
        body: tuple[lb.Manifest[Any], ...] = layer(x, w, slope, lo, hi)
        assert fuse.stats().launches == launches + 2
        got: tuple[lb.Manifest[Any], ...] = step(x, w, slope, lo, hi)
        for g, b in zip(got, body):
            assert g.shape == b.shape and g.array.tobytes() == b.array.tobytes()
        for g, want in zip(got, layer_numpy(x.array, w.array, slope, lo, hi)):
            assert np.allclose(g.array, want, rtol=1e-9, atol=1e-9), (g.array, want)
    after = fuse.stats()
    assert (after.traces - before.traces, after.replays - before.replays) == (1, 2)
