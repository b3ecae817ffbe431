"""Fusion and caching as behaviour: kernel launches, passes, temporaries, CSE, disk cache."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazybn as lb
from lazybn import Comp, Fn, fuse, trace
from lazybn.fuse import cache as kcache

from .helpers import F, run_python
from .test_ops import parallel_kernels


def _chain(x: lb.Matrix) -> lb.Delayed[lb.Ix2]:
    """Ten elementwise operations."""
    y = lb.amap(Fn.tanh, lb.amap(Fn.relu, x * 2.0 + 1.0) - 0.5)
    return lb.amap(Fn.square, lb.amap(Fn.abs, y / 3.0 + x)) * x - 1.0


def _chain_np(x: F) -> F:
    y = np.tanh(np.maximum(x * 2 + 1, 0) - 0.5)
    out: F = np.square(np.abs(y / 3 + x)) * x - 1
    return out


def test_a_ten_operation_chain_is_one_launch_without_matrix_temporaries() -> None:
    x = lb.matrix(np.linspace(-2, 2, 60).reshape(6, 10))
    d = _chain(x)
    kernel = fuse.plan([d.node], d.dtype, False)
    assert kernel.passes == 1
    assert all(len(t) < 2 for t in kernel.temporaries)
    before = fuse.stats().launches
    got = lb.compute(d)
    assert fuse.stats().launches == before + 1
    np.testing.assert_allclose(got.array, _chain_np(np.asarray(x.array)), rtol=1e-6)


def test_identical_subexpressions_are_computed_once() -> None:
    x = lb.matrix(np.ones((3, 4)))
    a = lb.amap(Fn.exp, x * 2.0)
    b = lb.amap(Fn.exp, lb.delay(x) * 2.0)  # built separately, same structure except the constant
    k = fuse.plan([(a + a * a).node], x.dtype, False)
    assert k.source.count("np.exp(") == 1
    k2 = fuse.plan([(a + b).node], x.dtype, False)  # different Const nodes: computed twice
    assert k2.source.count("np.exp(") == 2


def test_reduction_broadcast_back_is_an_earlier_pass_of_the_same_kernel() -> None:
    x = lb.matrix(np.arange(12.0).reshape(4, 3))
    centred = x - lb.rows_like(lb.scale(1 / 4, lb.sum_rows(x)), x)
    k = fuse.plan([centred.node], x.dtype, False)
    assert k.passes == 2
    assert k.temporaries == ((1,),) or all(len(t) == 1 for t in k.temporaries)
    before = fuse.stats().launches
    np.testing.assert_allclose(lb.compute(centred).array, x.array - x.array.mean(0))
    assert fuse.stats().launches == before + 1


def test_compute_all_writes_several_outputs_in_one_launch() -> None:
    rng = np.random.default_rng(1)
    xa = rng.normal(size=(7, 5))
    x = lb.matrix(xa)
    y = lb.amap(Fn.relu, x)
    before = fuse.stats().launches
    out, s_rows, s_cols = lb.compute_all(y, lb.sum_rows(y), lb.sum_cols(y))
    assert fuse.stats().launches == before + 1
    r = np.maximum(xa, 0)
    np.testing.assert_allclose(out.array, r)
    np.testing.assert_allclose(s_rows.array, r.sum(0), rtol=1e-12)
    np.testing.assert_allclose(s_cols.array, r.sum(1), rtol=1e-12)
    assert fuse.plan([y.node, lb.sum_rows(y).node], x.dtype, False).passes == 1


def test_rerunning_a_shape_class_compiles_nothing() -> None:
    for n, m in [(5, 3), (9, 4), (40, 17)]:
        x = lb.matrix(np.ones((n, m), np.float32))
        lb.compute(_chain(x))
    compiled = fuse.stats().compiled
    for n, m in [(11, 6), (3, 2), (100, 33)]:
        x = lb.matrix(np.ones((n, m), np.float32))
        lb.compute(_chain(x))
    assert fuse.stats().compiled == compiled


_XN = np.arange(12.0).reshape(4, 3)
_VN = np.array([1.0, 2.0, 4.0])
_UN = np.array([1.0, 2.0, 4.0, 8.0])
_DEV = _XN - _XN.mean(0)

# Sums of expressions with a scalar constant where the algebra splits a sum or pulls a factor out:
# the constant's share must stay inside a sum over the rows (there is no node for "n times c").
CONSTANT_SUMS: list[tuple[str, Callable[[lb.Matrix, lb.Vector, lb.Vector], lb.Delayed[lb.Ix1]], F]] = [
    ("sum of a negated deviation", lambda x, v, u: lb.sum_rows(-(x - lb.rows_like(lb.scale(0.25, lb.sum_rows(x)), x))),
     -_DEV.sum(0)),
    ("sum of a deviation plus a constant",
     lambda x, v, u: lb.sum_rows(lb.add_c(x - lb.rows_like(lb.scale(0.25, lb.sum_rows(x)), x), 1.0)), (_DEV + 1).sum(0)),
    ("sum of a constant minus a mean, squared",
     lambda x, v, u: lb.sum_rows(lb.amap(Fn.square, 1.0 - lb.rows_like(lb.scale(0.25, lb.sum_rows(x)), x))),
     ((1 - _XN.mean(0)) ** 2 * 4)),
    ("sum of a constant over a broadcast", lambda x, v, u: lb.sum_rows(2.0 / lb.rows_like(v, x)), 4 * 2 / _VN),
    ("sum of a scaled broadcast", lambda x, v, u: lb.sum_rows(lb.scale(2.0, lb.rows_like(v, x))), 8 * _VN),
    ("row sum of a scaled broadcast", lambda x, v, u: lb.sum_cols(lb.scale(2.0, lb.cols_like(u, x))), 6 * _UN),
    ("sum of a constant times a scaled broadcast",
     lambda x, v, u: lb.sum_rows(3.0 * (2.0 * lb.rows_like(v, x))), 24 * _VN),
]


def test_rewritten_sums_are_rounded_once_not_part_by_part() -> None:
    """The algebra's partial sums stay float64 until the combination is rounded: a pulled-out
    factor cannot overflow float32 and a split difference cannot cancel to float32 garbage."""
    big = lb.matrix(np.full((1000, 2), 1e36, np.float32))  # the sum, 1e39, is beyond float32
    np.testing.assert_allclose(lb.compute(lb.sum_rows(lb.scale(1e-3, big))).array, 1e36, rtol=1e-6)
    w = lb.vector(np.full(2, 1e3, np.float32))
    np.testing.assert_allclose(lb.compute(lb.sum_rows(big * lb.rows_like(lb.amap(Fn.recip, w), big))).array,
                               1e36, rtol=1e-6)
    xs = (1e4 + np.random.default_rng(3).standard_normal((1000, 4))).astype(np.float32)
    x = lb.matrix(xs)
    dev = lb.sum_rows(x - lb.rows_like(lb.scale(1e-3, lb.sum_rows(x)), x))  # the mean in the same kernel
    mean32 = (xs.astype(np.float64).sum(0) * 1e-3).astype(np.float32).astype(np.float64)  # scaled, then rounded
    want = (xs.astype(np.float64) - mean32).sum(0)  # |want| < 1, from two sums near 1e7
    np.testing.assert_allclose(lb.compute(dev).array, want, atol=1e-2)


def test_a_variance_from_column_statistics_is_rounded_once_after_its_scaling() -> None:
    """The sum of squared deviations that the column statistics give (M2 + n (mean - w)^2) stays
    float64 until the mean's 1/n has scaled it, as any other sum. Rounded to float32 first, it
    overflowed where the variance fits (column 0: M2 = 3.8e38, the variance 1.3e38), in the
    expression and in batch norm's forward, and 1/3 times the rounded M2 was an ulp off the
    variance (column 1: integers, whose M2 = 1226 is exact: 408.6667 for 408.66666)."""
    from lazybn.layers import Batchnorm1d
    from lazybn.network import bn_forward

    xs = np.array([[1.2e19, 1000.0], [-1.2e19, 1010.0], [1.2e19, 1047.0]], np.float32)
    x = lb.matrix(xs)
    mu, var = _mean_and_variance(x)
    exact = _variance_oracle(xs, mu.array)  # in long double, about lazybn's (rounded) mean
    assert exact[0] < np.finfo(np.float32).max < 3 * exact[0]
    np.testing.assert_allclose(var.array, exact, rtol=2 * float(np.finfo(np.float32).eps))
    assert var.array[1] == np.float32(exact[1])  # rounded once
    # the step code run one step at a time in numpy (each step rounded to float32, sums in float64)
    mean = (xs.astype(np.float64).sum(0) * (1 / 3)).astype(np.float32)
    steps = (np.square(xs - mean).astype(np.float64).sum(0) * (1 / 3)).astype(np.float32)
    np.testing.assert_array_equal(mu.array, mean)
    np.testing.assert_allclose(var.array, steps, rtol=1e-6)
    layer = Batchnorm1d(lb.zeros(2), lb.ones(2), lb.ones(2), lb.zeros(2))
    out, bmu, bvar = bn_forward(x, layer)
    np.testing.assert_array_equal(bvar.array, var.array)
    np.testing.assert_allclose(out.array, (xs - mean) / np.sqrt(steps.astype(np.float64) + 1e-5), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,make,want", CONSTANT_SUMS, ids=[c[0] for c in CONSTANT_SUMS])
def test_sums_of_expressions_with_constants_match_numpy(name: str, make: Callable[..., lb.Delayed[lb.Ix1]],
                                                       want: F, dtype: type) -> None:
    x, v, u = lb.matrix(_XN, dtype), lb.vector(_VN, dtype), lb.vector(_UN, dtype)
    got = lb.compute(make(x, v, u))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got.array, want, rtol=1e-6, atol=1e-5)


def test_par_and_seq_agree_up_to_reassociation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuse, "PAR_THRESHOLD_BYTES", 0)
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        xa = (rng.normal(size=(257, 33)) * 100 + 5).astype(dtype)
        res: dict[Comp, tuple[lb.Manifest[Any], ...]] = {}
        for comp in (Comp.Seq, Comp.Par):
            x = lb.matrix(xa, comp=comp)
            mu = lb.scale(1 / 257, lb.sum_rows(x))
            xmu = x - lb.rows_like(mu, x)
            var = lb.scale(1 / 257, lb.sum_rows(xmu * xmu))
            res[comp] = lb.compute_all(xmu * lb.rows_like(lb.amap(Fn.recip, lb.amap(Fn.sqrt, var)), x),
                                       var, lb.sum_cols(x), lb.max_cols(x))
            assert fuse.plan([mu.node], np.dtype(dtype), comp is Comp.Par).par == (comp is Comp.Par)
        for s, p in zip(res[Comp.Seq], res[Comp.Par]):
            # Par sums row blocks separately in float64, then adds the partial sums in a fixed
            # order: results agree to a few ulps of the data's magnitude (float64 reassociation);
            # the variance's column statistics merge blocks (Seq) and chunks (Par) in different
            # orders, which moves a sum of 257 squares by up to about sqrt(257) ulps.
            eps = float(np.finfo(dtype).eps)
            scale = float(np.abs(s.array).max()) + float(np.abs(xa).max())
            np.testing.assert_allclose(p.array, s.array, rtol=eps * (8 + 257**0.5), atol=4 * eps * scale)


SNIPPET = """
import json, numpy as np, lazybn as lb
from lazybn import fuse
x = lb.matrix(np.arange(12.0).reshape(3, 4))
y = lb.compute(lb.amap(lb.Fn.sigmoid, x) * 3.0 - lb.rows_like(lb.sum_rows(x), x))
s = fuse.stats()
print(json.dumps({"compiled": s.compiled, "disk_hits": s.disk_hits, "y": y.array.tolist()}))
"""


def _run(cache: Path, **env: str) -> dict[str, Any]:
    proc = run_python(SNIPPET, LAZYBN_CACHE_DIR=str(cache), **env)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_planning_a_deep_dag_with_shared_subexpressions_takes_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated squaring reaches each node twice from above: a walk of the DAG without a memo
    takes 2^depth steps (8 s at depth 22 in one version). Counted: the code generator asks
    whether a node is a float64 combination of sums a few times per node, not 2^20 times."""
    from lazybn.fuse import lower

    calls = 0
    wide = lower._Gen.wide

    def counted(self: Any, cid: int) -> bool:
        nonlocal calls
        calls += 1
        return wide(self, cid)

    monkeypatch.setattr(lower._Gen, "wide", counted)
    x = lb.matrix(np.ones((3, 3)))
    y: lb.Delayed[lb.Ix2] = x * 1.0
    for _ in range(20):
        y = y * y
    mean = lb.scale(1 / 3, lb.sum_rows(y))
    k = fuse.plan([mean.node], x.dtype, False)
    assert k.source.count("*") >= 20 and calls < 200
    np.testing.assert_array_equal(lb.compute(mean).array, [1.0, 1.0, 1.0])


