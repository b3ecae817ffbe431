"""Every array operation against a plain numpy oracle, over random shapes, dtypes and values."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lazybn as lb
from lazybn import Comp, Fn, fuse

from .helpers import DTYPES, F, arrays, assert_matches_numpy, elements, shapes2

COMPS = [Comp.Seq, Comp.Par]


@contextlib.contextmanager
def parallel_kernels() -> Iterator[None]:
    """Par arrays of any size run the parallel kernels (by default only from 4 MiB on: smaller
    ones, such as the ones these tests draw, are planned serial whatever their Comp)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fuse, "PAR_THRESHOLD_BYTES", 1)
        yield


BINOPS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("add", lambda a, b: a + b),
    ("sub", lambda a, b: a - b),
    ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", COMPS)
@pytest.mark.parametrize("name,op", BINOPS)
@given(data=st.data())
def test_binary_operators_match_numpy(dtype: np.dtype[Any], comp: Comp, name: str,
                                      op: Callable[[Any, Any], Any], data: st.DataObject) -> None:
    shape = data.draw(shapes2())
    a, b = data.draw(arrays(dtype, shape)), data.draw(arrays(dtype, shape))
    s = data.draw(elements(dtype).filter(lambda v: v != 0))
    if name == "div":
        b = np.where(b == 0, dtype.type(1), b)
    ma, mb = lb.matrix(a, comp=comp), lb.matrix(b, comp=comp)
    with np.errstate(all="ignore"):
        assert_matches_numpy(lb.compute(op(ma, mb)).array, op(a, b), dtype)
        assert_matches_numpy(lb.compute(op(ma, float(s))).array, op(a, dtype.type(s)), dtype)
        assert_matches_numpy(lb.compute(op(float(s), lb.delay(mb))).array, op(dtype.type(s), b), dtype)
    assert_matches_numpy(lb.compute(-ma).array, -a, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_parallel_kernels_match_numpy(dtype: np.dtype[Any], data: st.DataObject) -> None:
    """The parallel kernel (rows split into one chunk per thread, each chunk's column sums kept
    apart and added in chunk order) gives numpy's elementwise results, float64 column sums, row
    sums and row maxima, whatever the row count: fewer rows than threads, one row, uneven chunks."""
    r, c = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 9))
    a, b = data.draw(arrays(dtype, (r, c))), data.draw(arrays(dtype, (r, c)))
    b = np.where(b == 0, dtype.type(1), b)
    ma, mb = lb.matrix(a, comp=Comp.Par), lb.matrix(b, comp=Comp.Par)
    with parallel_kernels(), np.errstate(all="ignore"):
        exprs = (ma + mb, ma - mb, ma * mb, ma / mb, lb.sum_rows(ma), lb.sum_cols(ma), lb.max_cols(ma))
        assert fuse.plan([e.node for e in exprs], dtype, True).par
        got = lb.compute_all(*exprs)
        for out, want in zip(got[:4], (a + b, a - b, a * b, a / b)):
            assert_matches_numpy(out.array, want, dtype)
    x64 = a.astype(np.float64)
    assert_matches_numpy(got[4].array, x64.sum(0).astype(dtype), dtype, scale=np.abs(x64).sum(0))
    assert_matches_numpy(got[5].array, x64.sum(1).astype(dtype), dtype, scale=np.abs(x64).sum(1))
    np.testing.assert_array_equal(got[6].array, a.max(axis=1))


