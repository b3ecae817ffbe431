"""File formats of MNIST: the :class:`Dataset` record, IDX files and ``label,p0,...,p783`` CSV.

Every reader checks its input and raises :class:`~lazybn.errors.DataError` naming the file
(and, for CSV, the line) when something is wrong; nothing here guesses or repairs data.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError

PIXELS: Final = 784
"""Pixels per image: 28 x 28, stored row by row."""

IDX_LABELS: Final = 0x00000801
"""IDX magic number of a label file: unsigned bytes, one dimension."""

IDX_IMAGES: Final = 0x00000803
"""IDX magic number of an image file: unsigned bytes, three dimensions (n, rows, cols)."""


@final
@dataclass(frozen=True, slots=True)
class Dataset:
    """One split of a digit data set.

    ``images`` is ``(n, 784)`` uint8 (28 x 28 pixels, row-major, 0..255); ``labels`` is ``(n,)``
    int64 with values 0..9. Construction checks this (raising :class:`DataError`) and marks both
    arrays read-only (``flags.writeable = False``), so a loaded data set cannot be changed by
    accident; copy an array to modify it.
    """

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]

    def __post_init__(self) -> None:
        im, lb = self.images, self.labels
        if im.dtype != np.uint8 or im.ndim != 2 or im.shape[1] != PIXELS:
            raise DataError(f"images must be a uint8 array of shape (n, {PIXELS}), got {im.dtype} {im.shape}")
        if lb.dtype != np.int64 or lb.shape != (im.shape[0],):
            raise DataError(f"labels must be an int64 array of shape ({im.shape[0]},), got {lb.dtype} {lb.shape}")
        if lb.size and (int(lb.min()) < 0 or int(lb.max()) > 9):
            raise DataError(f"labels must be in 0..9, found {int(lb.min())}..{int(lb.max())}")
        im.flags.writeable = False
        lb.flags.writeable = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e}); download it again") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def read_idx_dims(path: Path) -> tuple[NDArray[np.uint8], tuple[int, ...]]:
    """Read an IDX file and return ``(flat array, dims)``; see :func:`read_idx`."""
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header; the file is truncated")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in (IDX_LABELS, IDX_IMAGES):
        raise DataError(
            f"{path}: magic number 0x{magic:08x} found, expected 0x{IDX_LABELS:08x} (labels) or "
            f"0x{IDX_IMAGES:08x} (images); is this an IDX file (and gzipped only if named .gz)?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: header needs {header} bytes, the file has {len(data)}; the file is truncated")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)  # Python integers: up to 2**96, which int64 would wrap
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"{path}: {what}: header says {dims[0]} items of shape {dims[1:]}, i.e. {expected} data bytes, "
            f"but the file has {actual}; download the file again"
        )
    flat = np.frombuffer(data, dtype=np.uint8, offset=header).copy()
    return flat, dims


def read_idx(path: Path) -> NDArray[np.uint8]:
    """Read a standard IDX file (gzipped if the name ends in ``.gz``).

    Label files (magic ``0x00000801``) give shape ``(n,)``; image files (magic ``0x00000803``)
    give ``(n, rows * cols)``. A wrong magic number, or a data section shorter or longer than
    the header promises, raises :class:`DataError` naming the file and the numbers.
    """
    flat, dims = read_idx_dims(Path(path))
    return flat if len(dims) == 1 else flat.reshape(dims[0], math.prod(dims[1:]))  # -1 fails for no items


_INTEGER = re.compile(rb"\s*[+-]?[0-9]+\s*")  # what the CSV parser reads as an integer field
_INTEGERS = re.compile(rb"\s*[+-]?[0-9]+\s*(?:,\s*[+-]?[0-9]+\s*)*")
_BLANK_LINES = re.compile(rb"^[ \t\r\f\v]+(?:\n|\Z)", re.MULTILINE)  # spaces only: the parser reads a row of them


def _check_line(fields: list[bytes], path: Path, lineno: int) -> None:
    """Raise :class:`DataError` for the first problem in one CSV row; return if it is valid."""
    where = f"{path}, line {lineno}"
    if len(fields) != PIXELS + 1:
        raise DataError(f"{where}: {len(fields)} fields, expected {PIXELS + 1} (label then {PIXELS} pixels)")
    for col, field in enumerate(fields):
        if not _INTEGER.fullmatch(field):
            raise DataError(f"{where}, field {col + 1}: {field.decode(errors='replace')!r} is not an integer")
        value = int(field)
        top = 9 if col == 0 else 255
        if not 0 <= value <= top:
            what = "label" if col == 0 else "pixel"
            raise DataError(f"{where}, field {col + 1}: {what} {value} is outside 0..{top}")


def _locate_csv_error(data: bytes, path: Path) -> None:
    """Scan ``data`` line by line and raise :class:`DataError` at the first bad row (slow path)."""
    for lineno, raw in enumerate(data.split(b"\n")[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        if b"\r" in raw.removesuffix(b"\r"):
            raise DataError(f"{path}, line {lineno}: a carriage return (\\r) inside the line; lines end in \\n or "
                            "\\r\\n")
        fields = line.split(b",")
        if not _INTEGERS.fullmatch(line):  # e.g. "1_0" or "1e3", which Python's int() would read
            _check_line(fields, path, lineno)
        try:
            values = np.array(fields).astype(np.int64)
        except (ValueError, OverflowError):
            _check_line(fields, path, lineno)
            continue
        if len(fields) != PIXELS + 1 or not (0 <= values[0] <= 9) or values[1:].min() < 0 or values[1:].max() > 255:
            _check_line(fields, path, lineno)


def parse_csv(data: bytes, path: Path) -> Dataset:
    """Parse the bytes of an MNIST CSV file (``path`` is only used in messages); see :func:`read_csv_split`."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:  # every other byte a NUL
        raise DataError(f"{path}: the text is UTF-16 (or holds NUL bytes); save it as ASCII or UTF-8 text")
    header = data.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").strip()  # a UTF-8 byte order mark is not text
    if not header:
        raise DataError(f"{path}: line 1 is empty, expected a header line such as 'label,1x1,...'")
    if b"\r" in header:  # old Mac line ends: the whole file would be one header line
        raise DataError(f"{path}: lines end in a bare carriage return (\\r); use \\n or \\r\\n line ends")
    fields = header.split(b",")  # integers as the rows are read (" 5" is 5): a data row, valid or not, unless
    values = [int(f) for f in fields] if all(_INTEGER.fullmatch(f) for f in fields) else []  # they number the
    if values and not (max(values) > 255 and all(a < b for a, b in zip(values, values[1:]))):  # columns (0, 1, ...)
        raise DataError(f"{path}: line 1 is a data row, expected a header line such as 'label,1x1,...'; add one")
    body = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    if not body.strip():
        raise DataError(f"{path}: no data rows after the header")
    try:
        # numpy >= 1.23 parses in C: about 1 s for the 60000-row training file.
        table = np.loadtxt(io.BytesIO(body), delimiter=",", dtype=np.int16, comments=None, ndmin=2)
    except ValueError as e:
        _locate_csv_error(data, path)
        try:  # every row is valid: lines of spaces only, which are blank lines
            table = np.loadtxt(io.BytesIO(_BLANK_LINES.sub(b"", body)), delimiter=",", dtype=np.int16, comments=None,
                               ndmin=2)
        except ValueError:
            raise DataError(f"{path}: not a valid MNIST CSV file ({e})") from e
    labels, pixels = table[:, :1].ravel(), table[:, 1:]
    if table.shape[1] != PIXELS + 1 or labels.min() < 0 or labels.max() > 9 or pixels.min() < 0 or pixels.max() > 255:
        _locate_csv_error(data, path)
        raise DataError(f"{path}: not a valid MNIST CSV file")  # unreachable unless the two parsers disagree
    return Dataset(pixels.astype(np.uint8), labels.astype(np.int64))


def read_csv_split(path: Path) -> Dataset:
    """Read one split stored as CSV: a header line, then one ``label,p0,...,p783`` row per image.

    Blank lines (empty, or of spaces and tabs only) are skipped; ``\\r\\n`` line ends are accepted,
    a carriage return anywhere else in a line is an error. A row with the wrong number of
    fields, a field that is not an integer, a label outside 0..9 or a pixel outside 0..255
    raises :class:`DataError` naming the file and the line number.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    return parse_csv(data, path)
