"""``lazybn train``: the 784-300-50-10 network with batch norm (before each ReLU, no biases)
against the same network without it (with biases), from the same initial weights.

Presets:

* ``default``: plain SGD with lr 0.1, batch 100, the seed's small weights 0.01·N(0,1) (zero
  biases), standardised pixels, 10 epochs. Small weights are where batch norm shows what it
  does: without it the signal shrinks layer by layer and the first epochs crawl; with it every
  layer sees unit-variance inputs. The rate is ten times the article's: batch norm keeps it
  stable, and the plain network still trains, so the comparison is not against a broken
  baseline. (With He initialisation both networks start well conditioned and end within a few
  tenths of a point; at lr 0.01 the batch-norm network stays just under 98% at epoch 10.)
* ``haskell``: the Haskell project's run (lr 0.1, batch 1000, weights 0.01·N(0,1), biases
  N(0,1), pixels in [-0.5, 0.5], eps 1e-12, biased running variance, shuffled once). Its
  batch-norm parameters received batch-summed gradients, i.e. a learning rate 1000 times larger
  for gamma and beta. Reproducing its result does not need that: with correct batch-averaged
  gradients lazybn reaches the same 98.1% (measured: 98.09% vs 98.14% with the factor). The
  factor is an explicit per-group learning-rate multiplier, ``--bn-lr-multiplier 1000``.
* ``article``: the article's text (SGD, lr 0.01, batch 100, 10 epochs), otherwise as haskell.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
from dataclasses import fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .._files import user_path
from ..array import Comp
from ..construct import matrix
from ..data import load_mnist
from ..errors import ArgumentError, ValueRangeError
from ..init import Init
from ..layers import Layer, Renorm, RenormRamp
from ..optim import OptState, init_state
from ..persist import save
from ..report import WRITING, interrupts_held, markdown_table, write_metrics, write_report
from ..preprocess import one_hot, prepare
from ..train import batches, train_step
from . import resume
from .common import (add_blas_threads, add_data_dir, add_out, curves, epoch_summary, join_warm_up, out_dir,
                     require_empty)
from .runner import Arm, Outcome, Plan, Schedule, Split, run
from .train_settings import PRESETS, REFERENCE, SIZES, Settings, make_optimizer, networks


def load_split(data_dir: str | None, s: Settings, progress: bool) -> tuple[Split, dict[str, Any]]:
    """The data in the run's dtype and pixels, and its :func:`resume.data_print`."""
    mnist = load_mnist(data_dir, progress=progress)
    dt = np.dtype(s.dtype)
    split = Split(
        x_train=prepare(mnist.train.images, s.pixels, dt), y_train=one_hot(mnist.train.labels, 10, dt),
        labels_train=mnist.train.labels, x_test=prepare(mnist.test.images, s.pixels, dt),
        labels_test=mnist.test.labels,
    )
    return split, resume.data_print(mnist)


