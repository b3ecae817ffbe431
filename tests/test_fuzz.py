"""Fuzzing the public array API: any shapes, dtypes and values (NaN, inf, empty, wrong ranks,
non-float, non-contiguous, read-only). The only allowed outcomes are a lazybn error or a result
equal to the plain-numpy oracle. ``HYPOTHESIS_PROFILE=long`` runs a longer campaign by hand;
``LAZYBN_FUZZ_REPORT=path.json`` writes the outcome counts (for docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lazybn as lb
from lazybn import Fn, LazybnError

from .helpers import F

OUTCOMES: Counter[str] = Counter()
FUZZ_EXAMPLES = int(os.environ.get("LAZYBN_FUZZ_EXAMPLES", "600"))


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    path = os.environ.get("LAZYBN_FUZZ_REPORT")
    if path and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:  # each worker would write its own
        pytest.fail("LAZYBN_FUZZ_REPORT counts the examples of one process: run with -n 0", pytrace=False)
    yield
    if path:
        with open(path, "w") as f:
            json.dump(dict(sorted(OUTCOMES.items())), f, indent=1)


def _floats(dtype: Any, dims: tuple[int, int] = (1, 2)) -> st.SearchStrategy[F]:
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=dims[0], max_dims=dims[1], min_side=0, max_side=5),
                      elements=st.floats(allow_nan=True, allow_infinity=True, width=32 if dtype == np.float32 else 64))


def _weird(x: np.ndarray[Any, Any], how: str) -> Any:
    if how == "reversed" and x.ndim >= 1:
        return x[::-1]
    if how == "transposed" and x.ndim == 2:
        return x.T
    if how == "readonly":
        x = x.copy()
        x.flags.writeable = False
        return x
    if how == "list":
        return x.tolist()
    return x


_VALID = st.tuples(st.one_of(_floats(np.float32), _floats(np.float64)),
                   st.sampled_from(["plain", "reversed", "transposed", "readonly", "list"])).map(lambda t: _weird(*t))
RAW = st.one_of(
    _VALID, _VALID, _VALID,
    st.one_of(_floats(np.float32, (0, 0)), _floats(np.float64, (3, 3))),
    hnp.arrays(st.sampled_from([np.int64, np.uint8, np.bool_, np.float16, np.complex128]),
               hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)),
    st.sampled_from([None, "text", 3.5]),
)


def lazy(raw: Any) -> lb.Manifest[Any]:
    """Build a lazybn array the way a user would: vector for 1-d data, matrix otherwise."""
    ndim = np.ndim(raw) if not isinstance(raw, str) else 0
    return lb.vector(raw) if ndim == 1 else lb.matrix(raw)


def np_of(a: lb.Manifest[Any]) -> F:
    return np.asarray(a.array)


# Each op: (lazybn call on lazy arrays + extras, numpy oracle on arrays; None = must be rejected)
Op = tuple[Callable[..., Any], Callable[..., F | None]]


def _same(a: F, b: F) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def _elementwise(f: Callable[[F, F], F]) -> Callable[[F, F], F | None]:
    def oracle(a: F, b: F) -> F | None:
        return f(a, b) if _same(a, b) else None
    return oracle


def _fn_oracle(fn: Fn) -> Callable[[F], F]:
    def o(x: F) -> F:
        one = x.dtype.type(1)
        s = one / (one + np.exp(-x))
        table: dict[Fn, F] = {
            Fn.exp: np.exp(x), Fn.log: np.log(x), Fn.sqrt: np.sqrt(x), Fn.recip: one / x, Fn.negate: -x,
            Fn.square: x * x, Fn.abs: np.abs(x), Fn.relu: np.maximum(x, x.dtype.type(0)),
            Fn.drelu: np.where(x > 0, one, x.dtype.type(0)), Fn.sigmoid: s, Fn.dsigmoid: s * (one - s),
            Fn.tanh: np.tanh(x), Fn.dtanh: one - np.tanh(x) * np.tanh(x),
            Fn.flush_subnormal: np.where(np.abs(x) < np.finfo(x.dtype).tiny, x * 0, x),
            Fn.erf: np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),
        }
        return table[fn]
    return o


def _reduce(axis: int, kind: str) -> Callable[[F], F | None]:
    def o(m: F) -> F | None:
        if m.ndim != 2 or (kind != "sum" and m.shape[axis] == 0):
            return None
        out: F = (np.max(m, axis=axis) if kind == "max" else np.min(m, axis=axis) if kind == "min"
                  else np.asarray(m.astype(np.float64).sum(axis=axis), dtype=m.dtype))
        return out
    return o


def _power(k: float) -> Op:
    return (lambda a, b: lb.compute(a ** k)), (lambda a, b: a ** a.dtype.type(k))


OPS: dict[str, Op] = {
    "add": (lambda a, b: lb.compute(a + b), _elementwise(lambda a, b: a + b)),
    "sub": (lambda a, b: lb.compute(a - b), _elementwise(lambda a, b: a - b)),
    "mul": (lambda a, b: lb.compute(a * b), _elementwise(lambda a, b: a * b)),
    "div": (lambda a, b: lb.compute(a / b), _elementwise(lambda a, b: a / b)),
    "rows_like": (lambda a, b: lb.compute(lb.rows_like(a, b)),
                  lambda a, b: np.broadcast_to(a, b.shape) if a.ndim == 1 and b.ndim == 2 and a.shape[0] == b.shape[1]
                  else None),
    "cols_like": (lambda a, b: lb.compute(lb.cols_like(a, b)),
                  lambda a, b: np.broadcast_to(a[:, None], b.shape) if a.ndim == 1 and b.ndim == 2
                  and a.shape[0] == b.shape[0] else None),
    "sum_rows": (lambda a, b: lb.compute(lb.sum_rows(a)), lambda a, b: _reduce(0, "sum")(a)),
    "sum_cols": (lambda a, b: lb.compute(lb.sum_cols(a)), lambda a, b: _reduce(1, "sum")(a)),
    "max_cols": (lambda a, b: lb.compute(lb.max_cols(a)), lambda a, b: _reduce(1, "max")(a)),
    "min_cols": (lambda a, b: lb.compute(lb.min_cols(a)), lambda a, b: _reduce(1, "min")(a)),
    "max_rows": (lambda a, b: lb.compute(lb.max_rows(a)), lambda a, b: _reduce(0, "max")(a)),
    "min_rows": (lambda a, b: lb.compute(lb.min_rows(a)), lambda a, b: _reduce(0, "min")(a)),
    "maximum": (lambda a, b: lb.compute(lb.maximum(a, b)), _elementwise(np.maximum)),
    "minimum": (lambda a, b: lb.compute(lb.minimum(a, b)), _elementwise(np.minimum)),
    "abs": (lambda a, b: lb.compute(abs(a)), lambda a, b: np.abs(a)),
    "pow": (lambda a, b: lb.compute(a ** b), _elementwise(lambda a, b: a ** b)),
    **{f"pow.{k}": _power(k) for k in (2, 0.5, -1, 3, -2.5)},
    "matmul@": (lambda a, b: a @ b,
                lambda a, b: a @ b if a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0] and a.dtype == b.dtype
                else None),
    "matmul": (lambda a, b: lb.matmul(a, b),
               lambda a, b: a @ b if a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0] and a.dtype == b.dtype
               else None),
    "transpose": (lambda a, b: lb.transpose(a), lambda a, b: a.T if a.ndim == 2 else None),
    "reshape": (lambda a, b: lb.reshape(a, b.shape), lambda a, b: a.reshape(b.shape) if a.size == b.size else None),
    "scale": (lambda a, b: lb.compute(lb.scale(2.5, a)), lambda a, b: a.dtype.type(2.5) * a),
    "add_c": (lambda a, b: lb.compute(lb.add_c(a, -1.5)), lambda a, b: a + a.dtype.type(-1.5)),
    **{f"amap.{fn.value}": ((lambda fn: lambda a, b: lb.compute(lb.amap(fn, a)))(fn),
                            (lambda fn: lambda a, b: _fn_oracle(fn)(a))(fn)) for fn in Fn},
}


UNARY = {"sum_rows", "sum_cols", "max_cols", "min_cols", "max_rows", "min_rows", "transpose", "scale", "add_c", "abs",
         *(f"pow.{k}" for k in (2, 0.5, -1, 3, -2.5)), *(f"amap.{fn.value}" for fn in Fn)}


def _close(got: F, want: F, op: str) -> bool:
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    g, w = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(w)
    with np.errstate(all="ignore"):
        exact = (g == w) | both_nan
        if op in ("sum_rows", "sum_cols") or op.startswith(("amap.", "pow")):
            # float64 accumulation / libm vs numpy's functions: a few ulps
            tol = 64 * np.finfo(got.dtype).eps * (np.abs(w) + 1e-30)
            close = np.isfinite(w) & (np.abs(g - w) <= tol)  # where numpy gives +-inf, only that infinity
            return bool((exact | close).all())
    return bool(exact.all())


def _pair(raw: Any, other: Any, how: str) -> tuple[Any, Any]:
    """Most random pairs are incompatible; derive compatible ones too."""
    x = np.asarray(raw) if isinstance(raw, (np.ndarray, list)) else None
    if x is None or how == "independent" or x.ndim != 2 or min(x.shape) == 0:
        return raw, other
    return {"same": (x, x.copy()), "row": (x[0].copy(), x), "col": (x[:, 0].copy(), x), "t": (x, x.T.copy())}[how]


@settings(max_examples=FUZZ_EXAMPLES)
@given(op=st.sampled_from(sorted(OPS)), raw=RAW, other=RAW,
       how=st.sampled_from(["independent", "same", "row", "col", "t"]))
def test_public_api_gives_a_lazybn_error_or_the_numpy_answer(op: str, raw: Any, other: Any, how: str) -> None:
    call, oracle = OPS[op]
    raw_a, raw_b = _pair(raw, other, how)
    if op in UNARY:
        raw_b = raw_a
    try:
        a = lazy(raw_a)
        b = lazy(raw_b)
        with np.errstate(all="ignore"):
            got = call(a, b)
    except LazybnError as exc:
        OUTCOMES[f"rejected: {type(exc).__name__}"] += 1
        OUTCOMES[f"by op: {op}: {type(exc).__name__}"] += 1
        return
    with np.errstate(all="ignore"):
        want = oracle(np_of(a), np_of(b))
    assert want is not None, f"{op} accepted arrays it must reject: {np_of(a).shape} {np_of(b).shape}"
    result = np.asarray(got.array)
    assert _close(result, np.asarray(want), op), f"{op}: got {result!r}, want {want!r}"
    OUTCOMES["computed: equal to numpy"] += 1
    if not np.isfinite(result).all():
        OUTCOMES["computed: equal to numpy, with NaN/inf propagated"] += 1


_MATRICES = hnp.arrays(st.sampled_from([np.float32, np.float64]),
                       hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6) | st.sampled_from([(0, 3), (3, 0)]),
                       elements=st.floats(-1e3, 1e3, width=32))
_DATA = st.one_of(
    _MATRICES, _MATRICES, _MATRICES,
    hnp.arrays(st.sampled_from([np.int64, np.uint8, np.bool_, np.float16, np.complex128]),
               hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)),
    st.sampled_from([None, "text", 3.5, [[1.0, 2.0]]]),
)


@settings(max_examples=max(40, FUZZ_EXAMPLES // 6), deadline=None)
@given(x=_DATA, y=_DATA, derive=st.sampled_from([True, True, True, False]),
       poison=st.sampled_from([None, None, np.nan, -np.inf, 1e30]), batch=st.integers(2, 5) | st.integers(-1, 1), bn=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.none() | st.integers(0, 3),
       opt=st.sampled_from([lb.SGD(0.1), lb.SGD(0.1, weight_decay=0.5, bn_weight_decay=0.5),
                            lb.Momentum(50.0, weight_decay=1e3), lb.Adam(1.0, weight_decay=1e4, decoupled_weight_decay=True),
                            lb.RMSProp(0.1, weight_decay=1e30)]),
       fixed=st.booleans())
def test_training_gives_a_lazybn_error_or_a_finite_network(x: Any, y: Any, derive: bool, poison: float | None,
                                                          batch: int, bn: bool, dtype: Any, seed: int | None,
                                                          opt: lb.Optimizer, fixed: bool) -> None:
    """``train_epoch`` on any data, with optimizers whose weight decay may blow the weights up and
    with the first layer trainable or not: a lazybn error, or a network whose every array is
    finite (a batch with NaN/inf, or a step that overflows, is refused, never applied)."""
    if derive and isinstance(x, np.ndarray) and x.ndim == 2:  # targets that fit, for some x
        y = np.eye(2, dtype=x.dtype)[np.arange(x.shape[0]) % 2]
    if poison is not None and isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64) and x.size:
        x = x.copy()
        x.flat[x.size // 2] = poison
    features = x.shape[1] if isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] else 3
    layers = lb.mlp((features, 3, 2), batchnorm=bn, dtype=dtype, seed=0)
    first = layers[0]
    if fixed and isinstance(first, (lb.Linear, lb.LinearNoBias)):
        layers[0] = replace(first, trainable=False)
    rng = None if seed is None else np.random.default_rng(seed)
    try:
        with np.errstate(all="ignore"):
            new, _, loss = lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, y, batch, rng)
    except LazybnError as exc:
        OUTCOMES[f"train_epoch rejected: {type(exc).__name__}"] += 1
        return
    arrays = [getattr(layer, f).array for layer in new for f in ("w", "b", "mu", "var", "gamma", "beta")
              if hasattr(layer, f)]
    assert all(np.isfinite(a).all() for a in arrays)
    assert np.isfinite(loss)
    OUTCOMES["train_epoch trained"] += 1