def _fn_oracle(f: Fn, x: F) -> F:
    one = x.dtype.type(1)
    with np.errstate(all="ignore"):
        table: dict[Fn, Callable[[F], F]] = {
            Fn.exp: np.exp, Fn.log: np.log, Fn.sqrt: np.sqrt, Fn.recip: lambda v: one / v,
            Fn.negate: np.negative, Fn.square: np.square, Fn.abs: np.abs,
            Fn.relu: lambda v: np.maximum(v, 0), Fn.drelu: lambda v: (v > 0).astype(v.dtype),
            Fn.sigmoid: lambda v: one / (one + np.exp(-v)),
            Fn.dsigmoid: lambda v: (one / (one + np.exp(-v))) * (one - one / (one + np.exp(-v))),
            Fn.tanh: np.tanh, Fn.dtanh: lambda v: one - np.tanh(v) ** 2,
            Fn.flush_subnormal: lambda v: np.where(np.abs(v) < np.finfo(v.dtype).tiny, v * 0, v),
            Fn.erf: lambda v: np.vectorize(math.erf, otypes=[np.float64])(v).astype(v.dtype),
        }
        return table[f](x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("f", list(Fn))
@given(data=st.data())
def test_amap_matches_numpy(dtype: np.dtype[Any], f: Fn, data: st.DataObject) -> None:
    big = 80.0 if f in (Fn.exp, Fn.sigmoid, Fn.dsigmoid) else 1e6
    x = data.draw(arrays(dtype, data.draw(shapes2()), big))
    if f in (Fn.log, Fn.sqrt):
        x = np.abs(x) + dtype.type(1e-3)
    if f is Fn.recip:
        x = np.where(x == 0, dtype.type(1), x)
    got = lb.compute(lb.amap(f, lb.matrix(x))).array
    want = _fn_oracle(f, x)
    # transcendental functions may differ from numpy's by a few ulps
    ulps = 1.0 if f in (Fn.negate, Fn.abs, Fn.relu, Fn.drelu, Fn.square, Fn.recip, Fn.flush_subnormal) else 8.0
    # bounded functions (|f| <= 1) are compared with an absolute error relative to 1
    bounded = f in (Fn.sigmoid, Fn.dsigmoid, Fn.tanh, Fn.dtanh)
    scale = np.abs(want) * ulps + (1.0 if bounded else 0.0)
    assert_matches_numpy(got, want, dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", COMPS)
@given(data=st.data())
def test_reductions_match_numpy_float64(dtype: np.dtype[Any], comp: Comp, data: st.DataObject) -> None:
    x = data.draw(arrays(dtype, data.draw(shapes2())))
    m = lb.matrix(x, comp=comp)
    x64 = x.astype(np.float64)
    absx = np.abs(x64)
    assert_matches_numpy(lb.compute(lb.sum_rows(m)).array, x64.sum(0).astype(dtype), dtype, scale=absx.sum(0))
    assert_matches_numpy(lb.compute(lb.sum_cols(m)).array, x64.sum(1).astype(dtype), dtype, scale=absx.sum(1))
    if x.shape[1] > 0:
        np.testing.assert_array_equal(lb.compute(lb.max_cols(m)).array, x.max(axis=1))



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", COMPS)
@given(data=st.data())
def test_max_cols_of_a_row_holding_nan_is_nan(dtype: np.dtype[Any], comp: Comp, data: st.DataObject) -> None:
    """As numpy's max: a NaN anywhere in a row (first, last, between larger values) makes its maximum NaN."""
    r, c = data.draw(shapes2(1, 9))
    x = data.draw(arrays(dtype, (r, c)))
    for i, j in data.draw(st.lists(st.tuples(st.integers(0, r - 1), st.integers(0, c - 1)), min_size=1, max_size=3)):
        x[i, j] = np.nan
    got = lb.compute(lb.max_cols(lb.matrix(x, comp=comp))).array
    np.testing.assert_array_equal(got, x.max(axis=1))  # NaN in exactly the rows that hold one


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", COMPS)
def test_max_cols_of_rows_at_the_bottom_of_the_range_is_numpys(dtype: np.dtype[Any], comp: Comp) -> None:
    """The maximum starts from -inf, below every number: a row of -inf, or of the most negative
    finite numbers, has that maximum."""
    lo = np.finfo(dtype).min
    x = np.array([[-np.inf, -np.inf, -np.inf], [lo, -np.inf, lo], [lo, lo / 2, -np.inf]], dtype)
    with parallel_kernels():
        got = lb.compute(lb.max_cols(lb.matrix(x, comp=comp))).array
    np.testing.assert_array_equal(got, x.max(axis=1))


@pytest.mark.parametrize("comp", COMPS)
@settings(max_examples=10, deadline=None)
@given(c=st.integers(2000, 40000), sample=st.integers(0, 2**16))
def test_sum_cols_of_long_float32_rows_is_the_float64_sum_rounded_once(comp: Comp, c: int, sample: int) -> None:
    """Row sums accumulate float32 data in float64 (as column sums do): the result is within one
    float32 ulp of the exact sum, where a float32 running sum drifts by many ulps over a long row."""
    x = (np.random.default_rng(sample).random((3, c)) * 3 + 1e3).astype(np.float32)
    with parallel_kernels():
        got = lb.compute(lb.sum_cols(lb.matrix(x, comp=comp))).array
    want = x.astype(np.longdouble).sum(axis=1)
    ulp = np.spacing(want.astype(np.float32)).astype(np.longdouble)
    assert got.dtype == np.float32
    assert (np.abs(got.astype(np.longdouble) - want) <= ulp).all(), (got, want)

@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_broadcasts_match_numpy(dtype: np.dtype[Any], data: st.DataObject) -> None:
    r, c = data.draw(shapes2())
    m = data.draw(arrays(dtype, (r, c)))
    v_row, v_col = data.draw(arrays(dtype, (c,))), data.draw(arrays(dtype, (r,)))
    mm = lb.matrix(m)
    np.testing.assert_array_equal(lb.compute(lb.br(r, lb.vector(v_row))).array, np.tile(v_row, (r, 1)))
    np.testing.assert_array_equal(lb.compute(lb.rows_like(lb.vector(v_row), mm)).array,
                                  np.broadcast_to(v_row[None, :], (r, c)))
    np.testing.assert_array_equal(lb.compute(lb.cols_like(lb.vector(v_col), mm)).array,
                                  np.broadcast_to(v_col[:, None], (r, c)))
    got = lb.compute(mm - lb.rows_like(lb.vector(v_row), mm) * lb.cols_like(lb.vector(v_col), mm)).array
    assert_matches_numpy(got, m - v_row[None, :] * v_col[:, None], dtype,
                         scale=np.abs(m) + np.abs(v_row[None, :] * v_col[:, None]))


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_scale_and_add_c_match_numpy(dtype: np.dtype[Any], data: st.DataObject) -> None:
    x = data.draw(arrays(dtype, (data.draw(st.integers(0, 20)),)))
    s = data.draw(elements(dtype))
    v = lb.vector(x)
    assert_matches_numpy(lb.compute(lb.scale(s, v)).array, dtype.type(s) * x, dtype)
    assert_matches_numpy(lb.compute(lb.add_c(v, s)).array, x + dtype.type(s), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_matmul_and_transpose_match_numpy(dtype: np.dtype[Any], data: st.DataObject) -> None:
    n, k = data.draw(shapes2(1, 8))
    p = data.draw(st.integers(1, 8))
    a, b = data.draw(arrays(dtype, (n, k), 100.0)), data.draw(arrays(dtype, (n, p), 100.0))
    ma, mb = lb.matrix(a), lb.matrix(b)
    at = lb.transpose(ma)
    assert np.shares_memory(at.array, ma.array)
    got = lb.matmul(at, mb).array
    assert_matches_numpy(got, (a.astype(np.float64).T @ b.astype(np.float64)).astype(dtype), dtype,
                         scale=np.abs(a.astype(np.float64)).T @ np.abs(b.astype(np.float64)) * 4)
    # a transposed (strided) leaf inside a fused kernel reads the right elements
    np.testing.assert_array_equal(lb.compute(lb.delay(at) * 1.0).array, a.T)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_algebraic_identities(dtype: np.dtype[Any], data: st.DataObject) -> None:
    r, c = data.draw(shapes2(0, 9))
    v = lb.vector(data.draw(arrays(dtype, (c,), 1e3)))
    m = lb.matrix(data.draw(arrays(dtype, (r, c))))
    # broadcast then sum equals scale by the count
    np.testing.assert_allclose(lb.compute(lb.sum_rows(lb.br(r, v))).array, lb.compute(lb.scale(r, v)).array,
                               rtol=RTOL_SUM[dtype])
    # compute(delay(m)) == m, bit for bit
    np.testing.assert_array_equal(lb.compute(lb.delay(m)).array, m.array)
    # x - rows_like(mean) has zero column sums (up to rounding of the values)
    if r > 0:
        centred = lb.compute(m - lb.rows_like(lb.scale(1.0 / r, lb.sum_rows(m)), m)).array.astype(np.float64)
        tol = RTOL_SUM[dtype] * 4 * (np.abs(m.array).astype(np.float64).sum(0) + 1e-30)
        assert (np.abs(centred.sum(0)) <= tol).all()


RTOL_SUM = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}


# Values whose reciprocals, products, squares or exponentials leave the dtype's range (zeros,
# subnormals, values near the largest finite one), the infinities, and ordinary values.
BEYOND_RANGE = [0.0, -0.0, 1e-45, -1e-45, 1e-40, 5e-324, -5e-324, 1e-310, 3e38, -3e38, 1e300, -1e300, 1e308,
                -1.7e308, 100.0, -100.0, 800.0, -800.0, 2.0, -0.5, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_results_beyond_the_range_are_numpys_infinities(dtype: np.dtype[Any], data: st.DataObject) -> None:
    """Where numpy's result overflows (1/0, 1/subnormal, huge * huge, exp(800)) or is infinite
    (-inf, exp(inf)) lazybn's is the same infinity, sign included; where numpy's is finite,
    lazybn's is too."""
    width: Literal[32, 64] = 32 if dtype == np.float32 else 64
    special = st.sampled_from([float(dtype.type(v)) for v in BEYOND_RANGE
                               if abs(v) <= float(np.finfo(dtype).max) or np.isinf(v)])
    values = st.one_of(special, special, st.floats(width=width, allow_nan=False, allow_infinity=False))
    shape = data.draw(shapes2(1, 6))
    a = np.array(data.draw(st.lists(values, min_size=shape[0] * shape[1], max_size=shape[0] * shape[1])),
                 dtype).reshape(shape)
    b = np.array(data.draw(st.lists(values, min_size=a.size, max_size=a.size)), dtype).reshape(shape)
    ma, mb = lb.matrix(a), lb.matrix(b)
    one = dtype.type(1)
    with np.errstate(all="ignore"):
        cases: list[tuple[str, lb.Delayed[lb.Ix2], F, F | None]] = [
            ("negate", lb.amap(Fn.negate, ma), -a, None),
            ("minus", -ma, -a, None),
            ("recip", lb.amap(Fn.recip, ma), one / a, None),
            ("div", ma / mb, a / b, None),
            ("mul", ma * mb, a * b, None),
            ("square", lb.amap(Fn.square, ma), a * a, None),
            ("exp", lb.amap(Fn.exp, ma), np.exp(a), np.abs(np.exp(a)) * 8),  # libm vs numpy: a few ulps
        ]
        for name, expr, want, scale in cases:
            got = lb.compute(expr).array
            assert_matches_numpy(got, want, dtype, scale=scale)
            np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=name)
        if dtype == np.float32:  # float64 column sums beyond float32's range round to its infinity
            want_sums = a.astype(np.float64).sum(axis=0).astype(np.float32)
            got_sums = lb.compute(lb.sum_rows(ma)).array
            assert_matches_numpy(got_sums, want_sums, dtype, scale=np.abs(a.astype(np.float64)).sum(axis=0))
            np.testing.assert_array_equal(np.isinf(got_sums), np.isinf(want_sums))


def test_sum_rows_of_a_million_float32_values_is_accurate() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((1_000_000, 1)) * 3 + 1e3).astype(np.float32)
    got = float(lb.compute(lb.sum_rows(lb.matrix(x))).array[0])
    want = float(x.astype(np.float64).sum())
    assert abs(got - want) / want < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_tanh_is_within_two_ulp_of_the_exact_value(dtype: np.dtype[Any], data: st.DataObject) -> None:
    """The kernels' tanh (a rational function below ln(3)/2, one exp above) against long double,
    across magnitudes from subnormal to overflowing exp, with zeros, infinities and NaN."""
    width: Literal[32, 64] = 32 if dtype == np.float32 else 64
    values = data.draw(st.lists(st.one_of(st.floats(-25.0, 25.0, width=width), st.floats(width=width)),
                                min_size=1, max_size=64))
    values += [0.0, -0.0, 0.5493061443340548, -0.5493061443340548, np.inf, -np.inf, np.nan, 1e-40, 20.0]
    x = np.array(values, dtype=dtype)
    got = lb.compute(lb.amap(Fn.tanh, lb.vector(x))).array
    exact = np.tanh(x.astype(np.longdouble))
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    assert (np.signbit(got[~nan]) == np.signbit(x[~nan])).all()  # the sign of zero included
    ulp = np.spacing(np.abs(exact[~nan]).astype(dtype)).astype(np.longdouble)
    err = np.abs(got[~nan].astype(np.longdouble) - exact[~nan]) / ulp
    assert err.max() <= 2.0, f"{err.max():.2f} ulp at x = {x[~nan][np.argmax(err)]!r}"


@given(kind=st.sampled_from(["int8", "int64", "uint8", "uint64", "bool"]), data=st.data())
def test_integer_data_becomes_float32_with_the_same_values(kind: str, data: st.DataObject) -> None:
    info = np.iinfo(kind) if kind != "bool" else None
    lo, hi = (int(info.min), int(info.max)) if info is not None else (0, 1)
    n, m = data.draw(st.integers(0, 6)), data.draw(st.integers(0, 6))
    xs = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=n * m, max_size=n * m)), dtype=kind).reshape(n, m)
    got = lb.matrix(xs)
    assert got.dtype == np.float32 and got.shape == xs.shape
    np.testing.assert_array_equal(got.array, xs.astype(np.float32))  # numpy's rounding of each value
    assert lb.vector(xs.reshape(-1)).dtype == np.float32


