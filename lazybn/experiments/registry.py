"""The experiments ``lazybn run NAME`` knows, and ``lazybn list``."""

from __future__ import annotations

import argparse
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
    r = sub.add_parser("run", help="run one experiment by name (see `lazybn list`)")
    r.add_argument("name", help="experiment name (`lazybn list` shows each with what it does and its runtime)")
    r.add_argument("--quick", action="store_true", help="a seconds-long version on small data (for tests)")
    add_out(r, "runs/NAME-TIMESTAMP")
    add_data_dir(r)
    r.add_argument("--seed", type=int, default=0, help="first random seed (default 0)")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")
    add_blas_threads(r)
    r.set_defaults(func=_run)