def _preset(name: str) -> str:
    """``--help``'s note of where an option's default comes from."""
    value = getattr(PRESETS["default"], name)
    return f" (default: the preset's, {value.value if isinstance(value, Enum) else value} in 'default')"


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "train", help="train MNIST 784-300-50-10 with and without batch norm and compare them",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="named settings (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="number of epochs" + _preset("epochs"))
    p.add_argument("--batch-size", type=int, help="samples per batch" + _preset("batch_size"))
    p.add_argument("--lr", type=float, help="learning rate" + _preset("lr"))
    p.add_argument("--schedule", choices=[s.value for s in Schedule], help="learning-rate schedule, a factor per epoch: constant 1; step 0.1 from half of the "
                        "epochs and 0.01 from three quarters; cosine half a cosine from 1 to 0.01 at the last epoch"
                        + _preset("schedule"))
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw", "rmsprop"],
                   help="adamw: Adam with decoupled weight decay" + _preset("optimizer"))
    p.add_argument("--init", choices=[i.value for i in Init], help="weight initialiser: haskell 0.01·N(0,1) weights and N(0,1) biases; small 0.01·N(0,1) "
                        "weights; normal N(0,1); xavier N(0, 2/(in+out)); he N(0, 2/in) (biases zero but for haskell)"
                        + _preset("init"))
    p.add_argument("--bn-lr-multiplier", type=float, help="learning-rate factor for gamma and beta" + _preset("bn_lr_multiplier"))
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help="L2 weight decay of the linear layers' weights and biases (default 0)")
    p.add_argument("--bn-weight-decay", type=float, metavar="WD",
                   help="L2 weight decay of batch norm's gamma and beta (default 0)")
    p.add_argument("--bn-momentum", help="batch norm's running-average momentum (weight of the new batch, default "
                                         "0.1), or 'none' for a cumulative average of every batch")
    p.add_argument("--renorm", nargs=2, type=float, metavar=("RMAX", "DMAX"),
                   help="batch renormalisation: r clipped to [1/RMAX, RMAX], d to [-DMAX, DMAX]")
    p.add_argument("--renorm-ramp", nargs=3, type=int, metavar=("START", "RSTEPS", "DSTEPS"),
                   help="with --renorm: batch norm for START steps, then RMAX and DMAX reached linearly over "
                        "RSTEPS and DSTEPS steps (the paper: 5000 40000 25000)")
    p.add_argument("--ghost-batch", type=int, metavar="G",
                   help="ghost batch norm: normalise each group of G rows of a batch on its own")
    p.add_argument("--dtype", choices=["float32", "float64"], help="the networks' and inputs' dtype (default float32)")
    p.add_argument("--comp", choices=["Seq", "Par"],
                   help="Par: kernels whose largest loop nest holds 4 MiB or more run on all cores (at MNIST's "
                        "batch sizes every kernel is below that and runs serially); Seq: one core" + _preset("comp"))
    p.add_argument("--seed", type=int, default=0, help="random seed of the first run (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds to run and average (default 1)")
    add_data_dir(p)
    add_out(p, "runs/train-PRESET-TIMESTAMP")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")
    p.add_argument("--resume", metavar="DIR", type=user_path,
                   help="continue the stopped run in DIR where it stopped, with its settings (DIR/run.json), writing "
                        "into DIR; only --epochs N (N at least the epochs reached: extends a finished run; with the "
                        "step or cosine schedule the factors then differ from a run started with N), --data-dir, "
                        "--no-progress and --blas-threads may be given with it")
    add_blas_threads(p)
    p.set_defaults(func=_train)
    return p


