"""The kernel cache: generated source on disk, numba's compiled code beside it, a dict in memory.

A kernel is written atomically to ``<cache_dir>/kernels-v<CODEGEN_VERSION>/k_<key16>.py`` and
imported as a real module (registered in ``sys.modules`` first, so numba's ``cache=True`` can
find it again in the next process). ``LAZYBN_DEBUG=1`` prints each kernel's path and source when
it is loaded; ``LAZYBN_NO_COMPILE=1`` turns any compilation into a :class:`CompileError`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

from .._files import atomic_write_bytes, cache_dir
from ..errors import CompileError

KernelFn = Callable[..., None]
CODEGEN_VERSION = 15  # of lazybn.fuse.lower's kernels: part of their keys and of the cache's folder


@final
@dataclass(frozen=True, slots=True)
class Kernel:
    """A generated kernel: exactly the source written to the kernel cache, and its calling shape."""

    key: str
    source: str
    n_leaves: int
    n_consts: int
    n_sizes: int
    outputs: tuple[tuple[int, ...], ...]  # size slots of each output's shape
    temporaries: tuple[tuple[int, ...], ...]  # size slots of each temporary array
    passes: int  # loop nests over a matrix domain
    par: bool


@final
@dataclass(frozen=True, slots=True)
class KernelStats:
    """Counters since the process started (or since :func:`reset_stats`)."""

    compiled: int  # kernels numba had to compile (no usable disk cache entry)
    disk_hits: int  # kernels loaded from numba's disk cache
    memory_hits: int  # compute calls served by an already loaded kernel
    launches: int  # kernel calls
    traces: int  # calls of a @fused function that ran its body and logged its kernels
    replays: int  # calls of a @fused function served by replaying logged kernels


_counts = {"compiled": 0, "disk_hits": 0, "memory_hits": 0, "launches": 0, "traces": 0, "replays": 0}
_loaded: dict[str, KernelFn] = {}
_lock = threading.RLock()
_forks_wait = False


def _forks_wait_for_compiles() -> None:
    """From the first kernel load on (numba is imported lazily), a fork waits for a kernel that
    another thread is compiling: the child would inherit the compile locks (this module's and
    numba's) held by a thread it does not have, and hang at its first compile."""
    global _forks_wait
    if _forks_wait:
        return
    _forks_wait = True
    from numba.core.compiler_lock import global_compiler_lock

    numba_lock: Any = global_compiler_lock  # untyped
    held = threading.local()  # whether this thread's hold() took both locks

    def hold() -> None:
        _lock.acquire()
        try:
            numba_lock.acquire()
        except BaseException:  # a signal (Ctrl-C) while waiting: the fork goes on, and no lock stays held
            _lock.release()
            raise
        held.both = True

    def free() -> None:
        if getattr(held, "both", False):
            held.both = False
            numba_lock.release()
            _lock.release()

    os.register_at_fork(before=hold, after_in_parent=free, after_in_child=free)


def stats() -> KernelStats:
    return KernelStats(**_counts)


def reset_stats() -> None:
    for k in _counts:
        _counts[k] = 0


def count(name: str, n: int = 1) -> None:
    _counts[name] += n


def kernel_dir() -> Path:
    return cache_dir() / f"kernels-v{CODEGEN_VERSION}"


def _import(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for a non-file path
        raise CompileError(f"cannot import generated kernel {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _purge_numba_cache(path: Path) -> None:
    pyc = path.parent / "__pycache__"
    if pyc.is_dir():
        for f in pyc.glob(path.stem + ".*"):
            f.unlink(missing_ok=True)


def load(kernel: Kernel) -> KernelFn:
    """The compiled function for ``kernel``: from memory, else from disk, else compiled."""
    fn = _loaded.get(kernel.key)
    if fn is not None:
        return fn
    with _lock:
        fn = _loaded.get(kernel.key)
        if fn is not None:
            return fn
        _forks_wait_for_compiles()
        name = f"lazybn_kernels.k_{kernel.key[:16]}"
        path = kernel_dir() / f"k_{kernel.key[:16]}.py"
        data = kernel.source.encode()
        try:
            current = path.read_bytes()
        except OSError:
            current = b""
        if current != data:  # missing, corrupt or from another lazybn: (re)write it
            try:
                atomic_write_bytes(path, data)
                _purge_numba_cache(path)
            except OSError as exc:
                raise CompileError(
                    f"cannot write the kernel cache {path.parent} ({exc.strerror or exc}); set LAZYBN_CACHE_DIR "
                    "to a writable directory") from exc
        if os.environ.get("LAZYBN_DEBUG"):
            print(f"lazybn: kernel {path}\n{kernel.source}", file=sys.stderr)
        module = _import(path, name)
        compiled: KernelFn = module.kernel
        _loaded[kernel.key] = compiled
        return compiled


def first_call(kernel: Kernel, fn: KernelFn, args: list[Any]) -> None:
    """Run a kernel's first call in this process, counting whether numba compiled it.

    A broken disk-cache entry (numba's index or object file) is deleted and compiled afresh.
    """
    if os.environ.get("LAZYBN_NO_COMPILE") and not _has_cache_entry(fn):
        raise CompileError(
            f"LAZYBN_NO_COMPILE is set and kernel {kernel.key[:16]} is not in the disk cache "
            f"{kernel_dir()}; unset it or warm the cache first"
        )
    try:
        fn(*args)
    except Exception as exc:  # a corrupt numba cache entry: purge and compile again
        if not _has_cache_entry(fn):
            raise
        path = kernel_dir() / f"k_{kernel.key[:16]}.py"
        _purge_numba_cache(path)
        _loaded.pop(kernel.key, None)
        fresh = load(kernel)
        try:
            fresh(*args)
        except Exception:
            raise exc from None
        fn = fresh
    st: Any = getattr(fn, "stats", None)
    misses = sum(st.cache_misses.values()) if st is not None else 1
    count("compiled" if misses else "disk_hits")


def _has_cache_entry(fn: KernelFn) -> bool:
    cache: Any = getattr(fn, "_cache", None)
    index = getattr(cache, "_cache_file", None)
    path = getattr(index, "_index_path", None)
    return bool(path) and os.path.exists(str(path))


def clear_disk_cache() -> None:
    """Delete every cached kernel of this lazybn version (they are rebuilt on demand)."""
    shutil.rmtree(kernel_dir(), ignore_errors=True)
    _loaded.clear()
