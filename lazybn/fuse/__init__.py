"""The fusion engine: ``evaluate`` turns delayed expressions into arrays with one kernel launch.

The steps are separate and inspectable: :func:`lazybn.fuse.canon.canonicalize` (structure and
arguments), :func:`lazybn.fuse.lower.generate` (source text), :mod:`lazybn.fuse.cache` (disk and
memory cache, numba). :func:`plan` gives the :class:`Kernel` a call would run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, final

# numba's OpenMP workers spin after each parallel region unless told otherwise; on a machine with
# more runnable threads than cores a spinning worker that loses its core stalls the next launch by
# a scheduler time slice (about 12 ms per Par call measured on 2 shared cores). Read when numba
# starts its thread pool (the first Par kernel), so it is set here; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np

from . import cache
from .cache import Kernel, KernelFn
from .cache import KernelStats as KernelStats
from .cache import clear_disk_cache as clear_disk_cache
from .cache import reset_stats as reset_stats
from .cache import stats as stats
from .graph import Derived, FloatArray, Node, Scalar
from .canon import Canon, canonicalize
from .lower import generate

# Below this many bytes in the largest loop nest, a Par computation runs the serial kernel:
# starting threads costs more than the work. Measured on 2 cores (batch-norm forward + backward,
# Par against Seq): 1.2-1.4x slower at 2 MiB in both dtypes, 1.1-1.2x slower at 2 MiB of float32
# rows (512x1024) but 0.9x at 4 MiB of float64, 0.7x at 4 MiB of float32 and beyond.
PAR_THRESHOLD_BYTES = 1 << 22

_kernels: dict[tuple[Any, ...], Kernel] = {}

# A process forked after a Comp.Par kernel ran cannot start that kernel's thread pool again:
# numba's OpenMP layer terminates such a child ("fork() called from a process already using GNU
# OpenMP"), as with multiprocessing's default start method on Linux or a server's forked
# workers. The child runs every kernel serially instead (results as Comp.Seq's: the same to
# float64 reassociation) and forgets the replays that call Par kernels (``after_fork`` holds
# the forgetting functions).
_par_used = False
_serial_only = False
after_fork: list[Callable[[], None]] = []


def _forked() -> None:
    global _serial_only
    if _par_used:
        _serial_only = True
        for forget in after_fork:
            forget()


os.register_at_fork(after_in_child=_forked)


def _started_par() -> None:
    global _par_used
    _par_used = True


@final
@dataclass(frozen=True, slots=True)
class Launch:
    """One kernel call made by :func:`evaluate`, as :func:`recording` logs it.

    Everything a replay needs without the expression graph: the compiled function, the arrays it
    read (in argument order), its scalar and size arguments (already typed), the shapes of the
    arrays it wrote and which of them answer each root (``results[k] = outs[order[k]]``).
    """

    fn: KernelFn
    leaves: tuple[FloatArray, ...]
    tail: tuple[Any, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype[Any]
    par: bool
    order: tuple[int, ...]
    results: tuple[FloatArray, ...]
    dynamic: tuple[tuple[int, int, Derived], ...]  # (position in tail, Scalar index, its ops) per runtime scalar


@final
@dataclass(frozen=True, slots=True)
class Matmul:
    """One ``matmul`` (BLAS), as :func:`recording` logs it."""

    a: FloatArray
    b: FloatArray
    result: FloatArray


@final
@dataclass(frozen=True, slots=True)
class Transpose:
    """One ``transpose`` (a view), as :func:`recording` logs it."""

    a: FloatArray
    result: FloatArray


@final
@dataclass(frozen=True, slots=True)
class Reshape:
    """One ``reshape`` (a view), as :func:`recording` logs it."""

    a: FloatArray
    shape: tuple[int, ...]
    result: FloatArray


@final
@dataclass(frozen=True, slots=True)
class HostCall:
    """One :func:`host_call` (an array made by Python from plain values), as :func:`recording` logs it.

    A replay calls ``fn(*args)`` again, with the current value of each dynamic argument at the
    positions ``dynamic`` names: (argument position, index of the dynamic value, the ops that
    derive the argument from it: see :class:`~lazybn.fuse.graph.Scalar`).
    """

    fn: Callable[..., FloatArray]
    args: tuple[Any, ...]
    dynamic: tuple[tuple[int, int, Derived], ...]
    result: FloatArray


Logged = Launch | Matmul | Transpose | Reshape | HostCall


def host_call(fn: Callable[..., FloatArray], *args: Any) -> FloatArray:
    """``fn(*args)`` made read-only, where ``fn`` builds an array from plain values only (a dropout
    mask from a seed); a replay repeats the call, so dynamic arguments (:class:`Scalar`) may be
    among ``args``."""
    plain = tuple(a.value if type(a) is Scalar else a for a in args)
    out = fn(*plain)
    out.setflags(write=False)
    rec: Recording | None = getattr(_local, "rec", None)
    if rec is not None:
        dynamic = tuple((k, a.index, a.ops) for k, a in enumerate(args) if type(a) is Scalar)
        rec.log.append(HostCall(fn, plain, dynamic, out))
    return out


@final
@dataclass(slots=True)
class Recording:
    """What one thread did inside :func:`recording`: the array operations in order, and whether
    Python read array values (which a replay could not repeat)."""

    log: list[Logged]
    read_values: bool = False


_local = threading.local()


@contextmanager
def recording() -> Iterator[Recording]:
    """Log this thread's kernel launches, matmuls, transposes and host calls inside the block."""
    outer = getattr(_local, "rec", None)
    rec = _local.rec = Recording([])
    try:
        yield rec
    finally:
        _local.rec = outer