def test_a_second_process_compiles_nothing(tmp_path: Path) -> None:
    first, second = _run(tmp_path), _run(tmp_path)
    assert first["compiled"] == 1 and first["disk_hits"] == 0
    assert second["compiled"] == 0 and second["disk_hits"] == 1
    assert first["y"] == second["y"]
    assert list(tmp_path.glob("kernels-v*/k_*.py"))
    strict = run_python(SNIPPET, LAZYBN_CACHE_DIR=str(tmp_path), LAZYBN_NO_COMPILE="1")
    assert strict.returncode == 0, strict.stderr


def test_no_compile_mode_refuses_to_compile(tmp_path: Path) -> None:
    proc = run_python(SNIPPET, LAZYBN_CACHE_DIR=str(tmp_path), LAZYBN_NO_COMPILE="1")
    assert proc.returncode != 0 and "LAZYBN_NO_COMPILE" in proc.stderr


@pytest.mark.parametrize("damage", ["source", "index", "object"])
def test_a_corrupt_cache_entry_is_recompiled(tmp_path: Path, damage: str) -> None:
    good = _run(tmp_path)
    kdir = next(tmp_path.glob("kernels-v*"))
    targets = {
        "source": list(kdir.glob("k_*.py")),
        "index": list(kdir.glob("__pycache__/*.nbi")),
        "object": list(kdir.glob("__pycache__/*.nbc")),
    }[damage]
    assert targets
    for f in targets:
        f.write_bytes(b"\x00garbage" * 3)
    again = _run(tmp_path)
    assert again["y"] == good["y"]


