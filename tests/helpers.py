"""Oracles and strategies shared by the tests: plain numpy is the reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

F = NDArray[np.floating[Any]]
DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


def elements(dtype: np.dtype[Any], big: float = 1e6) -> st.SearchStrategy[float]:
    """Finite values of mixed magnitude: ordinary, huge and tiny."""
    width: Literal[32, 64] = 32 if dtype == np.float32 else 64
    def exact(v: float) -> float:
        return float(dtype.type(v))

    return st.one_of(
        st.floats(-10.0, 10.0, width=width),
        st.floats(exact(-big), exact(big), width=width),
        st.floats(exact(-1e-6), exact(1e-6), width=width),
    )


def shapes2(min_side: int = 0, max_side: int = 9) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(min_side, max_side), st.integers(min_side, max_side))


def arrays(dtype: np.dtype[Any], shape: tuple[int, ...] | st.SearchStrategy[tuple[int, int]],
           big: float = 1e6) -> st.SearchStrategy[F]:
    return hnp.arrays(dtype, shape, elements=elements(dtype, big))


def assert_matches_numpy(got: F, want: F, dtype: np.dtype[Any], scale: F | float | None = None) -> None:
    """``got`` (lazybn) equals ``want`` (numpy oracle) within the dtype's rounding.

    ``scale`` is the magnitude the result's rounding error is relative to (for sums: the sum of
    absolute values of the terms); by default the result itself.
    """
    assert got.dtype == dtype, f"dtype {got.dtype} != {dtype}"
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    with np.errstate(all="ignore"):
        ref = np.abs(want) if scale is None else np.broadcast_to(np.abs(scale), want.shape)
        tol = RTOL[dtype] * (ref + np.finfo(dtype).tiny)
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        same = got.astype(np.float64) == want.astype(np.float64)  # includes equal infinities
        # an infinite oracle value makes the tolerance infinite: there only that infinity is right
        close = (err <= tol) & np.isfinite(want) & np.isfinite(tol)
        bad = ~(close | same | (np.isnan(got) & np.isnan(want)))
    assert not bad.any(), f"{bad.sum()} elements differ; worst got {got[bad][:3]} want {want[bad][:3]}"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with extra environment variables."""
    full = {**os.environ, **env}
    root = str(Path(__file__).resolve().parent.parent)
    full["PYTHONPATH"] = root + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


ZIP_HEADER_DAMAGE: dict[str, tuple[int, int]] = {
    "encrypted member": (8, 0x0001),  # general-purpose flag bit 0
    "compressed patched data": (8, 0x0020),  # flag bit 5
    "unknown compression method": (10, 99),
    "future zip version": (6, 99),  # version needed to extract: 9.9
}
"""One damaged field of a zip archive's central directory: (offset in each entry, the value written there)."""


def damage_zip_headers(raw: bytes, how: str, member: str | None = None) -> bytes:
    """``raw`` (a zip archive) with the field ``ZIP_HEADER_DAMAGE[how]`` of every central directory entry
    overwritten, or only of ``member``'s."""
    offset, value = ZIP_HEADER_DAMAGE[how]
    out = bytearray(raw)
    start = out.find(b"PK\x01\x02")
    assert start > 0, "not a zip archive with a central directory"
    damaged = 0
    while start >= 0:
        size = int.from_bytes(out[start + 28:start + 30], "little")  # the file name's, stored from byte 46
        if member is None or out[start + 46:start + 46 + size] == member.encode():
            out[start + offset:start + offset + 2] = value.to_bytes(2, "little")
            damaged += 1
        start = out.find(b"PK\x01\x02", start + 4)
    assert damaged, f"no member {member!r}"
    return bytes(out)


NPY_HEADER_DAMAGE = ("header length cut short", "dimension beyond int64", "dimension too large to allocate")
"""Damage to one array's ``.npy`` header inside an uncompressed ``.npz`` (see :func:`damage_npy_header`)."""


def damage_npy_header(raw: bytes, how: str, member: str | None = None) -> bytes:
    """``raw`` (an uncompressed .npz, or with ``member`` None a .npy file) with the ``.npy`` header of
    ``member`` damaged as ``how`` says (:data:`NPY_HEADER_DAMAGE`): its length field set to 12 bytes, or
    its first dimension replaced by a 20-digit number or by 10**15 (the header keeps its length: the
    spaces that pad it give way)."""
    out = bytearray(raw)
    start = out.index(b"\x93NUMPY", 0 if member is None else out.index(member.encode()))
    assert out[start + 6] == 1, "not a .npy file of format 1.0"
    length = int.from_bytes(out[start + 8:start + 10], "little")
    if how == "header length cut short":
        out[start + 8:start + 10] = (12).to_bytes(2, "little")
        return bytes(out)
    digits = {"dimension beyond int64": b"9" * 20, "dimension too large to allocate": b"1" + b"0" * 15}[how]
    header = bytes(out[start + 10:start + 10 + length])
    i = header.index(b"'shape': (") + len(b"'shape': (")
    j = i
    while header[j:j + 1].isdigit():
        j += 1
    grown = header[:i] + digits + header[j:]
    extra = len(grown) - len(header)
    assert grown.endswith(b" " * extra + b"\n"), "the header has too little padding"
    out[start + 10:start + 10 + length] = grown[:length - 1] + b"\n"
    return bytes(out)