def active() -> Recording | None:
    """The current thread's recording, if one is running."""
    rec: Recording | None = getattr(_local, "rec", None)
    return rec


def _choose_par(canon: Canon, dtype: np.dtype[Any], par: bool) -> bool:
    if not par or _serial_only:
        return False
    biggest = max((canon.sizes[d[0]] * canon.sizes[d[1]] for *_, d in canon.nodes if len(d) == 2), default=0)
    return biggest > 0 and biggest * dtype.itemsize >= PAR_THRESHOLD_BYTES  # no matrix loop: serial


def _kernel(canon: Canon, dtype: np.dtype[Any], par: bool) -> Kernel:
    key = (tuple(canon.nodes), tuple(canon.roots), dtype.char, par)  # dtype.name costs ~6 µs a call
    k = _kernels.get(key)
    if k is None:
        k = _kernels[key] = generate(canon, dtype, par)
    return k


def plan(roots: Sequence[Node], dtype: np.dtype[Any], par: bool) -> Kernel:
    """The kernel that :func:`evaluate` would run for ``roots`` (nothing is compiled)."""
    canon = canonicalize(roots)
    return _kernel(canon, dtype, _choose_par(canon, dtype, par))


def evaluate(roots: Sequence[Node], dtype: np.dtype[Any], par: bool) -> list[FloatArray]:
    """Compute every root in one kernel launch; returns fresh arrays in root order."""
    canon = canonicalize(roots)
    unique = list(dict.fromkeys(canon.roots))
    if len(unique) < len(canon.roots):  # the same expression asked for twice: compute it once
        canon.roots, order = unique, [unique.index(r) for r in canon.roots]
    else:
        order = list(range(len(unique)))
    use_par = _choose_par(canon, dtype, par)
    kernel = _kernel(canon, dtype, use_par)
    outs = [np.empty(tuple(canon.sizes[s] for s in dims), dtype) for dims in kernel.outputs]
    consts = [np.float64(v if type(v) is not Scalar else v.value) for v in canon.consts]  # float64: see lower
    args: list[Any] = [*canon.leaves, *consts, *(np.uint64(n) for n in canon.sizes), *outs]
    if use_par:
        import numba  # imported on first use: `import lazybn` stays fast

        _started_par()
        args.append(np.uint64(numba.get_num_threads()))
    fn = cache._loaded.get(kernel.key)
    if fn is None:
        fn = cache.load(kernel)
        cache.first_call(kernel, fn, args)
    else:
        cache.count("memory_hits")
        fn(*args)
    cache.count("launches")
    for o in outs:
        o.setflags(write=False)
    results = [outs[k] for k in order]
    rec: Recording | None = getattr(_local, "rec", None)
    if rec is not None:
        n = len(canon.leaves)
        tail = tuple(args[n:n + len(canon.consts) + len(canon.sizes)])
        dynamic = tuple((k, v.index, v.ops) for k, v in enumerate(canon.consts) if type(v) is Scalar)
        rec.log.append(Launch(fn, tuple(canon.leaves), tail, tuple(o.shape for o in outs), dtype, use_par,
                              tuple(order), tuple(results), dynamic))
    return results