def test_kernel_source_is_readable_and_keyed_without_sizes() -> None:
    a = lb.matrix(np.ones((2, 3)))
    b = lb.matrix(np.ones((5, 7)))
    ka = fuse.plan([(a * 2.0 + 1.0).node], a.dtype, False)
    kb = fuse.plan([(b * 3.0 + 4.0).node], b.dtype, False)
    assert ka.key == kb.key
    assert "def kernel(" in ka.source and "@njit(cache=True" in ka.source
    assert "range(n0)" in ka.source  # loop bounds are arguments (unsigned), not constants


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 9), d=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_a_serial_pass_of_column_sums_takes_rows_in_pairs_and_an_odd_last_row_alone(dtype: type, n: int, d: int,
                                                                                  seed: int) -> None:
    """Sums of a pass with no other output add two rows' terms before accumulating (Seq only);
    every row counts once, whether the row count is odd or even."""
    xa: F = np.random.default_rng(seed).standard_normal((n, d)).astype(dtype) * 100
    x = lb.matrix(xa)
    y = x * x - x
    roots = [lb.sum_rows(y).node, lb.sum_rows(x).node]
    assert "while i + np.uint64(1) <" in fuse.plan(roots, x.dtype, False).source
    assert "while" not in fuse.plan([y.node, lb.sum_rows(y).node], x.dtype, False).source  # an output: row by row
    s_y, s_x = lb.compute_all(lb.sum_rows(y), lb.sum_rows(x))
    x64 = xa.astype(np.float64)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(s_x.array, x64.sum(axis=0), rtol=tol, atol=tol * np.abs(x64).sum(axis=0).max())
    y64 = (xa * xa - xa).astype(np.float64)  # the elementwise step rounds in the data's dtype
    np.testing.assert_allclose(s_y.array, y64.sum(axis=0), rtol=tol, atol=tol * np.abs(y64).sum(axis=0).max())
    # a later pass of sums alone reading a per-row vector: each row of the pair reads its own entry
    r = lb.sum_rows(x * lb.cols_like(lb.sum_cols(x), x))
    assert "while i + np.uint64(1) <" in fuse.plan([r.node], x.dtype, False).source
    rowsum = xa.astype(np.float64).sum(axis=1, keepdims=True).astype(dtype)
    z64 = (xa * rowsum).astype(np.float64)
    np.testing.assert_allclose(lb.compute(r).array, z64.sum(axis=0), rtol=tol, atol=tol * np.abs(z64).sum(axis=0).max())


