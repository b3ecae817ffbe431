"""Saving and loading networks (and optimizer state): one ``.npz`` file, no pickle.

The file is a numpy ``.npz`` archive holding every array under a readable name (``layer0.w``,
``layer3.gamma``, ``opt.slot.1.0`` = layer 1's first moment array) and a JSON header stored as
a uint8 array ``header.json``::

    {"format": "lazybn-network", "version": 1, "dtype": "float32", "comp": "Seq",
     "layers": [{"kind": "LinearNoBias", "arrays": {"w": [784, 300]}},
                {"kind": "Batchnorm1d", "eps": 1e-05, "momentum": 0.1, "unbiased": true, "tracked": 0,
                 "arrays": {"mu": [300], "var": [300], "gamma": [300], "beta": [300]}},
                {"kind": "Activation", "activation": "relu"}, {"kind": "Dropout", "p": 0.2}, ...],
     "optimizer": {"step": 12, "slots": [[[784, 300], [784, 300]], [], ...], "made_by": "Momentum"} or null,
     "meta": {"epoch": 3, "note": "..."}}

Writing is atomic (temporary file, then rename): a crash mid-write leaves the old file intact. Loading never
unpickles (``allow_pickle=False``), checks every array against the header, and rejects NaN/inf values
(``save`` writes none), a negative running variance and an optimizer state that does not fit the layers
(which ``save`` refuses too). Arrays round-trip bit for bit. A batch-norm layer's ``momentum`` is null for a
cumulative average; a file without ``tracked`` (the cumulative count) loads it as 0;
``"renorm": {"rmax": 3.0, "dmax": null}`` marks batch renormalisation and ``"ghost_batch": 32`` ghost batches
(either absent or null: none); ``"frozen": true`` a layer that trains with its running statistics (absent: false);
``"trainable": false`` a layer whose parameters the optimizers leave as they are (absent: true). The
optimizer state's ``made_by`` is :attr:`~lazybn.optim.OptState.optimizer` (absent or null: not recorded).
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never, final

import numpy as np

from ._archive import Reader, header_field, read_layer
from ._files import ZIP_ERRORS, atomic_writer
from .array import Comp, Manifest
from .errors import ArgumentError, DTypeError, LazybnError, PersistenceError, ShapeError, ValueRangeError, a_kind
from .layers import Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, check_layers
from .optim import KINDS, OptState, parameters

FORMAT = "lazybn-network"
VERSION = 1
Meta = Mapping[str, str | int | float | bool | np.bool_ | np.integer[Any] | np.floating[Any]]


@final
@dataclass(frozen=True, slots=True)
class Saved:
    """What :func:`load` returns: the network, the optimizer state (if saved) and the metadata."""

    layers: list[Layer]
    opt_state: OptState | None
    meta: dict[str, str | int | float | bool] = field(default_factory=dict)


def _arrays_of(layer: Layer) -> dict[str, Manifest[Any]]:
    match layer:
        case Linear(w=w, b=b):
            return {"w": w, "b": b}
        case LinearNoBias(w=w):
            return {"w": w}
        case Batchnorm1d(mu=mu, var=var, gamma=gamma, beta=beta):
            return {"mu": mu, "var": var, "gamma": gamma, "beta": beta}
        case Activation() | Dropout():
            return {}
        case _:
            assert_never(layer)


def _describe(layer: Layer) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": type(layer).__name__}
    match layer:
        case Batchnorm1d(eps=eps, momentum=momentum, unbiased=unbiased, tracked=tracked, renorm=renorm):
            d.update(eps=float(eps), momentum=None if momentum is None else float(momentum), unbiased=bool(unbiased),
                     tracked=tracked)
            if renorm is not None:
                d["renorm"] = {k: None if v is None else float(v) for k, v in (("rmax", renorm.rmax),
                                                                               ("dmax", renorm.dmax))}
            if layer.ghost_batch is not None:
                d["ghost_batch"] = layer.ghost_batch
            if layer.frozen:
                d["frozen"] = True
        case Activation(f=f):
            d["activation"] = f.value
        case Dropout(p=p):
            d["p"] = float(p)
        case Linear() | LinearNoBias():
            pass
        case _:
            assert_never(layer)
    if isinstance(layer, (Linear, LinearNoBias, Batchnorm1d)) and not layer.trainable:
        d["trainable"] = False
    arrays = _arrays_of(layer)
    if arrays:
        d["arrays"] = {k: list(a.shape) for k, a in arrays.items()}
    return d


def _check_meta(meta: Meta | None) -> dict[str, str | int | float | bool]:
    given: object = {} if meta is None else meta  # untyped callers
    if not isinstance(given, Mapping):
        raise ArgumentError(f"save: meta must be a dict of str to str/int/float/bool, got {a_kind(given)}")
    checked: dict[str, str | int | float | bool] = {}
    for k, v in given.items():
        if not isinstance(k, str):
            raise ArgumentError(f"save: meta must map str to str/int/float/bool, got the key {k!r} ({a_kind(k)})")
        checked[k] = _meta_value(k, v)
    return checked


def _meta_value(k: str, v: object) -> str | int | float | bool:
    """``meta[k]`` as JSON stores it: a numpy bool, integer or float (or a 0-d array of one) becomes the
    Python value (``bool(v)``, ``int(v)``, ``float(v)``), which is what ``load`` gives back."""
    scalar = v[()] if isinstance(v, np.ndarray) and v.ndim == 0 else v
    if isinstance(scalar, np.bool_):
        return bool(scalar)
    if isinstance(scalar, np.integer):
        return int(scalar)
    if isinstance(scalar, np.floating):
        scalar = float(scalar)  # a longdouble beyond float64's range becomes infinity, refused below
    if not isinstance(scalar, (str, int, float, bool)):
        kind = (f"an array of dtype {v.dtype} and shape {v.shape}" if isinstance(v, np.ndarray)
                else f"{a_kind(v)} ({v!r})")
        raise ArgumentError(f"save: meta[{k!r}] is {kind}; meta maps str to str/int/float/bool "
                            "(or a numpy bool, integer or float, stored as its Python value)")
    if isinstance(scalar, float) and not math.isfinite(scalar):
        raise ValueRangeError(f"save: meta[{k!r}] = {v!r}: JSON cannot store NaN or infinity")
    if isinstance(scalar, int) and not _writable_int(scalar):
        raise ValueRangeError(f"save: meta[{k!r}] is an int of more digits than Python writes as text "
                              f"(sys.get_int_max_str_digits(): {sys.get_int_max_str_digits()}); JSON cannot hold it")
    return scalar


def _writable_int(n: int) -> bool:
    """Whether ``json.dumps`` (and so ``json.loads``) takes ``n``: Python converts ints of up to
    ``sys.get_int_max_str_digits()`` digits (4300 by default) to text and back."""
    try:
        int.__repr__(n)
    except ValueError:
        return False
    return True


def _misfit(layers: Sequence[Layer]) -> tuple[str, int, int] | None:
    """Where consecutive layers do not fit: (what, the width before, the layer's inputs), or None."""
    width: int | None = None  # the width of the last layer with parameters
    for i, layer in enumerate(layers):
        match layer:
            case Linear(w=w) | LinearNoBias(w=w):
                takes, gives = w.shape[0], w.shape[1]
            case Batchnorm1d():
                takes = gives = layer.features
            case Activation() | Dropout():
                continue
            case _:
                assert_never(layer)
        if width is not None and takes != width:
            return (f"layer {i} ({type(layer).__name__}) takes {takes} features but the layer before gives {width}",
                    width, takes)
        width = gives
    return None


def _state_misfit(layers: Sequence[Layer], state: OptState) -> str | None:
    """Why ``state`` is not an optimizer state of ``layers`` (one tuple per layer of the same number
    of moment arrays per parameter, each of its parameter's shape, as ``init_state`` makes), or None."""
    if len(state.slots) != len(layers):
        return f"the optimizer state has {len(state.slots)} entries for {len(layers)} layers"
    per: int | None = None  # moment arrays per parameter, the optimizer's
    for i, (layer, slots) in enumerate(zip(layers, state.slots)):
        params, where = parameters(layer), f"layer {i} ({type(layer).__name__})"
        k, rest = divmod(len(slots), len(params)) if params else (0, len(slots))
        if rest or (params and per is not None and k != per):
            return (f"the optimizer state holds {len(slots)} arrays for {where}, which has {len(params)} parameters"
                    + ("" if per is None else f" (and the layers before it {per} arrays per parameter)"))
        per = k if params else per
        for j, a in enumerate(slots):
            name, p = params[j // k]
            if a.shape != p.shape:
                return f"the optimizer state's array {j} for {where} has shape {a.shape}, its {name} {p.shape}"
    return None


def save(path: Path | str, layers: Sequence[Layer], opt_state: OptState | None = None,
         meta: Meta | None = None) -> None:
    """Write ``layers`` (and optionally the optimizer state and metadata) to ``path`` atomically.

    Arguments:
        path: the ``.npz`` file to write (parent directories are created).
        layers: the network; all its arrays (and the state's) must share one dtype.
        opt_state: an :class:`~lazybn.optim.OptState` to save alongside, or None.
        meta: small JSON-able facts (epoch, learning rate, notes): str -> str/int/float/bool; a
            numpy bool, integer or float (or a 0-d array of one) is stored as its Python value.

    Raises:
        DTypeError: the arrays mix float32 and float64.
        ShapeError: consecutive layers do not fit together (the network could not run).
        ValueRangeError: an array, or a float in ``meta``, holds NaN or infinity, or an int in
            ``meta`` has more digits than Python writes as text (4300 by default).
        ArgumentError: ``path`` is (or ends with a separator, as) a directory, ``layers`` is not a
            list of lazybn layers, ``meta`` not a mapping of str to str/int/float/bool (or numpy
            scalars of them), or ``opt_state`` not an optimizer state of these layers (which
            ``load`` would refuse).
        OSError: the file cannot be written (``NotADirectoryError``: a parent is a file).
    """
    check_layers("save", layers)
    misfit = _misfit(layers)
    if misfit is not None:
        raise ShapeError("save", (misfit[1],), (misfit[2],), f"{misfit[0]}; the network could not run")
    if opt_state is not None:
        given: object = opt_state  # an untyped caller may pass anything
        wrong = (f"opt_state is {a_kind(given)}, not an OptState" if not isinstance(given, OptState)
                 else _state_misfit(layers, opt_state))
        if wrong is not None:
            raise ArgumentError(f"save: {wrong}; opt_state must be the optimizer state of these layers "
                                "(init_state(opt, layers), or train_step's with them)")
    arrays: dict[str, Manifest[Any]] = {}
    for i, layer in enumerate(layers):
        arrays.update({f"layer{i}.{k}": a for k, a in _arrays_of(layer).items()})
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION,
                              "layers": [_describe(layer) for layer in layers], "optimizer": None,
                              "meta": _check_meta(meta)}
    if opt_state is not None:
        header["optimizer"] = {"step": opt_state.step, "slots": [[list(a.shape) for a in s] for s in opt_state.slots],
                               "made_by": opt_state.optimizer}
        for i, s in enumerate(opt_state.slots):
            arrays.update({f"opt.slot.{i}.{j}": a for j, a in enumerate(s)})
    for name, a in arrays.items():
        if not np.isfinite(a.array).all():
            raise ValueRangeError(f"save: array {name!r} holds NaN or infinity (a training step never makes one)")
    dtypes = sorted({str(a.dtype) for a in arrays.values()})
    if len(dtypes) > 1:
        raise DTypeError(f"save: the arrays mix dtypes {dtypes}; convert the network to one dtype first")
    header["dtype"] = dtypes[0] if dtypes else None
    header["comp"] = "Par" if any(a.comp is Comp.Par for a in arrays.values()) else "Seq"
    blob = np.frombuffer(json.dumps(header, allow_nan=False).encode(), dtype=np.uint8)
    payload: dict[str, Any] = {name: a.array for name, a in arrays.items()}
    payload["header.json"] = blob
    with atomic_writer(path) as f:
        np.savez(f, **payload)


def load(path: Path | str, comp: Comp | None = None) -> Saved:
    """Read a network saved by :func:`save`.

    Arguments:
        path: the ``.npz`` file.
        comp: the computation strategy of the loaded arrays; None = as saved.

    Returns:
        A :class:`Saved` with the layers, the optimizer state (None if none was saved) and meta.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        PersistenceError: the file is not a zip archive or truncated, has no lazybn
            header, is of another format or version, an array is missing, extra, of the wrong
            shape or dtype, an object (pickled) array, holds NaN or infinity, a running variance is
            negative, or the optimizer state does not fit the layers.
        ArgumentError: ``comp`` is neither None nor a :class:`Comp`.
    """
    if comp is not None and comp.__class__ is not Comp:
        raise ArgumentError(f"load: comp must be lb.Comp.Seq, lb.Comp.Par or None, got {comp!r}")
    path = Path(path)
    if path.is_dir():
        raise PersistenceError(f"{path} is a directory, not a saved network (.npz) file")
    with open(path, "rb") as f:  # our own handle: np.load(path) leaks one on a truncated zip
        try:
            if not zipfile.is_zipfile(f):
                raise PersistenceError(f"{path}: not a zip (.npz) archive, or truncated")
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                return _read(path, z, comp)
        except PersistenceError:
            raise
        except LazybnError as exc:
            raise PersistenceError(f"{path}: the saved values are invalid: {exc}") from None
        except (*ZIP_ERRORS, ValueError, MemoryError) as exc:  # MemoryError: a damaged shape, too large
            raise PersistenceError(f"{path}: cannot read the file: {exc}") from None


def _read(path: Path, z: Any, comp: Comp | None) -> Saved:
    if "header.json" not in z.files:
        raise PersistenceError(f"{path}: no 'header.json' array: not a lazybn network file")
    try:
        raw = z["header.json"]
    except ValueError as exc:
        raise PersistenceError(f"{path}: 'header.json' is unreadable: {exc} (lazybn never unpickles)") from None
    if not isinstance(raw, np.ndarray):
        raise PersistenceError(f"{path}: 'header.json' is not stored as an array (.npy), but as raw bytes")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise PersistenceError(f"{path}: 'header.json' must be a 1-d uint8 array, got {raw.dtype} {raw.shape}")
    try:
        header = json.loads(raw.tobytes().decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PersistenceError(f"{path}: the header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise PersistenceError(f"{path}: the header is not a JSON object")
    if header.get("format") != FORMAT:
        raise PersistenceError(f"{path}: format {header.get('format')!r}, not {FORMAT!r}")
    if type(header.get("version")) is not int or header.get("version") != VERSION:
        raise PersistenceError(f"{path}: file format version {header.get('version')!r}; this lazybn reads "
                               f"version {VERSION} only")
    dt = header.get("dtype")
    if dt not in ("float32", "float64", None):
        raise PersistenceError(f"{path}: header dtype {dt!r} is not float32 or float64")
    if header.get("comp") not in ("Seq", "Par"):
        raise PersistenceError(f"{path}: header comp {header.get('comp')!r} is not Seq or Par")
    saved_comp = Comp.Par if header.get("comp") == "Par" else Comp.Seq
    r = Reader(path, z, None if dt is None else np.dtype(dt), comp or saved_comp)
    layer_ds = header_field(header, "layers", "list", str(path))
    layers = [read_layer(i, d, r) for i, d in enumerate(layer_ds)]
    misfit = _misfit(layers)
    if misfit is not None:
        raise PersistenceError(f"{path}: {misfit[0]}; the file is corrupt")
    state = None
    opt = header.get("optimizer")
    if opt is not None:
        step = header_field(opt, "step", "int", f"{path}: optimizer")
        shapes = header_field(opt, "slots", "list", f"{path}: optimizer")
        if len(shapes) != len(layers) or not all(isinstance(s, list) for s in shapes):
            raise PersistenceError(f"{path}: the optimizer state has {len(shapes)} entries for {len(layers)} layers, "
                                   f"each a list of shapes: {[type(s).__name__ for s in shapes]}")
        made_by = opt.get("made_by")
        if made_by is not None and made_by not in KINDS:
            raise PersistenceError(f"{path}: header field 'made_by' of the optimizer is invalid ({made_by!r})")
        state = OptState(step, tuple(tuple(r.get(f"opt.slot.{i}.{j}", s) for j, s in enumerate(ss))
                                     for i, ss in enumerate(shapes)), made_by)
        wrong = _state_misfit(layers, state)
        if wrong is not None:
            raise PersistenceError(f"{path}: {wrong}; the file is corrupt")
    extra = sorted(set(z.files) - r.used)
    if extra:
        raise PersistenceError(f"{path}: arrays not described by the header: {extra[:5]}")
    meta = header.get("meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, (str, int, float, bool)) for v in meta.values()):
        raise PersistenceError(f"{path}: header field 'meta' is not an object of str/int/float/bool values")
    return Saved(layers, state, meta)
