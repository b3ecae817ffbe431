"""The ``lazybn`` command: ``lazybn train`` (MNIST with and without batch norm), ``lazybn eval``
(saved networks' accuracy), ``lazybn list`` and ``lazybn run NAME`` (the experiments)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from types import FrameType

from threadpoolctl import threadpool_limits

from .errors import ArgumentError, LazybnError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lazybn",
        description="Batch normalization you can read: train and compare networks with and without batch norm, and "
                    "evaluate the saved networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .experiments import registry
    from .experiments.common import release_unused
    from .experiments.evaluate import add_eval_parser
    from .experiments.mnist import add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)
    registry.add_parsers(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the "Command" line of reports
    before = signal.getsignal(signal.SIGTERM)
    handles = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    if handles:  # a job scheduler's or `timeout`'s stop: as Ctrl-C
        signal.signal(signal.SIGTERM, _terminated)
    threads = getattr(args, "blas_threads", None)  # None: `lazybn list`
    try:
        if threads is not None and threads < 1:
            raise ArgumentError(f"--blas-threads must be at least 1, got {threads}")
        with threadpool_limits(limits=threads, user_api="blas"), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code: int = args.func(args)
    except LazybnError as exc:
        print(f"lazybn: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`lazybn train | head`): stop quietly, as Unix tools do
        _silence_stdout()
        return 141
    except OSError as exc:  # a file lazybn writes (a full disk, a vanished directory): the earlier ones are whole
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lazybn: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (training itself stops cleanly and reports)
        print("lazybn: interrupted", file=sys.stderr)
        return 130
    finally:
        release_unused()
        if handles:
            signal.signal(signal.SIGTERM, before)
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python's last flush at exit would fail again on the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a file descriptor (a caller's capture)
        pass


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """A warning as a line of the command's own (a rebuilt cache, a cache that cannot be written)."""
    print(f"lazybn: warning: {message}", file=sys.stderr)


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops a run as Ctrl-C does: the epoch under way leaves no trace, the report is written."""
    raise KeyboardInterrupt("terminated (SIGTERM)")


if __name__ == "__main__":
    sys.exit(main())