def test_clear_disk_cache_forgets_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYBN_CACHE_DIR", str(tmp_path))
    assert kcache.kernel_dir().parent == tmp_path
    kcache.clear_disk_cache()
    assert not kcache.kernel_dir().exists()


def test_an_unwritable_kernel_cache_is_a_compile_error_naming_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LAZYBN_CACHE_DIR", str(blocker))
    monkeypatch.setattr(kcache, "_loaded", {})  # no kernel in memory: this one must be written
    with pytest.raises(lb.CompileError, match="cannot write the kernel cache .*a-file.*LAZYBN_CACHE_DIR"):
        lb.compute(lb.matrix(np.ones((2, 3))) * 2.0)
    assert blocker.read_text() == "not a directory"


def test_batchnorm_step_code_fuses_into_two_plus_two_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step-by-step batch-norm code: forward = one pass for the mean and the column statistics
    that give the variance about it, one for the output; backward = one pass for all the sums
    (linearity pulls dmu's late vectors out of its sum) and one that writes dx."""
    from lazybn.layers import Batchnorm1d
    from lazybn.network import bn_backward, bn_forward

    seen: list[tuple[int, int]] = []
    real = fuse.evaluate

    def spy(nodes: Any, dtype: Any, par: bool) -> Any:
        k = fuse.plan(nodes, dtype, par)
        seen.append((k.passes, max((len(t) for t in k.temporaries), default=0)))
        return real(nodes, dtype, par)

    monkeypatch.setattr(fuse, "evaluate", spy)
    monkeypatch.setattr(trace, "REPLAY", False)  # the bodies run (a replay of an earlier trace would not evaluate)
    d = 6
    layer = Batchnorm1d(lb.zeros(d), lb.ones(d), lb.ones(d), lb.zeros(d))
    x = lb.matrix(np.random.default_rng(3).normal(size=(10, d)), dtype=np.float32)
    out, mu, var = bn_forward(x, layer)
    bn_backward(x, x, layer, mu, var)
    assert seen == [(2, 1), (2, 1)]  # two launches; temporaries are vectors only


def _mean_and_variance(x: lb.Matrix) -> tuple[lb.Vector, lb.Vector]:
    """The step code's statistics: the mean, then the mean square deviation about it."""
    n = x.shape[0]
    mu = lb.scale(1 / n, lb.sum_rows(x))
    var = lb.scale(1 / n, lb.sum_rows(lb.amap(Fn.square, x - lb.rows_like(mu, x))))
    got = lb.compute_all(mu, var)
    return got[0], got[1]


def _variance_oracle(xa: F, mu: F) -> F:
    """Two passes in long double about lazybn's own (rounded) mean, as the step code says."""
    d = xa.astype(np.longdouble) - mu.astype(np.longdouble)
    out: F = (d * d).mean(axis=0).astype(np.float64)
    return out


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 1300), d=st.integers(1, 6),
       offset=st.sampled_from([0.0, 1e3, 1e5]), outlier=st.sampled_from([0.0, 1e4]),
       where=st.sampled_from(["first", "last", "middle"]), seed=st.integers(0, 2**16))
def test_variance_about_the_mean_takes_one_pass_and_stays_exact(dtype: type, n: int, d: int, offset: float,
                                                                 outlier: float, where: str, seed: int) -> None:
    """The variance about a mean the same kernel computes is gathered in the mean's pass (column
    statistics over cached row blocks, merged with Chan's formula): no extra pass, and no digits
    lost to a large mean or to an outlier row, wherever it sits (block boundaries included:
    up to 1300 rows crosses several blocks)."""
    rng = np.random.default_rng(seed)
    xa: F = (rng.normal(size=(n, d)) + offset).astype(dtype)
    xa[{"first": 0, "last": n - 1, "middle": n // 2}[where]] += dtype(outlier)
    x = lb.matrix(xa)
    n_sum = lb.scale(1 / n, lb.sum_rows(x))
    var_node = lb.sum_rows(lb.amap(Fn.square, x - lb.rows_like(n_sum, x)))
    assert fuse.plan([n_sum.node, var_node.node], x.dtype, False).passes == 1
    mu, var = _mean_and_variance(x)
    want = _variance_oracle(xa, mu.array)
    rtol = float(np.finfo(dtype).eps) * (8 + n**0.5)  # a float64 sum of n terms: about sqrt(n) ulps
    np.testing.assert_allclose(var.array, want, rtol=rtol, atol=rtol * float(np.abs(want).max()) * 1e-3)
    np.testing.assert_allclose(mu.array, xa.astype(np.longdouble).mean(0).astype(np.float64), rtol=rtol,
                               atol=rtol * float(np.abs(xa).max()))


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 1300), d=st.integers(1, 4),
       special=st.lists(st.tuples(st.integers(0, 1299), st.integers(0, 3), st.sampled_from([np.inf, -np.inf, np.nan])),
                        max_size=3),
       par=st.booleans(), seed=st.integers(0, 2**16))
