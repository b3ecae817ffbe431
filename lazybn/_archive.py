"""Reading a saved network file (see :mod:`lazybn.persist`): its arrays, each checked against the
header, the header's fields, each checked for its kind, and its layers from their descriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._files import ZIP_ERRORS
from .array import Comp, Manifest
from .errors import PersistenceError
from .layers import Act, Activation, Batchnorm1d, Dropout, Layer, Linear, LinearNoBias, Renorm


class Reader:
    """Reads the arrays of an open npz archive, checking each against the header."""

    def __init__(self, path: Path, z: Any, dtype: np.dtype[Any] | None, comp: Comp) -> None:
        self.path, self.z, self.dtype, self.comp = path, z, dtype, comp
        self.used: set[str] = {"header.json"}

    def get(self, name: str, shape: object) -> Manifest[Any]:
        if name not in self.z.files:
            raise PersistenceError(f"{self.path}: array {name!r} listed in the header is missing")
        try:
            arr = self.z[name]
        except ValueError as exc:
            raise PersistenceError(f"{self.path}: array {name!r} is unreadable: {exc} "
                                   f"(lazybn never unpickles: object arrays are refused)") from None
        except ZIP_ERRORS as exc:
            raise PersistenceError(f"{self.path}: array {name!r} is truncated or corrupt: {exc}") from None
        except MemoryError:
            raise PersistenceError(f"{self.path}: array {name!r} claims a size that cannot be allocated; "
                                   "the file is corrupt") from None
        if not isinstance(arr, np.ndarray):  # a member without a .npy header: numpy hands over its bytes
            raise PersistenceError(f"{self.path}: array {name!r} is not stored as an array (.npy), but as raw bytes")
        if not isinstance(shape, list) or not all(type(n) is int for n in shape) or tuple(arr.shape) != tuple(shape):
            raise PersistenceError(f"{self.path}: array {name!r} has shape {arr.shape}, the header says {shape}")
        if self.dtype is None or arr.dtype != self.dtype:
            raise PersistenceError(f"{self.path}: array {name!r} is {arr.dtype}, the header says {self.dtype}")
        if not np.isfinite(arr).all():  # save writes none (a training step never makes one)
            raise PersistenceError(f"{self.path}: array {name!r} holds NaN or infinity; the file is corrupt")
        self.used.add(name)
        arr = np.ascontiguousarray(arr)
        arr.flags.writeable = False
        return Manifest(arr, self.comp)


_KINDS: dict[str, tuple[type, ...]] = {"str": (str,), "num": (int, float), "int": (int,), "bool": (bool,),
                                      "list": (list,)}


def header_field(d: object, key: str, kind: str, where: str) -> Any:
    """``d[key]`` if ``d`` is a JSON object and the value is of ``kind`` (bool is not a number)."""
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, _KINDS[kind]) or (isinstance(v, bool) and kind != "bool") or (kind == "num" and _huge(v)):
        raise PersistenceError(f"{where}: header field {key!r} is missing or invalid ({v!r})")
    return v


def _huge(v: object) -> bool:
    """An integer beyond float64's range (JSON integers have no bound; the layers take floats)."""
    try:
        float(v)  # type: ignore[arg-type]
    except OverflowError:
        return True
    return False


def read_layer(i: int, d: dict[str, Any], r: Reader) -> Layer:
    where = f"{r.path}: layer {i}"
    kind = header_field(d, "kind", "str", where)
    shapes = d.get("arrays")

    def a(name: str) -> Manifest[Any]:
        return r.get(f"layer{i}.{name}", shapes.get(name) if isinstance(shapes, dict) else None)

    trainable = header_field(d, "trainable", "bool", where) if "trainable" in d else True
    if kind == "Linear":
        return Linear(a("w"), a("b"), trainable=trainable)
    if kind == "LinearNoBias":
        return LinearNoBias(a("w"), trainable=trainable)
    if kind == "Batchnorm1d":
        var = a("var")
        if (var.array < 0).any():
            raise PersistenceError(f"{where} (Batchnorm1d): the running variance has negative entries "
                                   f"{var.array[var.array < 0][:3]}; the file is corrupt")
        momentum = None if d.get("momentum", 0) is None else header_field(d, "momentum", "num", where)
        tracked = header_field(d, "tracked", "int", where) if "tracked" in d else 0
        renorm = d.get("renorm")  # absent or null: batch norm
        if renorm is not None:
            if not isinstance(renorm, dict):
                raise PersistenceError(f"{where}: header field 'renorm' is invalid ({renorm!r})")
            renorm = Renorm(*(None if renorm.get(k) is None else header_field(renorm, k, "num", where)
                              for k in ("rmax", "dmax")))
        return Batchnorm1d(a("mu"), var, a("gamma"), a("beta"), eps=header_field(d, "eps", "num", where),
                           momentum=momentum, unbiased=header_field(d, "unbiased", "bool", where), tracked=tracked,
                           renorm=renorm, ghost_batch=None if d.get("ghost_batch") is None
                           else header_field(d, "ghost_batch", "int", where),
                           frozen=header_field(d, "frozen", "bool", where) if "frozen" in d else False,
                           trainable=trainable)
    if kind == "Activation":
        act = header_field(d, "activation", "str", where)
        if act not in Act.__members__:
            raise PersistenceError(f"{where}: unknown activation {act!r} (known: {', '.join(Act.__members__)})")
        return Activation(Act[act])
    if kind == "Dropout":
        return Dropout(header_field(d, "p", "num", where))
    raise PersistenceError(f"{where}: unknown layer kind {kind!r}")