@given(n=st.integers(0, 5), m=st.integers(0, 5), value=st.floats(-1e6, 1e6), kind=st.sampled_from([int, np.int64]))
def test_replicate_zeros_and_ones_take_python_or_numpy_integers(n: int, m: int, value: float, kind: type) -> None:
    shape = (kind(n), kind(m))
    np.testing.assert_array_equal(lb.replicate(shape, value, np.float64).array, np.full((n, m), value))
    np.testing.assert_array_equal(lb.zeros(kind(n)).array, np.zeros(n, np.float32))
    assert lb.ones(shape).array.shape == (n, m) and lb.ones(shape).dtype == np.float32


@pytest.mark.parametrize("value", [None, "1.5", True, np.bool_(False), [1.0, 2.0], np.ones(2)])
def test_replicate_refuses_a_value_that_is_not_a_number(value: object) -> None:
    """None filled the array with NaN, a string was parsed and a list broadcast into the array."""
    with pytest.raises(lb.ArgumentError, match="replicate: value must be a number"):
        lb.replicate(2, value)  # type: ignore[call-overload]
    assert np.array_equal(lb.replicate(2, 2.5).array, np.full(2, 2.5, np.float32))


@given(value=st.integers(-1000, 1000), kind=st.sampled_from([int, float, np.int32, np.int64, np.float32, np.float64]))
def test_every_numeric_scalar_kind_is_a_number(value: int, kind: type) -> None:
    m = lb.matrix(np.arange(6.0).reshape(2, 3))
    s = kind(value)
    want = np.arange(6.0).reshape(2, 3) * float(value)
    np.testing.assert_array_equal(lb.compute(lb.scale(s, m)).array, want)
    np.testing.assert_array_equal(lb.compute(m * s).array, want)
    np.testing.assert_array_equal(lb.compute(lb.add_c(m, s)).array, np.arange(6.0).reshape(2, 3) + float(value))