def test_a_mean_gathered_with_its_variance_is_numpys_for_columns_with_infinities(
        dtype: type, n: int, d: int, special: list[tuple[int, int, float]], par: bool, seed: int) -> None:
    """The column sums of the variance's pass are taken relative to a shift, the mean of the first
    rows: an infinity among those rows must still give the column's mean as inf (numpy), not NaN."""
    rng = np.random.default_rng(seed)
    xa: F = rng.normal(size=(n, d)).astype(dtype)
    for i, j, v in special:
        xa[i % min(n, 10) if i % 2 else i % n, j % d] = v  # often among the first rows
    with parallel_kernels():
        mu, var = _mean_and_variance(lb.matrix(xa, comp=Comp.Par if par else Comp.Seq))
    with np.errstate(all="ignore"):
        want_mu, want_var = xa.astype(np.float64).mean(axis=0), xa.astype(np.float64).var(axis=0)
    finite = np.isfinite(want_mu)
    np.testing.assert_array_equal(mu.array[~finite], want_mu[~finite].astype(dtype))
    np.testing.assert_allclose(mu.array[finite], want_mu[finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.isnan(var.array), np.isnan(want_var))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 3000), d=st.integers(1, 4), base=st.sampled_from([7.0, 1e6]),
       jump=st.sampled_from([0.0, 1.0, 1e3, 1e7]), noise=st.sampled_from([0.0, 1e-3, 1.0]),
       split=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_float32_block_statistics_survive_a_shift_far_from_the_blocks(n: int, d: int, base: float, jump: float,
                                                                       noise: float, split: float,
                                                                       seed: int) -> None:
    """float32 kernels take each cached block's M2 from shifted sums in one look, sum(d*d) -
    fb * mean(d)^2 with d = x - shift. Adversarial layouts for that formula: sorted rows in two
    levels (blocks whose mean is far from the shift, taken from the first rows, and whose own
    spread is tiny or zero), large offsets (the unshifted sum(x*x) - n * mean^2 fails here even in
    float64), and constant columns, whose variance must be exactly 0."""
    rng = np.random.default_rng(seed)
    level = np.where(np.arange(n) < int(split * n), 0.0, jump)[:, None]
    xa: F = (level + base + noise * rng.normal(size=(n, d))).astype(np.float32)
    mu, var = _mean_and_variance(lb.matrix(xa))
    want = _variance_oracle(xa, mu.array)
    assert (var.array >= 0).all()
    rtol = float(np.finfo(np.float32).eps) * (8 + n**0.5)
    np.testing.assert_allclose(var.array, want, rtol=rtol, atol=rtol * float(np.abs(want).max()) * 1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_statistics_merge_chunks_exactly(dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a parallel kernel each thread gathers its rows' statistics; the chunks merge in a fixed
    order with Chan's formula, so an outlier in one chunk does not spoil the other's."""
    monkeypatch.setattr(fuse, "PAR_THRESHOLD_BYTES", 1)  # parallel at this size too
    rng = np.random.default_rng(4)
    xa: F = (rng.normal(size=(1100, 300)) * 0.5 + 1e3).astype(dtype)
    xa[0] += dtype(5e3)
    xa[-1] -= dtype(5e3)
    res = {comp: _mean_and_variance(lb.matrix(xa, comp=comp)) for comp in (Comp.Seq, Comp.Par)}
    assert fuse.plan([lb.sum_rows(lb.matrix(xa, comp=Comp.Par)).node], np.dtype(dtype), True).par
    rtol = float(np.finfo(dtype).eps) * (8 + 1100**0.5)
    for comp, (mu, var) in res.items():
        np.testing.assert_allclose(var.array, _variance_oracle(xa, mu.array), rtol=rtol, err_msg=str(comp))


def test_a_deviation_from_an_available_vector_needs_no_statistics() -> None:
    """sum_rows((x - br(v))^2) with v already known (a leaf) is an ordinary sum in the same pass."""
    x = lb.matrix(np.arange(12.0).reshape(4, 3))
    v = lb.vector(np.array([1.0, 2.0, 3.0]))
    s = lb.sum_rows(lb.amap(Fn.square, x - lb.rows_like(v, x)))
    k = fuse.plan([s.node], x.dtype, False)
    assert k.passes == 1 and "cq" not in k.source
    np.testing.assert_allclose(lb.compute(s).array, ((x.array - v.array) ** 2).sum(0))


@pytest.mark.parametrize("comp", [Comp.Seq, Comp.Par])
def test_deviation_statistics_of_an_expression_at_a_later_level(comp: Comp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sum of squared deviations whose e is itself an expression of an earlier reduction (the
    fourth central moment's numerator about the mean square): e is recomputed on the block's second
    look, and the statistics come from the pass after e's own."""
    monkeypatch.setattr(fuse, "PAR_THRESHOLD_BYTES", 0)
    rng = np.random.default_rng(8)
    xa: F = rng.normal(size=(700, 5)) * 3 + 50
    x = lb.matrix(xa, comp=comp)
    n = xa.shape[0]
    y = x - lb.rows_like(lb.scale(1 / n, lb.sum_rows(x)), x)
    sq = lb.amap(Fn.square, y)
    m2 = lb.scale(1 / n, lb.sum_rows(sq))
    spread = lb.sum_rows(lb.amap(Fn.square, sq - lb.rows_like(m2, x)))
    k = fuse.plan([spread.node], x.dtype, comp is Comp.Par)
    assert k.passes == 2 and "cq" in k.source  # instead of three passes
    got = lb.compute(spread).array
    ya = xa - xa.mean(0)
    want = ((ya**2 - (ya**2).mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(got, want, rtol=1e-11)


def test_deviation_statistics_over_no_rows_are_zero() -> None:
    x = lb.matrix(np.ones((0, 3)))
    v = lb.compute(lb.scale(2.0, lb.sum_rows(x)))
    s = lb.sum_rows(lb.amap(Fn.square, x - lb.rows_like(lb.sum_rows(x), x)))
    np.testing.assert_array_equal(lb.compute(s).array, np.zeros(3))
    np.testing.assert_array_equal(v.array, np.zeros(3))


def test_a_product_of_a_deviation_with_itself_is_a_square() -> None:
    """``xmu * xmu`` (one node twice) gets the same one-pass statistics as ``square(xmu)``."""
    x = lb.matrix(np.random.default_rng(9).normal(size=(40, 3)) + 1e4)
    xmu = x - lb.rows_like(lb.scale(1 / 40, lb.sum_rows(x)), x)
    for sq in (xmu * xmu, lb.amap(Fn.square, xmu)):
        k = fuse.plan([lb.sum_rows(sq).node], x.dtype, False)
        assert k.passes == 1 and "cq" in k.source
    got = lb.compute(lb.sum_rows(xmu * xmu)).array
    mu = lb.compute(lb.scale(1 / 40, lb.sum_rows(x))).array
    np.testing.assert_allclose(got, _variance_oracle(x.array, mu) * 40, rtol=1e-13)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(600, 20000), d=st.integers(1, 3), head=st.integers(1, 8), jump=st.sampled_from([1e4, 1e6, 1e8]),
       noise=st.sampled_from([1e-3, 1.0]), sample=st.integers(0, 2**16))
def test_float64_block_statistics_survive_a_shift_far_from_the_blocks(n: int, d: int, head: int, jump: float,
                                                                       noise: float, sample: int) -> None:
    """The float64 variance about the mean stays within about sqrt(n) ulps of the long-double
    answer when the first rows (which the column statistics are shifted by) sit far from every
    later block: each block's sum of squared deviations is taken about the block's own mean, so
    nothing of the size of jump^2 is cancelled."""
    rng = np.random.default_rng(sample)
    level = np.where(np.arange(n) < head, 0.0, jump)[:, None]
    xa: F = level + 7.0 + noise * rng.normal(size=(n, d))
    mu, var = _mean_and_variance(lb.matrix(xa))
    want = _variance_oracle(xa, mu.array)
    rtol = float(np.finfo(np.float64).eps) * (8 + n**0.5)
    np.testing.assert_allclose(var.array, want, rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_parallel_statistics_of_fewer_rows_than_threads(dtype: type, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parallel kernel whose batch has fewer rows than it has threads leaves some chunks empty:
    they add nothing to the merged statistics (no 0/0), so the mean and variance are numpy's."""
    monkeypatch.setattr(fuse, "PAR_THRESHOLD_BYTES", 0)
    xa: F = (np.arange(n * 4, dtype=np.float64).reshape(n, 4) * 1.5 - 2.0).astype(dtype)
    x = lb.matrix(xa, comp=Comp.Par)
    assert fuse.plan([lb.sum_rows(x).node], np.dtype(dtype), True).par
    mu, var = _mean_and_variance(x)
    x64 = xa.astype(np.float64)
    np.testing.assert_allclose(mu.array, x64.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var.array, _variance_oracle(xa, mu.array), rtol=1e-6, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 40), d=st.integers(1, 5),
       c=st.sampled_from([2.0, -0.5, 3.0, 1e3]), sample=st.integers(0, 2**16))
def test_a_number_divided_by_a_sum_or_a_mean_matches_numpy(dtype: type, n: int, d: int, c: float, sample: int) -> None:
    """``c / s`` of a sum (or of a mean, a scaled sum) is c divided by it, whichever side the
    constant is on: c / sum_rows(x), c / mean, sum_rows(x) / c, c / sum_cols(x)."""
    xa: F = np.random.default_rng(sample).uniform(1.0, 2.0, (n, d)).astype(dtype)
    x = lb.matrix(xa)
    got = lb.compute_all(c / lb.sum_rows(x), c / lb.scale(1 / n, lb.sum_rows(x)), lb.sum_rows(x) / c,
                         c / lb.sum_cols(x))
    x64 = xa.astype(np.float64)
    wants = [c / x64.sum(0), c / x64.mean(0), x64.sum(0) / c, c / x64.sum(1)]
    tol = 1e-6 if dtype is np.float32 else 1e-13
    for g, w in zip(got, wants):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g.array, w, rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_the_sum_rewrite_makes_equal_are_each_written(dtype: type) -> None:
    """``sum_rows(x * br(v))`` and ``sum_rows(br(v) * x)`` are two expressions that the algebra
    turns into one, ``sum_rows(x) * v`` (likewise row sums with ``cols_like``): the kernel computes
    it once and every output asked for holds it."""
    rng = np.random.default_rng(12)
    xa: F = rng.normal(size=(9, 4)).astype(dtype)
    va: F = rng.normal(size=4).astype(dtype)
    ua: F = rng.normal(size=9).astype(dtype)
    x, v, u = lb.matrix(xa), lb.vector(va), lb.vector(ua)
    got = lb.compute_all(lb.sum_rows(x * lb.rows_like(v, x)), lb.sum_rows(lb.rows_like(v, x) * x),
                         lb.sum_cols(x * lb.cols_like(u, x)), lb.sum_cols(lb.cols_like(u, x) * x))
    x64 = xa.astype(np.float64)
    wants = [x64.sum(0) * va, x64.sum(0) * va, x64.sum(1) * ua, x64.sum(1) * ua]
    tol = 1e-6 if dtype is np.float32 else 1e-13
    for k, (g, w) in enumerate(zip(got, wants)):
        np.testing.assert_allclose(g.array, w, rtol=tol, atol=tol * float(np.abs(w).max()), err_msg=f"output {k}")


def test_squared_deviations_from_a_row_statistic_broadcast_as_columns_match_numpy() -> None:
    """Only a deviation from ``rows_like`` of a column statistic has the one-pass column statistics
    (M2 + n (mean - w)^2); a deviation from ``cols_like`` of a row statistic is another sum, and
    so is its sum over the columns."""
    rng = np.random.default_rng(13)
    xa: F = rng.normal(size=(11, 4)) * 3 + 2
    x = lb.matrix(xa)
    dev = lb.amap(Fn.square, x - lb.cols_like(lb.scale(0.25, lb.sum_cols(x)), x))
    by_col, by_row = lb.compute_all(lb.sum_rows(dev), lb.sum_cols(dev))
    d = (xa - xa.mean(1, keepdims=True)) ** 2
    np.testing.assert_allclose(by_col.array, d.sum(0), rtol=1e-13)
    np.testing.assert_allclose(by_row.array, d.sum(1), rtol=1e-13)


@pytest.mark.parametrize("comp", [Comp.Seq, Comp.Par])
def test_deviations_from_a_vector_two_passes_later_wait_for_it(comp: Comp, monkeypatch: pytest.MonkeyPatch) -> None:
    """The column statistics of e come from the pass over e, but sum_rows((e - br(w))^2) needs w
    too: with w = sum_rows(exp(x - br(mean))), two passes after x, the sum is known only then."""
    monkeypatch.setattr(fuse, "PAR_THRESHOLD_BYTES", 0)
    rng = np.random.default_rng(14)
    xa: F = rng.normal(size=(30, 3))
    x = lb.matrix(xa, comp=comp)
    mean = lb.scale(1 / 30, lb.sum_rows(x))
    w = lb.sum_rows(lb.amap(Fn.exp, x - lb.rows_like(mean, x)))
    q = lb.sum_rows(lb.amap(Fn.square, x - lb.rows_like(w, x)))
    wa = np.exp(xa - xa.mean(0)).sum(0)
    want = ((xa - wa) ** 2).sum(0)
    np.testing.assert_allclose(lb.compute(q).array, want, rtol=1e-12)
    got_q, got_w = lb.compute_all(q, w)
    np.testing.assert_allclose(got_q.array, want, rtol=1e-12)
    np.testing.assert_allclose(got_w.array, wa, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_par_kernels_start_at_4_mib_in_the_largest_matrix_loop_nest(dtype: type) -> None:
    """A Comp.Par expression runs the parallel kernel from PAR_THRESHOLD_BYTES (4 MiB) in its
    largest matrix loop nest, rows times columns, whatever the matrix's shape; below it, and for
    Comp.Seq or vector-only expressions, the serial one."""
    item = np.dtype(dtype).itemsize
    cells = fuse.PAR_THRESHOLD_BYTES // item
    for rows, cols in ((cells // 1024, 1024), (2, cells // 2), (cells // 4, 4)):
        for r, par in ((rows, True), (rows - 1, False)):
            m = lb.matrix(np.zeros((r, cols), dtype), comp=Comp.Par)
            e = [lb.scale(2.0, m).node]
            assert fuse.plan(e, np.dtype(dtype), True).par is par, (r, cols)
            assert not fuse.plan(e, np.dtype(dtype), False).par
    v = lb.vector(np.zeros(cells, dtype), comp=Comp.Par)
    assert not fuse.plan([lb.scale(2.0, v).node], np.dtype(dtype), True).par


def test_a_constant_times_a_negated_split_sum_meets_it_in_float64() -> None:
    """``sum_rows(scale(c, negate(x - br(w))))``, w a column statistic, becomes ``c * -(sum_rows(x)
    - sum_rows(br(w)))``: a negated float64 sum is still a float64 value, so c multiplies it as
    the float64 number it is (not c rounded to float32) and the product is rounded once. Integer
    data and w = sum / 4 make every sum exact: the result is the float64 product rounded to float32."""
    xa: F = np.random.default_rng(15).integers(-50, 51, size=(3, 256)).astype(np.float32)
    x = lb.matrix(xa)
    w = lb.scale(0.25, lb.sum_rows(x))
    got = lb.compute(lb.sum_rows(lb.scale(1 / 3, lb.amap(Fn.negate, x - lb.rows_like(w, x))))).array
    x64 = xa.astype(np.float64)
    w32 = (x64.sum(0) * 0.25).astype(np.float32).astype(np.float64)
    want = ((x64 - w32).sum(0) * -1.0 * (1 / 3)).astype(np.float32)  # sums of integers and quarters: exact
    np.testing.assert_array_equal(got, want)


def test_only_factors_constant_along_the_sum_leave_it() -> None:
    """``sum_rows`` pulls out of a product a factor broadcast as rows (``rows_like``, constant down
    each column), ``sum_cols`` one broadcast as columns; a factor broadcast the other way varies
    along the sum and stays inside it, also where the product must be reassociated first
    (``x * (y * br(v))``). Each against numpy."""
    rng = np.random.default_rng(16)
    xa, ya = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    x, y = lb.matrix(xa), lb.matrix(ya)
    s_col = lb.scale(0.5, lb.sum_cols(x))  # one value per row: needs a pass over x
    s_row = lb.scale(0.5, lb.sum_rows(x))  # one value per column
    got = lb.compute_all(lb.sum_rows(x * (y * lb.cols_like(s_col, x))), lb.sum_cols(x * (y * lb.rows_like(s_row, x))),
                         lb.sum_rows(x * (y * lb.rows_like(s_row, x))), lb.sum_cols(x * (y * lb.cols_like(s_col, x))))
    c, r = 0.5 * xa.sum(1, keepdims=True), 0.5 * xa.sum(0, keepdims=True)
    wants = [(xa * ya * c).sum(0), (xa * ya * r).sum(1), (xa * ya * r).sum(0), (xa * ya * c).sum(1)]
    for k, (g, w) in enumerate(zip(got, wants)):
        np.testing.assert_allclose(g.array, w, rtol=1e-12, atol=1e-12, err_msg=f"output {k}")


@pytest.mark.parametrize("f", [Fn.abs, Fn.square, Fn.relu, Fn.negate])
def test_a_sum_of_a_function_of_a_deviation_matches_numpy(f: Fn) -> None:
    """Only negation is linear and splits a sum in two; the sum of any other function of a
    deviation from a column statistic (here the mean) is summed as it is."""
    rng = np.random.default_rng(17)
    xa: F = rng.normal(size=(8, 3)) * 2 + 1
    x = lb.matrix(xa)
    dev = x - lb.rows_like(lb.scale(1 / 8, lb.sum_rows(x)), x)
    got = lb.compute(lb.sum_rows(lb.amap(f, dev))).array
    d = xa - xa.mean(0)
    fd: F = {Fn.abs: np.abs(d), Fn.square: d * d, Fn.relu: np.maximum(d, 0.0), Fn.negate: -d}[f]
    np.testing.assert_allclose(got, fd.sum(0), rtol=1e-12, atol=1e-12)


_SX: F = np.random.default_rng(18).normal(size=(13, 5)) + 3
_SY: F = np.random.default_rng(19).normal(size=(13, 5))
_SV: F = np.random.default_rng(20).normal(size=5)
_SM: F = _SX.mean(0)  # the column mean, a statistic of x the algebra sees as one pass away


def _mean(x: lb.Matrix) -> lb.Delayed[lb.Ix1]:
    return lb.scale(1 / 13, lb.sum_rows(x))


def _dev(x: lb.Matrix) -> lb.Delayed[lb.Ix2]:
    return x - lb.rows_like(_mean(x), x)


REWRITTEN_SUMS: list[tuple[str, Callable[[lb.Matrix, lb.Matrix, lb.Vector], lb.Delayed[lb.Ix1]], F]] = [
    ("sum_cols of a squared deviation from a column mean",
     lambda x, y, v: lb.sum_cols(lb.amap(Fn.square, _dev(x))), ((_SX - _SM) ** 2).sum(1)),
    ("deviation times another matrix",
     lambda x, y, v: lb.sum_rows(_dev(x) * y), ((_SX - _SM) * _SY).sum(0)),
    ("product of two different deviations",
     lambda x, y, v: lb.sum_rows(_dev(x) * (y - lb.rows_like(_mean(x), x))), ((_SX - _SM) * (_SY - _SM)).sum(0)),
    ("number over a matrix", lambda x, y, v: lb.sum_rows(2.0 / x), (2.0 / _SX).sum(0)),
    ("rows_like over a matrix", lambda x, y, v: lb.sum_rows(lb.rows_like(v, x) / x), (_SV / _SX).sum(0)),
    ("column mean over a matrix", lambda x, y, v: lb.sum_rows(lb.rows_like(_mean(x), x) / x), (_SM / _SX).sum(0)),
    ("sum_cols of a matrix times rows_like", lambda x, y, v: lb.sum_cols(x * lb.rows_like(v, x)), (_SX * _SV).sum(1)),
    ("sum_cols of a matrix times a column mean",
     lambda x, y, v: lb.sum_cols(x * lb.rows_like(_mean(x), x)), (_SX * _SM).sum(1)),
    ("deviation plus a number", lambda x, y, v: lb.sum_rows(_dev(x) + 2.0), (_SX - _SM + 2.0).sum(0)),
    ("number minus a deviation", lambda x, y, v: lb.sum_rows(2.0 - _dev(x)), (2.0 - (_SX - _SM)).sum(0)),
    ("column mean minus a matrix", lambda x, y, v: lb.sum_rows(lb.rows_like(_mean(x), x) - y), (_SM - _SY).sum(0)),
]


@pytest.mark.parametrize("name,make,want", REWRITTEN_SUMS, ids=[c[0] for c in REWRITTEN_SUMS])
def test_sums_the_algebra_may_rewrite_match_numpy(name: str, make: Callable[[lb.Matrix, lb.Matrix, lb.Vector],
                                                                            lb.Delayed[lb.Ix1]], want: F) -> None:
    """Sums of quotients, of sums with numbers, of products that are not squares, and sum_cols of
    what is constant down each column: each has its own rule (or none) in the sum algebra; each
    against numpy in float64."""
    x, y, v = lb.matrix(_SX), lb.matrix(_SY), lb.vector(_SV)
    got = lb.compute(make(x, y, v)).array
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_a_difference_keeps_its_order_when_its_operands_were_seen_the_other_way_round() -> None:
    """``y - x`` and ``2.0 - x`` after ``x`` and ``y`` (or ``x * 2.0``) were numbered: subtraction
    is not commutative, so its operands are never put in canonical order as a sum's are."""
    x, y = lb.matrix(_SX), lb.matrix(_SY)
    got = lb.compute_all(lb.sum_rows(x), lb.delay(y), lb.sum_rows(y - x), y - x, x * 2.0, 2.0 - x)
    wants = [_SX.sum(0), _SY, (_SY - _SX).sum(0), _SY - _SX, _SX * 2.0, 2.0 - _SX]
    for k, (g, w) in enumerate(zip(got, wants)):
        np.testing.assert_allclose(g.array, w, rtol=1e-12, atol=1e-12, err_msg=f"output {k}")


def test_an_expression_asked_for_again_in_compute_all_answers_each_time_it_was_asked() -> None:
    """compute_all computes an expression asked for twice (the same node, or an equal one built
    again) once, and still returns one array per argument, in argument order, each numpy's value."""
    xa, ya = np.arange(6.0).reshape(2, 3), np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    x, y = lb.matrix(xa), lb.matrix(ya)
    e = x + y
    got: tuple[Any, ...] = lb.compute_all(e, lb.sum_rows(x), x + y, x - y, e)
    wants = [xa + ya, xa.sum(0), xa + ya, xa - ya, xa + ya]
    assert len(got) == len(wants)
    for k, (g, w) in enumerate(zip(got, wants)):
        np.testing.assert_array_equal(g.array, w, err_msg=f"output {k}")
    assert len(lb.compute_all(e, e)) == 2
