"""Where lazybn keeps its caches, and the one way it writes files: atomically."""

from __future__ import annotations

import errno
import glob
import os
import tempfile
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Final

from .errors import ArgumentError

ZIP_ERRORS: Final = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
                     tokenize.TokenError, OverflowError)
"""What reading a damaged zip (``.npz``) archive raises: besides truncation and bad CRCs, one
flipped bit in a member's header makes :mod:`zipfile` report an unsupported compression method
or version (``NotImplementedError``) or an encrypted member (``RuntimeError``), and one in an
array's ``.npy`` header makes numpy's parser of it fail (``tokenize.TokenError`` for a header
length cut short, ``OverflowError`` for a dimension beyond int64)."""


def cache_dir() -> Path:
    """The user cache directory of lazybn.

    ``$LAZYBN_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lazybn``, else ``~/.cache/lazybn``
    (``~`` expanded in either variable).
    """
    env = os.environ.get("LAZYBN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lazybn"


def user_path(given: str) -> str:
    """A path as a user wrote it, with a leading ``~`` or ``~user`` expanded: the shell leaves it
    alone in ``--out=~/runs`` and in a quoted environment variable, and a directory named ``~``
    is never what was meant."""
    return os.path.expanduser(given)


@contextmanager
def atomic_writer(given: Path | str) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``given``; on success it is renamed over it.

    A crash or an exception in the ``with`` body leaves any old file untouched. A directory, or a
    name ending with a separator, is an :class:`ArgumentError`; a parent that is a file a
    ``NotADirectoryError`` naming it.
    """
    if str(given).endswith(("/", os.sep)):  # Path() would drop the separator and write a file of that name
        raise ArgumentError(f"cannot write {str(given)!r}: it names a directory (give a file name)")
    path = Path(given)
    if path.is_dir():
        raise ArgumentError(f"cannot write {path}: it is a directory (give a file name)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # "File exists" names the file but not the problem
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {path}: {blocker} is a file, not a directory") from None
    prefix = f".{_shortened(path.name)}."
    _sweep(path.parent, prefix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _sweep(folder: Path, prefix: str, stale: float = 86400.0) -> None:
    """Remove the temporary files of earlier writes of the same file that never reached their
    rename (a killed process, a crashed machine): those more than ``stale`` seconds old, so that no
    write still under way loses its file (an MNIST cache's is 55 MB)."""
    cutoff = time.time() - stale
    for old in folder.glob(glob.escape(prefix) + "?" * 8 + ".tmp"):  # mkstemp's 8 random characters
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:  # gone already, or not ours to remove
            pass


def _shortened(name: str, limit: int = 200) -> str:
    """``name`` cut to at most ``limit`` bytes (whole characters), for a temporary file's name: with
    the dot, mkstemp's 8 random characters and ``.tmp`` it stays within the 255 bytes a file name may
    have, however long ``name`` is."""
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_with(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file and rename it over ``path`` when it returns."""
    with atomic_writer(path) as f:
        write(f)