@pytest.mark.parametrize("flag", [True, np.bool_(True)])
def test_a_bool_is_not_a_number(flag: object) -> None:
    with pytest.raises(lb.ArgumentError, match="expected a number"):
        lb.scale(flag, lb.vector([1.0]))  # type: ignore[arg-type]


@given(value=st.floats(-1e3, 1e3), kind=st.sampled_from([np.float64, np.float32, np.int64]))
def test_a_numpy_scalar_on_the_left_gives_a_delayed_array(value: float, kind: type) -> None:
    """numpy defers to lazybn's operators, so the result is the same as with a Python float."""
    x = np.linspace(-2.0, 3.0, 6).reshape(2, 3)
    m = lb.matrix(x)
    s = kind(value)
    for got, want in ((s * m, float(s) * x), (s + m, float(s) + x), (s - m, float(s) - x)):
        assert isinstance(got, lb.Delayed)
        np.testing.assert_array_equal(lb.compute(got).array, want)


def test_numpy_arrays_do_not_mix_with_lazybn_arrays() -> None:
    m = lb.matrix(np.ones((2, 3)))
    with pytest.raises(lb.ArgumentError, match="ndarray"):
        np.ones((2, 3)) * m  # type: ignore[operator]  # mypy rejects it too
    with pytest.raises(TypeError):
        np.exp(m)  # type: ignore[call-overload]


