"""The experiments ``lazybn run NAME`` knows, and ``lazybn list``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, final

from ..errors import ArgumentError
from .common import add_blas_threads, add_data_dir, add_out


@final
@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    summary: str
    runtime: str  # expected full runtime on a 2-core machine
    run: Callable[[argparse.Namespace], int]


EXPERIMENTS: dict[str, Experiment] = {}


def register(exp: Experiment) -> None:
    EXPERIMENTS[exp.name] = exp


def _list(args: argparse.Namespace) -> int:
    _load_all()
    width = max((len(n) for n in EXPERIMENTS), default=4)
    for exp in EXPERIMENTS.values():
        print(f"{exp.name:<{width}}  {exp.runtime:>8}  {exp.summary}")
    return 0


def _run(args: argparse.Namespace) -> int:
    _load_all()
    exp = EXPERIMENTS.get(args.name)
    if exp is None:
        raise ArgumentError(f"unknown experiment {args.name!r}; `lazybn list` shows them")
    if args.seed < 0:
        raise ArgumentError(f"--seed must be >= 0, got {args.seed}")
    return exp.run(args)


def _load_all() -> None:
    from . import catalogue  # noqa: F401  (registers the experiments)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("list", help="list the experiments with a description and expected runtime")
    p.set_defaults(func=_list)
    r = sub.add_parser("run", help="run one experiment by name (see `lazybn list`)", add_help=False,
                       description="Run one experiment by name (`lazybn list` shows them); `lazybn run NAME --help` "
                                   "describes NAME.")
    r.add_argument("-h", "--help", action=_Help, help="show this help message and exit; after NAME, NAME's own")
    r.add_argument("name", help="experiment name (`lazybn list` shows each with what it does and its runtime)")
    _add_options(r, "NAME")
    r.set_defaults(func=_run)


def _add_options(r: argparse.ArgumentParser, name: str) -> None:
    """The options of ``lazybn run``, which every experiment takes."""
    r.add_argument("--quick", action="store_true", help="a seconds-long version on small data (for tests)")
    add_out(r, f"runs/{name}-TIMESTAMP")
    add_data_dir(r)
    r.add_argument("--seed", type=int, default=0, help="first random seed (default 0)")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")
    add_blas_threads(r)


def experiment_parser(prog: str, exp: Experiment) -> argparse.ArgumentParser:
    """The help of ``lazybn run NAME``: the experiment's description (its module's) and runtime, and the options."""
    doc = (sys.modules[exp.run.__module__].__doc__ or exp.summary).strip()
    p = argparse.ArgumentParser(prog=f"{prog} {exp.name}", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=f"{doc}\n\nExpected runtime: {exp.runtime} on a 2-core machine "
                                            "(--quick: seconds).")
    _add_options(p, exp.name)
    return p


class _Help(argparse.Action):
    """``-h``/``--help`` of ``lazybn run``: after a known NAME, that experiment's help; else the command's."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, default: Any = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        _load_all()
        name = getattr(namespace, "name", None)  # set when NAME comes before --help
        if name is None:
            parser.print_help()
        elif name not in EXPERIMENTS:
            parser.error(f"unknown experiment {name!r}; `lazybn list` shows them")
        else:
            experiment_parser(parser.prog, EXPERIMENTS[name]).print_help()
        parser.exit()