def _settings(args: argparse.Namespace) -> Settings:
    s = PRESETS[args.preset]
    changes: dict[str, Any] = {}
    for name in ("epochs", "batch_size", "lr", "optimizer", "bn_lr_multiplier", "weight_decay", "bn_weight_decay",
                 "dtype"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.schedule is not None:
        changes["schedule"] = Schedule(args.schedule)
    if args.init is not None:
        changes["init"] = Init(args.init)
    if args.comp is not None:
        changes["comp"] = Comp(args.comp)
    if args.bn_momentum is not None:
        try:
            changes["momentum"] = None if args.bn_momentum.lower() == "none" else float(args.bn_momentum)
        except ValueError:
            raise ArgumentError(f"lazybn train: --bn-momentum takes a number or 'none', got {args.bn_momentum!r}") from None
    if args.renorm is not None:
        try:
            changes["renorm"] = Renorm(*args.renorm)
        except ValueRangeError as e:  # Renorm's own check, naming the option
            raise ArgumentError(f"lazybn train: --renorm {e}") from None
    if args.renorm_ramp is not None:
        changes["renorm_ramp"] = tuple(args.renorm_ramp)
    if args.ghost_batch is not None:
        changes["ghost_batch"] = args.ghost_batch
    return replace(s, **changes)


def _warm_up(s: Settings, seed: int) -> None:
    """One training step of the batch-norm network (the first to train) on a batch of zeros, all
    of class 0, its result dropped. This loads the step's kernels while the data loads, which mostly runs
    outside the GIL: numba's own start-up (about 0.6 s) and then each cached kernel. The real
    first step then only replays. An error is left to that first step, which reports it."""
    try:
        x = matrix(np.zeros((s.batch_size, SIZES[0]), np.dtype(s.dtype)), comp=s.comp)
        y = matrix(np.eye(SIZES[-1], dtype=np.dtype(s.dtype))[np.zeros(s.batch_size, np.intp)], comp=s.comp)
        layers, opt = networks(s, seed)[0], make_optimizer(s, True)
        train_step(layers, opt, init_state(opt, layers), x, y, key=0)  # a key, as the runner passes one
    except Exception:  # noqa: BLE001 - an optimisation only: the first real step reports any error
        pass


def _ramp(s: Settings) -> RenormRamp | None:
    """The schedule of the renormalisation bounds, from ``--renorm`` and ``--renorm-ramp``."""
    if s.renorm_ramp is None or s.renorm is None or s.renorm.rmax is None or s.renorm.dmax is None:
        return None
    return RenormRamp(s.renorm.rmax, s.renorm.dmax, *s.renorm_ramp)


def _check_args(s: Settings, args: argparse.Namespace) -> None:
    """Refuse settings that cannot train, before anything is loaded or written."""
    problems = [msg for bad, msg in (
        (s.epochs < 1, f"--epochs must be at least 1, got {s.epochs}"),
        (s.batch_size < 2, f"--batch-size must be at least 2 (batch norm needs two samples in every training "
                           f"batch), got {s.batch_size}"),
        (args.seeds < 1, f"--seeds must be at least 1, got {args.seeds}"),
        (args.seed < 0, f"--seed must be >= 0, got {args.seed}"),
        (s.ghost_batch is not None and (s.ghost_batch < 2 or s.batch_size % s.ghost_batch != 0),
         f"--ghost-batch must be at least 2 and divide the batch size {s.batch_size}, got {s.ghost_batch}"),
        (s.ghost_batch is not None and s.renorm is not None, "--ghost-batch and --renorm cannot be combined"),
        (s.renorm_ramp is not None and s.renorm is None, "--renorm-ramp needs --renorm RMAX DMAX (the bounds it "
                                                         "ramps to)"),
        (s.renorm_ramp is not None and min(s.renorm_ramp) < 0,
         f"--renorm-ramp takes step counts >= 0, got {' '.join(map(str, s.renorm_ramp or ()))}"),
        (s.momentum is not None and not 0.0 <= s.momentum <= 1.0,
         f"--bn-momentum must be in [0, 1] (the weight of the new batch) or 'none', got {s.momentum}"),
    ) if bad]
    try:
        make_optimizer(s, bn=True)
    except ValueRangeError as e:  # the optimizer's own check, naming the option
        flag = next((f"--{f.name.replace('_', '-')}" for f in fields(s) if f".{f.name}:" in str(e)), "")
        problems.append(f"{flag} {e}" if flag else str(e))
    if problems:
        raise ArgumentError("lazybn train: " + "; ".join(problems))


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        out = resume.directory(args)
        with resume.locked(out):
            resumed = resume.prepare(args, out)
            with threadpool_limits(limits=resumed.args.blas_threads, user_api="blas"):  # the run's, unless given
                return _run(resumed.args, resumed.settings, out, resumed.command, resumed)
    s = _settings(args)
    _check_args(s, args)
    out = out_dir(args, f"train-{args.preset}")
    with resume.locked(out):
        require_empty(out)  # again: a run given the same --out may have filled it before the lock was taken
        return _run(args, s, out, "lazybn " + shlex.join(args.argv), None)


def _run(args: argparse.Namespace, s: Settings, out: Path, command: str, resumed: resume.Resumed | None) -> int:
    progress = not args.no_progress
    print(f"lazybn train: preset {args.preset}; {'resuming' if resumed else 'writing to'} {out}")
    warm = threading.Thread(target=_warm_up, args=(s, args.seed), name="lazybn-warm-up", daemon=True)
    warm.start()
    try:
        split, data = load_split(args.data_dir, s, progress)
    finally:
        join_warm_up(warm)  # data that cannot load too: no training step runs on after the command returns
    source = data["source"]
    print(f"data: {source} ({split.x_train.shape[0]} train, {split.x_test.shape[0]} test)")
    if s.batch_size > split.x_train.shape[0]:
        raise ArgumentError(f"lazybn train: --batch-size {s.batch_size} is more than the {split.x_train.shape[0]} "
                            "training samples")
    sizes = {len(idx) for idx in batches(split.x_train.shape[0], s.batch_size, None)}
    if s.ghost_batch is not None and any(n % s.ghost_batch for n in sizes):
        raise ArgumentError(f"lazybn train: --ghost-batch {s.ghost_batch} does not divide every batch: "
                            f"{split.x_train.shape[0]} training samples in batches of {s.batch_size} give batches of "
                            f"{sorted(sizes)} rows")
    start = resumed.start if resumed else {}  # (seed, network) -> the saved network to continue
    rows: list[dict[str, Any]] = list(resumed.rows) if resumed else []  # every seed's rows so far
    outcome = Outcome()
    header = f"{'seed':>4} {'epoch':>5} {'network':<12} {'loss':>8} {'train acc':>9} {'test acc':>8} {'seconds':>7}"
    print(header)
    _print_rows(rows)
    resume.write_run(out, args.argv, data, resumed)  # a resume's data checked against the run's first

    saved = {key: arm.done for key, arm in start.items()}  # (seed, network) -> the epoch its file holds

    def keep(seed: int, trained: dict[str, tuple[list[Layer], OptState]], epochs: dict[str, int]) -> None:
        """Save each network and its optimizer state at a measured epoch not saved yet, tagged with it."""
        for name, (net, state) in trained.items():
            if epochs.get(name) and saved.get((seed, name)) != epochs[name]:
                save(out / f"{name}-seed{seed}.npz", net, state,
                     meta={"preset": args.preset, "seed": seed, "arm": name, "epoch": epochs[name]})
                saved[seed, name] = epochs[name]

    for seed in range(args.seed, args.seed + args.seeds):
        done = len(rows)

        def show(epoch_rows: list[dict[str, Any]], layers: dict[str, list[Layer]]) -> None:
            _print_rows(epoch_rows)
            rows.extend(epoch_rows)
            write_metrics(out, "metrics", _by_seed(rows))  # after every epoch, before the networks: a killed run keeps both

        def checkpoint(epoch_rows: list[dict[str, Any]], trained: dict[str, tuple[list[Layer], OptState]],
                       seed: int = seed) -> None:
            keep(seed, trained, {r["arm"]: r["epoch"] for r in epoch_rows})

        bn, plain = networks(s, seed)
        arms = [Arm("batchnorm", bn, make_optimizer(s, True)), Arm("plain", plain, make_optimizer(s, False))]
        arms = [start.get((seed, a.name), a) for a in arms]
        plan = Plan(epochs=s.epochs, batch_size=s.batch_size, seed=seed, schedule=s.schedule, shuffle=s.shuffle,
                    comp=s.comp, renorm_ramp=_ramp(s))
        outcome = run(arms, split, plan, progress=progress, on_epoch=show, on_error="stop",
                      on_checkpoint=checkpoint)
        with interrupts_held(WRITING) as held:  # a Ctrl-C now stops the run once these files are written
            _print_rows(outcome.rows[len(rows) - done:])  # an arm that finished the epoch that was cut short
            rows[done:] = outcome.rows
            if outcome.rows:  # the rows before the networks (an arm that finished the cut epoch)
                write_metrics(out, "metrics", _by_seed(rows))
            keep(seed, {a.name: (outcome.layers[a.name], outcome.states[a.name]) for a in arms},
                 {a.name: outcome.epochs(a.name) for a in arms})
        outcome.interrupted = outcome.interrupted or bool(held)
        if outcome.interrupted or outcome.error is not None:
            break
    stopped = "interrupted" if outcome.interrupted else "stopped by an error" if outcome.error is not None else ""
    with interrupts_held(WRITING) as held:  # the report of what was measured, whole, before a Ctrl-C stops the run
        if not rows and resumed is None:  # a new run that measured nothing: its directory goes (release_unused)
            (out / resume.RUN_FILE).unlink(missing_ok=True)
        if rows:  # else nothing was measured: no report
            _write(out, args, s, command, _by_seed(rows), stopped, source)
    outcome.interrupted = outcome.interrupted or bool(held)
    kept = f"kept what was measured in {out}" if rows else "nothing was measured"
    if outcome.error is not None:
        print(f"lazybn: error: {outcome.error}", file=sys.stderr)
        print(f"stopped: {kept}")
        return 2
    if outcome.interrupted:
        print(f"interrupted: {kept}")
        return 130
    return 0


def _by_seed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows seed by seed, as a run that never stopped has them (a resume extending a run of
    several seeds measures a seed's new epochs after the later seeds' earlier ones)."""
    return sorted(rows, key=lambda r: int(r["seed"]))


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"{r['seed']:>4} {r['epoch']:>5} {r['arm']:<12} {r['loss']:>8.4f} "
              f"{100 * r['train_acc']:>8.2f}% {100 * r['test_acc']:>7.2f}% {r['seconds']:>7.2f}", flush=True)


def _write(out: Path, args: argparse.Namespace, s: Settings, command: str, rows: list[dict[str, Any]],
           stopped: str, source: str) -> None:
    summary = epoch_summary(rows)
    write_metrics(out, "metrics", rows)
    write_metrics(out, "summary", summary)
    ok = curves(out / "curves.png", rows, title=f"MNIST 784-300-50-10, preset {args.preset}")
    if not ok:
        print("plots skipped: matplotlib is not installed (python -m pip install 'lazybn[plot]')")
    final = [max((r for r in summary if r["arm"] == arm), key=lambda r: r["epoch"])  # each network's last epoch
             for arm in dict.fromkeys(r["arm"] for r in summary)]
    sections = [("Result" + (f" ({stopped})" if stopped else ""),
                 markdown_table([{"network": r["arm"], "epoch": r["epoch"], "seeds": r["seeds"],
                                  "test acc %": 100 * r["test_acc"], "train acc %": 100 * r["train_acc"],
                                  "loss": f"{r['loss']:.4f}"} for r in final], "{:.2f}"))]
    if args.preset in REFERENCE:
        sections.append(("Reference", REFERENCE[args.preset] + ".\n"))
    sections.append(("Per epoch (mean over seeds; a process's first epoch of a network includes loading or compiling "
                     "its kernels)", markdown_table(summary)))
    settings = {k: getattr(s, k) for k in Settings.__slots__} | {"data": source, "seeds": args.seeds}
    path = write_report(out, f"lazybn train — preset {args.preset}", command, settings, sections,
                        ["curves.png"], ok)
    print(markdown_table([{"network": r["arm"], "epoch": r["epoch"], "test acc %": f"{100 * r['test_acc']:.2f}",
                           "train acc %": f"{100 * r['train_acc']:.2f}", "loss": f"{r['loss']:.4f}"} for r in final]))
    if len({r["epoch"] for r in final}) > 1:
        print(f"({stopped}: the networks reached different epochs; compare them in metrics.csv at epoch "
              f"{min(r['epoch'] for r in final)})")
    print(f"report: {path}")
