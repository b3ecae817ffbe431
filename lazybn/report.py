"""Run reports: a directory with a markdown report, metrics as CSV and JSON, and PNG plots.

Shared by ``lazybn train`` and every experiment. Every file is written atomically. Plots need
matplotlib (the ``plot`` extra); without it the run completes and the report says so.
:func:`interrupts_held` keeps a Ctrl-C from cutting a run's last writes short.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
import os
import platform
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from ._files import atomic_write_bytes

Row = Mapping[str, Any]


def environment() -> dict[str, str]:
    """Versions and machine facts for the report."""
    import numba
    import numpy as np
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from . import __version__

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]  # numpy's (numba may load SciPy's too)
    blas = [i for i in blas if str(i["filepath"]).startswith(str(Path(np.__file__).parent))] or blas

    return {
        "lazybn": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
        "numba": numba.__version__, "platform": platform.platform(), "cpu": cpu,
        "cores": str(os.cpu_count()), "numba threads": str(numba.get_num_threads()),
        "BLAS threads": ", ".join(f"{i['num_threads']} ({i['internal_api']})" for i in blas) or "unknown",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _json_value(v: Any) -> Any:
    """NaN and infinities have no JSON spelling: they are written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_metrics(out: Path, name: str, rows: Sequence[Row]) -> None:
    """``name.csv`` and ``name.json`` holding the same rows (in the JSON, a NaN or infinity is null)."""
    strict = [{k: _json_value(v) for k, v in r.items()} for r in rows]
    atomic_write_bytes(out / f"{name}.json", json.dumps(strict, indent=1, default=str, allow_nan=False).encode())
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(out / f"{name}.csv", buf.getvalue().encode())


def markdown_table(rows: Sequence[Row], floats: str = "{:.4f}") -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns, in order of appearance

    def fmt(v: Any) -> str:
        return floats.format(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_lines(path: Path, panels: Sequence[tuple[str, str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]],
               title: str = "", xlabel: str = "epoch") -> bool:
    """One figure with one panel per (title, y label, {series: (xs, ys)}); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (ptitle, ylabel, series) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
        ax.set_title(ptitle)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if series:  # a run stopped before its first epoch has none
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def write_report(out: Path, title: str, command: str, settings: Mapping[str, Any], sections: Sequence[tuple[str, str]],
                 figures: Sequence[str], plots_ok: bool) -> Path:
    """``report.md``: title, command, settings, sections (heading, markdown), figures, environment."""
    def show(v: Any) -> str:
        return str(v.value) if isinstance(v, enum.Enum) else f"{v:g}" if isinstance(v, float) else str(v)

    parts = [f"# {title}\n", f"Command: `{command}`\n", "## Settings\n",
             markdown_table([{"setting": k, "value": show(v)} for k, v in settings.items()])]
    for heading, body in sections:
        parts += [f"## {heading}\n", body]
    if figures and plots_ok:
        parts += ["## Figures\n"] + [f"![{f}]({f})\n" for f in figures]
    elif figures:
        parts += ["## Figures\n", "Plots were skipped: matplotlib is not installed "
                  "(`python -m pip install 'lazybn[plot]'`).\n"]
    parts += ["## Environment\n", markdown_table([{"item": k, "value": v} for k, v in environment().items()])]
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


WRITING = "saving what was measured; stopping once it is written"  # what a held Ctrl-C prints


@contextmanager
def interrupts_held(why: str) -> Iterator[list[int]]:
    """Within the block, Ctrl-C (and SIGTERM where it is handled in Python, as ``lazybn`` handles it)
    does not interrupt: each such signal is added to the list yielded, and the first prints
    ``lazybn: why`` on stderr. After the block the handlers are put back and the caller acts on the
    list (a run then stops as interrupted). A signal that is ignored, or left to the system, stays
    so; off the main thread, which receives no signals, the block runs as it is."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum: int, frame: FrameType | None) -> None:
        if not held:
            try:
                print(f"lazybn: {why}", file=sys.stderr, flush=True)
            except (OSError, RuntimeError, ValueError):  # stderr closed, or being written when the signal came
                pass
        held.append(signum)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    caught = {sig: handler for sig, handler in before.items() if callable(handler)}
    for sig in caught:
        signal.signal(sig, note)
    try:
        yield held
    finally:
        for sig, handler in caught.items():
            signal.signal(sig, handler)
