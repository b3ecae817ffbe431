"""The generated loops vectorise.

The kernels' speed rests on LLVM turning each contiguous column loop into SIMD code; a loop
that does not vectorise (signed loop bounds keep numba's negative-index wraparound checks, an
accumulator LLVM thinks may alias an input, a reduction it may not reorder) runs several
times slower while every result stays right, so only the generated code can show it. Each case
builds one kernel whose work is a single loop shape, recompiles its Python source without the
disk cache (numba does not keep the IR of cached code) for the signature it ran with, and looks
for vector arithmetic on the element type in the optimised LLVM IR.

``max_cols`` is left out: its NaN-propagating running maximum is a select LLVM does not turn
into a vector reduction (without fast-math flags, which lazybn does not set), so it runs one
element at a time. It serves the softmax, over 10 columns in the MNIST network.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import pytest

import lazybn as lb
from lazybn import Comp, Fn, fuse
from lazybn.network import bn_backward, bn_forward

_ARITH = re.compile(r"= (f(?:add|sub|mul|div))(?: [a-z]+)* <(\d+) x (float|double)>")
_SCALAR = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _vector_ops(fn: Any) -> Counter[str]:
    """Vector arithmetic instructions of a launched kernel, compiled afresh, counted by element
    type ("float", "double") and by operation and type ("fadd double", ...)."""
    (sig,) = fn.signatures
    fresh = numba.jit(**{k: v for k, v in fn.targetoptions.items() if k != "cache"})(fn.py_func)
    fresh.compile(sig)
    counts: Counter[str] = Counter()
    for op, lanes, scalar in _ARITH.findall(fresh.inspect_llvm(sig)):
        if int(lanes) >= 2:
            counts[scalar] += 1
            counts[f"{op} {scalar}"] += 1
    return counts


def _launched(compute: Callable[[], object]) -> list[Any]:
    """The kernel functions ``compute`` launches, in order."""
    with fuse.recording() as rec:
        compute()
    return [entry.fn for entry in rec.log if isinstance(entry, fuse.Launch)]


def _m(shape: tuple[int, int], dtype: type, comp: Comp = Comp.Seq, seed: int = 0) -> lb.Matrix:
    return lb.matrix(np.random.default_rng(seed).standard_normal(shape).astype(dtype), comp=comp)


Case = Callable[[lb.Matrix, lb.Matrix], object]

# One loop shape each (see docs/performance.md, "Loop shapes").
CASES: dict[str, Case] = {
    "elementwise chain": lambda x, y: lb.compute(lb.amap(Fn.relu, x * y + 1.0) - x),
    "column sums (float64 accumulators)": lambda x, y: lb.compute(lb.sum_rows(x * y)),
    "row sums (row buffer)": lambda x, y: lb.compute(lb.sum_cols(x * y)),
    "mean broadcast back": lambda x, y: lb.compute(x - lb.rows_like(lb.scale(0.5, lb.sum_rows(x)), x)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_each_loop_shape_vectorises(name: str, dtype: type) -> None:
    x, y = _m((64, 96), dtype), _m((64, 96), dtype, seed=1)
    (fn,) = _launched(lambda: CASES[name](x, y))
    ops = _vector_ops(fn)
    assert ops[_SCALAR[np.dtype(dtype)]] > 0, f"{name} ({np.dtype(dtype)}): no vector arithmetic in {ops}"
    if "sums" in name:  # the accumulation itself: float64 additions, several at a time
        assert ops["fadd double"] > 0, f"{name}: the float64 accumulation is scalar: {ops}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flushing_subnormals_is_a_vector_compare_and_select(dtype: type) -> None:
    """The optimizers' moments go through ``Fn.flush_subnormal``: its branch must become a vector
    ``fcmp`` and ``select`` on the element type, not a scalar branch per element."""
    (fn,) = _launched(lambda: lb.compute(lb.amap(Fn.flush_subnormal, _m((64, 96), dtype))))
    (sig,) = fn.signatures
    fresh = numba.jit(**{k: v for k, v in fn.targetoptions.items() if k != "cache"})(fn.py_func)
    fresh.compile(sig)
    ir = fresh.inspect_llvm(sig)
    scalar = _SCALAR[np.dtype(dtype)]
    assert re.search(rf"= fcmp olt <\d+ x {scalar}>", ir), "the comparison is scalar"
    assert re.search(rf"= select <\d+ x i1> .*<\d+ x {scalar}>", ir), "the selection is scalar"


@pytest.mark.parametrize(("dtype", "comp", "shape"), [
    (np.float32, Comp.Seq, (100, 300)),
    (np.float64, Comp.Seq, (100, 300)),
    (np.float32, Comp.Par, (1024, 1024)),  # 4 MiB: the parallel kernels
])
def test_batch_norm_kernels_vectorise_their_arithmetic_and_float64_sums(dtype: type, comp: Comp,
                                                                         shape: tuple[int, int]) -> None:
    kernels = _bn_kernels(*shape, dtype, comp)
    assert len(kernels) == 2  # one forward, one backward
    for which, fn in zip(("forward", "backward"), kernels):
        ops = _vector_ops(fn)
        assert ops[_SCALAR[np.dtype(dtype)]] > 0, f"{which}: no vector arithmetic: {ops}"
        assert ops["fadd double"] > 0, f"{which}: the float64 statistics are summed one element at a time: {ops}"


def _bn_kernels(n: int, d: int, dtype: type, comp: Comp) -> list[Any]:
    """The forward's and the backward's kernel. Inside a recording the ``@fused`` step functions
    run their bodies (a replay would launch without logging), so both launches are logged."""
    x, dy = _m((n, d), dtype, comp), _m((n, d), dtype, comp, seed=1)

    def v(value: float) -> lb.Vector:
        return lb.vector(np.full(d, value, dtype), comp=comp)

    layer = lb.Batchnorm1d(v(0.0), v(1.0), v(1.0), v(0.0))

    def step() -> None:
        _, mu, var = bn_forward(x, layer)
        bn_backward(dy, x, layer, mu, var)

    return _launched(step)