@given(shape=shapes2(0, 6), dtype=st.sampled_from(DTYPES), data=st.data())
def test_reshape_is_numpys_row_major_reshape_as_a_view(shape: tuple[int, int], dtype: np.dtype[Any],
                                                       data: st.DataObject) -> None:
    a = data.draw(arrays(dtype, shape))
    m = lb.matrix(a, dtype, comp=Comp.Par)
    v = lb.reshape(m, a.size)
    assert v.shape == (a.size,) and v.comp is Comp.Par and v.dtype == dtype
    np.testing.assert_array_equal(v.array, a.reshape(-1))
    assert np.shares_memory(v.array, m.array) or a.size == 0  # a view, no copy
    rows = data.draw(st.sampled_from([r for r in range(1, a.size + 1) if a.size % r == 0] or [0]))
    back = lb.reshape(v, (rows, a.size // rows if rows else 0))
    np.testing.assert_array_equal(back.array, a.reshape(back.shape))
    assert not back.array.flags.writeable


def test_reshape_errors() -> None:
    m = lb.matrix(np.arange(6.0).reshape(2, 3))
    with pytest.raises(lb.ShapeError, match="6 elements"):
        lb.reshape(m, (4, 2))
    with pytest.raises(lb.ValueRangeError, match="non-negative integers"):
        lb.reshape(m, (2, -3))
    with pytest.raises(lb.ArgumentError, match="strided view"):
        lb.reshape(lb.transpose(m), 6)
    with pytest.raises(lb.ArgumentError, match="compute it first"):
        lb.reshape(m + m, 6)  # type: ignore[call-overload]


def test_reshape_takes_numpy_integer_sizes_but_not_booleans() -> None:
    """A size computed by numpy (``np.prod(shape)``, ``arr.size // k``) is a shape, as it is for
    ``br`` and ``replicate``; True is not."""
    m = lb.matrix(np.arange(6.0).reshape(2, 3))
    v = lb.reshape(m, np.prod(m.shape))  # type: ignore[call-overload]
    assert v.shape == (6,) and type(v.shape[0]) is int
    back = lb.reshape(v, (np.int32(3), 2))  # type: ignore[arg-type]
    assert back.shape == (3, 2) and all(type(n) is int for n in back.shape)
    np.testing.assert_array_equal(back.array, np.arange(6.0).reshape(3, 2))
    for bad in (True, (2, True), (np.int64(2), -3), np.bool_(True)):
        with pytest.raises(lb.ValueRangeError, match="non-negative integers"):
            lb.reshape(m, bad)  # type: ignore[arg-type]


def _read_only_view(a: F) -> F:
    v = a[:]
    v.setflags(write=False)
    return v


@pytest.mark.parametrize("make", [lambda a: lb.matrix(a), lambda a: lb.Manifest(a), lambda a: lb.matrix(a.tolist()),
                                  lambda a: lb.matrix(np.asfortranarray(a)), lambda a: lb.matrix(a[::-1][::-1]),
                                  lambda a: lb.Manifest(_read_only_view(a)),
                                  lambda a: lb.Manifest(_read_only_view(_read_only_view(a))),
                                  lambda a: lb.Manifest(np.lib.stride_tricks.as_strided(a, writeable=False)),
                                  lambda a: lb.Manifest(np.lib.stride_tricks.sliding_window_view(a, 1, axis=1)[:, :, 0])])
def test_constructors_own_their_data(make: Callable[[F], lb.Matrix]) -> None:
    """Item 25: an array made from numpy data is a read-only copy: changing the source later, or
    trying to write through the array, changes nothing the engine reads. A read-only strided view
    (``as_strided``, ``sliding_window_view``) reaches its writable source through a helper object,
    not an array: it is copied too."""
    src: F = np.arange(6.0).reshape(2, 3)
    m = make(src)
    src[:] = -1.0
    np.testing.assert_array_equal(m.array, np.arange(6.0).reshape(2, 3))
    assert not m.array.flags.writeable
    with pytest.raises(ValueError):
        m.array[0, 0] = 5.0
    np.testing.assert_array_equal(lb.compute(m * 2.0).array, np.arange(6.0).reshape(2, 3) * 2)


def test_a_read_only_array_over_a_writable_buffer_is_copied() -> None:
    """``np.frombuffer`` of a ``bytearray``, made read-only: the bytearray can still change, so the
    array is copied; over ``bytes``, which cannot, it is wrapped as it is."""
    buf = bytearray(np.arange(6.0).tobytes())
    flat = np.frombuffer(buf, dtype=np.float64)
    flat.setflags(write=False)
    for a in (flat, flat.reshape(2, 3)[:, 1:]):
        want = a.copy()
        m = lb.Manifest(a)
        buf[:] = np.full(6, -7.0).tobytes()
        np.testing.assert_array_equal(m.array, want)
        buf[:] = np.arange(6.0).tobytes()
    fixed = np.frombuffer(np.arange(6.0).tobytes(), dtype=np.float64)
    assert not fixed.flags.writeable and np.shares_memory(lb.Manifest(fixed).array, fixed)


def test_read_only_data_no_one_can_change_is_wrapped_without_a_copy(tmp_path: Path) -> None:
    """A read-only memory map (and a read-only view of one, or of a lazybn array) is nothing
    anyone can write through: wrapping it copies nothing."""
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(2, 3))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    for a in (mapped, mapped[1:], lb.to_numpy(lb.matrix(np.ones((2, 2))))):
        assert np.shares_memory(lb.Manifest(a).array, a)


@given(shape=st.one_of(st.tuples(st.integers(0, 5)), shapes2(0, 5)), delayed=st.booleans())
def test_is_vector_and_is_matrix_tell_the_rank_of_manifest_and_delayed_arrays(shape: tuple[int, ...],
                                                                               delayed: bool) -> None:
    data = np.zeros(shape)
    m: Any = lb.vector(data) if data.ndim == 1 else lb.matrix(data)  # either rank, checked at run time
    a: Any = lb.delay(m) if delayed else m
    assert lb.is_vector(a) is (data.ndim == 1) and lb.is_matrix(a) is (data.ndim == 2)


@pytest.mark.parametrize("not_an_array", [np.zeros(3), [1.0, 2.0], 2.0, None])
def test_is_vector_and_is_matrix_refuse_what_is_not_a_lazybn_array(not_an_array: object) -> None:
    for check in (lb.is_vector, lb.is_matrix):
        with pytest.raises(lb.ArgumentError, match="expected a lazybn Manifest or Delayed array"):
            check(not_an_array)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", [Comp.Seq, Comp.Par])
@given(data=st.data())
def test_flush_subnormal_zeroes_exactly_the_subnormals_keeping_their_sign(dtype: np.dtype[Any], comp: Comp,
                                                                         data: st.DataObject) -> None:
    tiny = float(np.finfo(dtype).tiny)
    near = st.floats(-4 * tiny, 4 * tiny, width=32 if dtype == np.float32 else 64)  # subnormals, zeros, normals
    values = near | st.sampled_from([np.nan, np.inf, -np.inf, 1.0, -tiny, tiny]) | elements(dtype, 1e6)
    x = data.draw(hnp.arrays(dtype, data.draw(shapes2(1, 6)), elements=values))
    got = lb.compute(lb.amap(Fn.flush_subnormal, lb.matrix(x, comp=comp))).array
    sub = np.abs(x) < tiny
    want = np.where(sub, np.copysign(np.zeros_like(x), x), x)  # the oracle by another route than x * 0
    assert got.tobytes() == want.tobytes(), f"x {x}: got {got}, want {want}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_of_one_array_are_distinct_leaves_of_a_kernel(dtype: np.dtype[Any]) -> None:
    """A kernel reads each leaf array through its own argument, even where two leaves are views
    of one memory (a matrix and its transpose, a matrix and a reshape of it): x + x.T is not 2x."""
    a: F = np.arange(9.0, dtype=dtype).reshape(3, 3)
    x = lb.matrix(a)
    xt = lb.transpose(x)
    flat = lb.reshape(x, 9)
    back = lb.reshape(flat, (3, 3))
    got = lb.compute_all(x + xt, xt - x, x * back, lb.delay(xt) * 1.0)
    for g, want in zip(got, (a + a.T, a.T - a, a * a, a.T)):
        np.testing.assert_array_equal(g.array, want)
    np.testing.assert_array_equal(lb.compute(lb.rows_like(flat, lb.matrix(np.zeros((2, 9), dtype)))).array,
                                  np.broadcast_to(a.reshape(-1), (2, 9)))


@pytest.mark.parametrize("ca", COMPS)
@pytest.mark.parametrize("cb", COMPS)
def test_par_wins_where_arrays_of_both_strategies_meet(ca: Comp, cb: Comp) -> None:
    """As massiv's joinComp: an operation on a Par array and a Seq one is Par, and so is every
    output of a compute_all that reads a Par array; one-array operations keep its strategy."""
    want = Comp.Par if Comp.Par in (ca, cb) else Comp.Seq
    m, n = lb.matrix(np.ones((2, 3)), comp=ca), lb.matrix(np.full((2, 3), 2.0), comp=cb)
    v, u = lb.vector(np.ones(3), comp=cb), lb.vector(np.ones(2), comp=cb)
    for e in (m + n, m - n, m * n, m / n, lb.rows_like(v, m), lb.cols_like(u, m), lb.matmul(m, lb.transpose(n))):
        assert e.comp is want
    for one in (lb.scale(2.0, m), lb.add_c(m, 1.0), lb.amap(Fn.exp, m), lb.sum_rows(m), lb.max_cols(m), -m,
                lb.br(4, lb.vector(np.ones(3), comp=ca))):
        assert one.comp is ca
    got = lb.compute_all(m * 1.0, n * 1.0)
    assert [g.comp for g in got] == [want, want] and lb.compute(m + n).comp is want
    np.testing.assert_array_equal(got[1].array, np.full((2, 3), 2.0))


def test_compute_all_of_outputs_of_two_dtypes_is_a_dtype_error_naming_both() -> None:
    """One kernel computes in one dtype: outputs of float32 and float64 arrays together are refused
    (never one of them computed, silently, in the other's dtype); each alone is numpy's value."""
    xa = np.array([[0.1, 1e-8], [3.0, 1.0 / 3.0]])
    a, b = lb.matrix(xa.astype(np.float32)), lb.matrix(xa)
    for pair in ((a * 3.0, b * 3.0), (b * 3.0, a * 3.0)):
        with pytest.raises(lb.DTypeError, match=r"compute_all.*float32.*float64"):
            lb.compute_all(*pair)
    got32, got64 = lb.compute_all(a * 3.0, a - a)[0], lb.compute_all(b * 3.0, b - b)[0]
    assert got32.dtype == np.float32 and got64.dtype == np.float64
    np.testing.assert_array_equal(got32.array, xa.astype(np.float32) * np.float32(3.0))
    np.testing.assert_array_equal(got64.array, xa * 3.0)


def test_matmul_of_two_dtypes_is_a_dtype_error_naming_both() -> None:
    """matmul never promotes: a float32 and a float64 matrix are refused whichever comes first;
    each dtype with itself is numpy's product in that dtype."""
    aa, ba = np.array([[0.1, 2.0], [3.0, 1.0 / 3.0]]), np.array([[1.0, -1.0, 0.5], [0.25, 1e-8, 7.0]])
    for a, b in ((lb.matrix(aa.astype(np.float32)), lb.matrix(ba)), (lb.matrix(aa), lb.matrix(ba.astype(np.float32)))):
        with pytest.raises(lb.DTypeError, match=r"matmul: dtypes float(32|64) and float(32|64) differ"):
            lb.matmul(a, b)
    for dt in (np.float32, np.float64):
        got = lb.matmul(lb.matrix(aa.astype(dt)), lb.matrix(ba.astype(dt)))
        assert got.dtype == np.dtype(dt)
        np.testing.assert_array_equal(got.array, np.matmul(aa.astype(dt), ba.astype(dt)))


@pytest.mark.parametrize("n_rows", [-1, 2.5, True, np.float64(2.0), "2"])
def test_br_refuses_a_row_count_that_is_not_a_non_negative_integer(n_rows: Any) -> None:
    v = lb.vector(np.array([1.0, -2.0, 0.5]))
    with pytest.raises(lb.ShapeError, match="br: .*number of rows must be a non-negative integer"):
        lb.br(n_rows, v)


@pytest.mark.parametrize("n_rows", [0, 1, 4, np.int64(3), np.uint8(2)])
def test_br_of_an_integer_row_count_is_numpys_broadcast(n_rows: int) -> None:
    va = np.array([1.0, -2.0, 0.5])
    got = lb.compute(lb.br(n_rows, lb.vector(va))).array
    np.testing.assert_array_equal(got, np.broadcast_to(va, (int(n_rows), 3)))


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex128, np.longdouble, "int64"])
def test_constructors_refuse_a_dtype_other_than_float32_or_float64_naming_it(dtype: Any) -> None:
    name = str(np.dtype(dtype))
    for what, make in (("vector", lambda: lb.vector([1.0, 2.0], dtype)), ("matrix", lambda: lb.matrix([[1.0]], dtype)),
                       ("replicate", lambda: lb.zeros(3, dtype)), ("replicate", lambda: lb.ones((2, 2), dtype))):
        with pytest.raises(lb.DTypeError, match=rf"{what}: dtype must be float32 or float64, not {name}"):
            make()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32", "float64"])
def test_constructors_take_float32_and_float64_dtypes(dtype: Any) -> None:
    xs = [[0.1, -2.0, 1.0 / 3.0]]
    for got, want in ((lb.matrix(xs, dtype), np.array(xs, dtype)), (lb.vector(xs[0], dtype), np.array(xs[0], dtype)),
                      (lb.ones((2, 3), dtype), np.ones((2, 3), dtype))):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.array, want)
