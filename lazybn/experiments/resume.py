"""``lazybn train --resume DIR``: a stopped run continued where it stopped.

A run directory holds ``run.json``, written when training starts::

    {"format": "lazybn-train-run", "version": 1, "argv": ["train", "--epochs", "3", "--out", "runs/x"],
     "resumes": [["train", "--resume", "runs/x", "--epochs", "5"]],
     "data": {"source": "...", "train": 60000, "test": 10000, "sha256": "..."}}

``argv`` is the command line that started the run (after ``lazybn``), ``resumes`` those of the
runs that continued it, ``data`` what identifies the data it trained on (a resume must train on
the same). Its settings are those ``argv`` gives through the same parser and
presets, with the last ``--epochs`` given to a resume. Each network file (``{arm}-seed{seed}.npz``)
carries its optimizer state and, in its metadata, the epoch it reached; the metrics rows up to that
epoch are kept (a row written after the network's last save is measured again). Everything is read
and checked before anything in the directory is written, and while a ``lazybn train`` writes into
a directory it holds a lock on it that a resume of it respects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, final

import numpy as np

from .._files import atomic_write_bytes
from ..array import Manifest
from ..errors import ArgumentError, PersistenceError, a_kind
from ..layers import Layer
from ..optim import Optimizer, init_state
from ..persist import load
from .runner import Arm

if TYPE_CHECKING:
    from ..data.mnist import Mnist
    from .train_settings import Settings

FORMAT = "lazybn-train-run"
VERSION = 1
RUN_FILE = "run.json"
ALLOWED = ("epochs", "data_dir", "no_progress", "blas_threads")  # the options --resume takes
ARMS = ("batchnorm", "plain")  # the networks of a run, as named in their files


class _Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse raising instead of printing and exiting (a stored command line is checked with it)."""

    def error(self, message: str) -> NoReturn:
        raise _Refused(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _Refused(message or f"exit status {status}")


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``lazybn``'s parser with ``train`` only, and the ``train`` subparser."""
    from .mnist import add_train_parser

    top = _Parser(prog="lazybn")
    return top, add_train_parser(top.add_subparsers(dest="command", required=True))


def _parse(argv: Sequence[str], path: Path) -> argparse.Namespace:
    try:
        args = _parser()[0].parse_args(argv)
    except _Refused as exc:
        raise PersistenceError(f"{path}: the stored command line {shlex.join(argv)!r} does not parse ({exc}); "
                               "the file is corrupt") from None
    args.argv = list(argv)
    return args


def given(argv: Sequence[str]) -> set[str]:
    """The options given on a ``train ...`` command line (their ``dest`` names)."""
    train = _parser()[1]
    unset = object()  # argparse leaves an attribute the namespace has unless the option is given
    ns = argparse.Namespace(**{k: unset for k in vars(train.parse_args([]))})
    train.parse_args(argv[1:], namespace=ns)
    return {k for k, v in vars(ns).items() if v is not unset}


def data_print(mnist: Mnist) -> dict[str, Any]:
    """What identifies the data a run trains on: where it came from, the split sizes and a
    sha256 of the labels and pixels (0.1 s for MNIST)."""
    digest = hashlib.sha256()
    for part in (mnist.train, mnist.test):
        for a in (part.labels.astype(np.int64), part.images):
            digest.update(np.ascontiguousarray(a).data)
    return {"source": mnist.source, "train": len(mnist.train.labels), "test": len(mnist.test.labels),
            "sha256": digest.hexdigest()}


def write_run(out: Path, argv: Sequence[str], data: dict[str, Any], resumed: Resumed | None = None) -> None:
    """``out/run.json`` (atomically): the command line that started the run, the resumes', and
    the :func:`data_print` of its data. A resume's data must be the run's (its print is not
    checked in a run directory written before lazybn recorded it)."""
    if resumed is not None:
        argv, was = resumed.argv, resumed.data or data
        if [was[k] for k in ("train", "test", "sha256")] != [data[k] for k in ("train", "test", "sha256")]:
            raise ArgumentError(f"lazybn train: --resume {out}: the data ({data['source']}: {data['train']} train, "
                                f"{data['test']} test images) is not the run's ({was['source']}: {was['train']} train, "
                                f"{was['test']} test, another sha256); give --data-dir with the run's data")
        data = was
    doc = {"format": FORMAT, "version": VERSION, "argv": list(argv),
           "resumes": [list(r) for r in resumed.resumes] if resumed else [], "data": data}
    atomic_write_bytes(out / RUN_FILE, json.dumps(doc, indent=1).encode())


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory ``out`` (``flock``, released when the process
    ends, however it ends): a second ``lazybn train`` writing into it is refused."""
    try:
        import fcntl
    except ImportError:  # no flock on this system: the directory is not guarded
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArgumentError(f"lazybn train: {out} is in use: another lazybn train is still writing into it; "
                                "wait for it to end, or stop it") from None
        except OSError:  # a file system without locks: not guarded
            pass
        yield
    finally:
        os.close(fd)


def directory(args: argparse.Namespace) -> Path:
    """The directory of ``--resume DIR``, after the options given with it are checked."""
    out = Path(args.resume)
    extra = [f"--{k.replace('_', '-')}" for k in sorted(given(args.argv) - {"resume", *ALLOWED})]
    if extra:
        raise ArgumentError(f"lazybn train: {', '.join(extra)} cannot be changed on --resume: the run's settings "
                            f"are in {out / RUN_FILE}")
    if not out.is_dir():
        raise ArgumentError(f"lazybn train: --resume {out}: no such directory")
    try:
        with tempfile.TemporaryFile(dir=out):  # before the data loads, not at the first write
            pass
    except OSError as exc:
        raise ArgumentError(f"lazybn train: --resume {out}: cannot write into it ({exc.strerror or exc})") from None
    return out


@final
@dataclass(frozen=True, slots=True)
class Resumed:
    """A run to continue: its arguments (``argv`` the starting command line, ``resumes`` every
    resume's, this one last), settings, the command for the report, the metrics rows kept and
    the saved networks as arms to continue, by (seed, arm name)."""

    args: argparse.Namespace
    settings: Settings
    argv: list[str]
    resumes: list[list[str]]
    data: dict[str, Any] | None
    command: str
    rows: list[dict[str, Any]]
    start: dict[tuple[int, str], Arm]


def prepare(args: argparse.Namespace, out: Path) -> Resumed:
    """Read and check everything ``--resume`` continues from; nothing in ``out`` is written."""
    from .mnist import _check_args, _settings
    from .train_settings import make_optimizer, networks

    if not (out / RUN_FILE).is_file():
        raise ArgumentError(f"lazybn train: --resume {out}: it has no {RUN_FILE}, so it is not a lazybn train run "
                            "directory, or one written before lazybn train could resume (start a new run)")
    path = out / RUN_FILE
    argv, resumes, data = _read_run(path)
    run = _parse(argv, path)
    if run.command != "train" or run.resume is not None:
        raise PersistenceError(f"{path}: the stored command line is not that of a new lazybn train run")
    mine = given(args.argv)
    for k in ("data_dir", "no_progress", "blas_threads"):  # given: this command's; else the run's
        if k in mine:
            setattr(run, k, getattr(args, k))
    if "data_dir" not in mine and run.data_dir is not None and not Path(run.data_dir).is_dir():
        relative = "" if Path(run.data_dir).is_absolute() else ", a path relative to where the run was started"
        raise ArgumentError(f"lazybn train: --resume {out}: the run's --data-dir {run.data_dir} (in {path}{relative}) "
                            "is not a directory from here; give --data-dir with the run's data")
    s = _settings(run)
    for r in [*(_parse(r, path) for r in resumes), args]:
        if r.epochs is not None:
            s = replace(s, epochs=r.epochs)
    _check_args(s, run)
    start: dict[tuple[int, str], Arm] = {}
    for seed in range(run.seed, run.seed + run.seeds):
        for name, bn, fresh in zip(ARMS, (True, False), networks(s, seed)):
            file = out / f"{name}-seed{seed}.npz"
            if file.exists():
                start[seed, name] = _network(file, name, seed, run.preset, fresh, make_optimizer(s, bn), s)
    reached = max((a.done for a in start.values()), default=0)
    if s.epochs < reached:
        raise ArgumentError(f"lazybn train: --epochs {s.epochs} is fewer than the {reached} epochs a network of "
                            f"{out} reached; --epochs on --resume can only extend a run")
    rows = _rows(out / "metrics.json", start)
    resumes = [*resumes, list(args.argv)]
    command = "; ".join("lazybn " + shlex.join(a) for a in [argv, *resumes])
    return Resumed(run, s, argv, resumes, data, command, rows, start)


def _read_run(path: Path) -> tuple[list[str], list[list[str]], dict[str, Any] | None]:
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise PersistenceError(f"{path}: not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PersistenceError(f"{path}: not a lazybn train run file (format "
                               f"{doc.get('format') if isinstance(doc, dict) else None!r}, not {FORMAT!r})")
    if type(doc.get("version")) is not int or doc["version"] != VERSION:
        raise PersistenceError(f"{path}: run file version {doc.get('version')!r}; this lazybn reads version {VERSION} "
                               "only")
    argv, resumes = doc.get("argv"), doc.get("resumes")

    def strings(v: object) -> bool:
        return isinstance(v, list) and all(isinstance(a, str) for a in v)

    if not strings(argv) or not isinstance(resumes, list) or not all(strings(r) for r in resumes):
        raise PersistenceError(f"{path}: field 'argv' or 'resumes' is missing or not lists of strings; the file is "
                               "corrupt")
    data = doc.get("data")
    if data is not None and not (isinstance(data, dict) and [type(data.get(k)) for k in ("source", "train", "test",
                                                                                        "sha256")] == [str, int, int, str]):
        raise PersistenceError(f"{path}: field 'data' is not an object of a source, split sizes and a sha256; the file "
                               "is corrupt")
    return argv, resumes, data  # type: ignore[return-value]  # checked just above


def _network(path: Path, name: str, seed: int, preset: str, fresh: list[Layer], opt: Optimizer, s: Settings) -> Arm:
    """The saved network ``path`` as an arm to continue, checked against the run's settings."""
    saved = load(path, comp=s.comp)
    meta = saved.meta
    epoch = meta.get("epoch")
    if type(epoch) is not int or epoch < 1 or [meta.get(k) for k in ("seed", "arm", "preset")] != [seed, name, preset]:
        raise PersistenceError(f"{path}: its metadata {saved.meta} is not that of the {name} network of seed {seed} "
                               f"of preset {preset} after an epoch")
    problem = _mismatch(saved.layers, fresh)
    if problem is not None:
        raise PersistenceError(f"{path}: {problem}; it is not a network of this run's settings ({RUN_FILE})")
    want, state = init_state(opt, fresh), saved.opt_state
    if state is None:
        raise PersistenceError(f"{path}: saved without its optimizer state ({want.optimizer}'s step count"
                               f"{' and moments' if any(want.slots) else ''}); it cannot be continued exactly")
    shapes = [[(a.shape, a.dtype) for a in slot] for slot in state.slots]
    if state.optimizer != want.optimizer or shapes != [[(a.shape, a.dtype) for a in slot] for slot in want.slots]:
        raise PersistenceError(f"{path}: its optimizer state is not one of {want.optimizer} for this network (made "
                               f"by {state.optimizer}); it is not a network of this run's settings ({RUN_FILE})")
    return Arm(name, saved.layers, opt, state, epoch)


def _mismatch(got: Sequence[Layer], want: Sequence[Layer]) -> str | None:
    """How a loaded network differs from the run's (None: the same layers, shapes, dtypes and
    hyperparameters; the running count and renormalisation bounds, which training moves, aside)."""
    if len(got) != len(want):
        return f"{len(got)} layers, the run's network has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if type(g) is not type(w):
            return f"layer {i} is {a_kind(g)}, the run's {a_kind(w)}"
        for f in fields(g):
            a, b = getattr(g, f.name), getattr(w, f.name)
            if isinstance(a, Manifest) and isinstance(b, Manifest):
                if (a.shape, a.dtype) != (b.shape, b.dtype):
                    return (f"layer {i} ({type(g).__name__}) {f.name} is {a.dtype} {a.shape}, the run's "
                            f"{b.dtype} {b.shape}")
            elif f.name == "renorm" and (a is None) != (b is None) or f.name not in ("renorm", "tracked") and a != b:
                return f"layer {i} ({type(g).__name__}) has {f.name} {a!r}, the run's {b!r}"
    return None


def _rows(path: Path, start: dict[tuple[int, str], Arm]) -> list[dict[str, Any]]:
    """The rows of ``metrics.json`` up to each saved network's epoch (a row measured after the
    network's last save is dropped: that epoch runs again)."""
    if not path.exists():
        if start:
            raise PersistenceError(f"{path} is missing, but networks were saved: the run's metrics are lost")
        return []
    try:
        rows = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise PersistenceError(f"{path}: not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("arm"), str)
                                             and type(r.get("seed")) is int and type(r.get("epoch")) is int
                                             for r in rows):
        raise PersistenceError(f"{path}: not a list of rows with an arm, a seed and an epoch; the file is corrupt")
    kept = [{k: math.nan if v is None else v for k, v in r.items()} for r in rows  # NaN is written as null
            if (r["seed"], r["arm"]) in start and r["epoch"] <= start[r["seed"], r["arm"]].done]
    for (seed, name), arm in start.items():
        epochs = sorted(r["epoch"] for r in kept if (r["seed"], r["arm"]) == (seed, name))
        if epochs != list(range(1, arm.done + 1)):
            raise PersistenceError(f"{path}: the rows of the {name} network of seed {seed} are for epochs {epochs}, "
                                   f"but its file holds epoch {arm.done}; the file is corrupt")
    return kept
