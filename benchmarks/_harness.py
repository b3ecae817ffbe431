"""Shared helpers for the lazybn benchmarks: timing, copy bandwidth, isolated runs, machine facts, tables.

Conventions used by every benchmark:

* Times are seconds per call; :class:`Timing` keeps every repeat, its median and its spread.
* Bandwidth is in GB/s (1e9 bytes/s). A copy of ``nbytes`` counts ``2 * nbytes`` (one read,
  one write); a kernel counts the bytes it must read plus the bytes it must write, so both
  figures are comparable. Write-allocate traffic (reading the destination line before it is
  written) is not counted by either.
* Baselines that start their own thread pools (torch, OpenBLAS) run in a child process
  (:func:`run_isolated`, :func:`run_snippet`): two threaded runtimes in one process on a
  small machine stall each other.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, final

import numpy as np

JSON: TypeAlias = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]

_MARK = "@@lazybn-bench-result@@"


@final
@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds per call over ``repeat`` repeats of ``loops`` calls each (after one warm-up call)."""

    samples: tuple[float, ...]
    loops: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def worst(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = the middle half lies within 5%)."""
        if len(self.samples) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return (q3 - q1) / self.median if self.median > 0 else 0.0

    def as_json(self) -> dict[str, JSON]:
        return {"median_s": self.median, "best_s": self.best, "worst_s": self.worst, "spread": self.spread,
                "loops": self.loops, "samples_s": list(self.samples)}

    def __str__(self) -> str:
        return f"{fmt_time(self.median)} ±{100 * self.spread:.0f}% (best {fmt_time(self.best)})"


def timeit(fn: Callable[[], object], *, repeat: int = 15, min_time: float = 0.02) -> Timing:
    """Time ``fn()``: one warm-up call, then ``repeat`` samples of enough calls to last ``min_time`` s each."""
    if repeat < 1 or min_time < 0:
        raise ValueError("timeit: repeat must be >= 1 and min_time >= 0")
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    loops = max(1, int(min_time / first)) if first > 0 else 1
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops)
    return Timing(tuple(samples), loops)


def fmt_time(seconds: float) -> str:
    """``1.23 ms``, ``45.6 µs``, ``1.20 s``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


@final
@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Copy bandwidth: ``2 * nbytes / time`` (read + write bytes), in GB/s."""

    nbytes: int
    timing: Timing

    @property
    def gbps(self) -> float:
        return 2 * self.nbytes / self.timing.median / 1e9

    @property
    def best_gbps(self) -> float:
        return 2 * self.nbytes / self.timing.best / 1e9


def copy_bandwidth(nbytes: int, *, repeat: int = 15, min_time: float = 0.02) -> Bandwidth:
    """Bandwidth of ``np.copyto(dst, src)`` between two preallocated ``nbytes`` buffers (single thread).

    The destination is written once before timing, so page faults are not counted. Below about
    1 MiB the figure is a cache figure, and on some VMs glibc's ``rep movsb`` copy path runs at a
    tenth of the speed there (5.5 GB/s measured on this project's 2-core machine for 64-256 KiB);
    compare with kernels at sizes well above the last-level cache.
    """
    n = max(1, nbytes // 4)
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    dst[...] = 0.0
    return Bandwidth(src.nbytes, timeit(lambda: np.copyto(dst, src), repeat=repeat, min_time=min_time))


RETAIN = 1 << 30  # bytes


def retain_freed_memory() -> dict[str, str]:
    """Make glibc's malloc keep freed blocks of up to 1 GiB for reuse, in this process; returns
    the environment that does the same for a child process.

    By default glibc returns a freed block above its (adaptive) mmap threshold to the kernel, and
    trims the heap when a large top block is freed, so a loop that allocates its N x D outputs
    afresh on every call page-faults and zeroes them on every call (measured: 8192 x 2048 float32
    batch norm 59 ms -> 42 ms with this setting). Every contender of a benchmark gets the same
    setting. Linux/glibc only; elsewhere it does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(name)
        libc.mallopt(-1, RETAIN)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, RETAIN)  # M_MMAP_THRESHOLD
    return {"MALLOC_TRIM_THRESHOLD_": str(RETAIN), "MALLOC_MMAP_THRESHOLD_": str(RETAIN)}


def _child(code: str, timeout: float, env: dict[str, str] | None) -> JSON:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            result: JSON = json.loads(line[len(_MARK):])
            return result
    raise RuntimeError(f"benchmark child process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def run_snippet(code: str, *, timeout: float = 600.0, env: dict[str, str] | None = None) -> JSON:
    """Run Python source in a fresh interpreter; it must bind ``result`` to a JSON-serialisable value."""
    wrapper = (f"{code}\n\nimport json as _json\n"
               f"print({_MARK!r} + _json.dumps(result), flush=True)\n")
    return _child(wrapper, timeout, env)


def run_isolated(fn: Callable[..., JSON], *args: JSON, timeout: float = 600.0,
                 env: dict[str, str] | None = None) -> JSON:
    """Call the module-level function ``fn(*args)`` in a fresh interpreter and return its JSON result.

    The function's file is loaded under a private module name, so a script's ``__main__`` block
    does not run again in the child. Arguments and result travel as JSON.
    """
    path = inspect.getsourcefile(fn)
    if path is None or "<" in fn.__qualname__:
        raise ValueError(f"run_isolated: {fn!r} must be a module-level function defined in a file")
    code = (
        "import importlib.util, json, sys\n"
        f"sys.path[:0] = {[os.path.dirname(os.path.abspath(path)), os.getcwd()]!r}\n"
        f"spec = importlib.util.spec_from_file_location('_bench_child', {path!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['_bench_child'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        f"result = getattr(mod, {fn.__qualname__!r})(*json.loads({json.dumps(list(args))!r}))\n"
    )
    return run_snippet(code, timeout=timeout, env=env)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _blas() -> str:
    try:  # threadpoolctl reports what is actually loaded; optional
        tpc: Any = importlib.import_module("threadpoolctl")
        infos = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
                 for i in tpc.threadpool_info() if i.get("user_api") == "blas"]
        if infos:
            return ", ".join(infos)
    except ImportError:
        pass
    try:
        cfg: Any = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except (TypeError, KeyError):
        return "unknown"


def _threading_layer() -> str:
    import numba

    nb: Any = numba
    try:  # known only once a parallel kernel has run in this process
        return str(nb.threading_layer())
    except ValueError:
        cfg: Any = numba.config
        return f"{cfg.THREADING_LAYER} (not started yet)"


def machine_facts() -> dict[str, str]:
    """CPU, cores, library versions and BLAS; torch's version is read without importing torch."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {usable} usable",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": f"{numba.__version__} ({numba.get_num_threads()} threads, layer {_threading_layer()})",
        "torch": _version("torch"),
        "blas": _blas(),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table; ``align`` has one of ``l``/``r`` per column (default: first l, rest r)."""
    al = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, al)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, al)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
