"""Saving and loading networks: bitwise round trips, atomic writes, and clear errors on bad files."""

from __future__ import annotations

import io
import json
import os
import time
import re
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lazybn as lb
from lazybn.errors import DTypeError, PersistenceError, ValueRangeError
from lazybn.init import mlp
from lazybn.layers import Batchnorm1d, Layer, Linear, LinearNoBias
from lazybn.optim import Adam, init_state
from lazybn.persist import load, save

from .helpers import DTYPES, NPY_HEADER_DAMAGE, ZIP_HEADER_DAMAGE, damage_npy_header, damage_zip_headers
from .net_helpers import assert_same_network, assert_same_state, networks, random_state

ROOT = Path(__file__).resolve().parent.parent
META = st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers(-2**62, 2**62),
                                                      st.floats(allow_nan=False, allow_infinity=False),
                                                      st.booleans()), max_size=4)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), with_state=st.booleans(), meta=META)
def test_round_trip_is_bitwise(dtype: np.dtype[Any], data: st.DataObject, with_state: bool,
                               meta: dict[str, str | int | float | bool]) -> None:
    layers = data.draw(networks(dtype))
    state = random_state(layers, data.draw(st.integers(0, 2)), data.draw(st.integers(0, 10**6)), 0) \
        if with_state else None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sub" / "net.npz"
        save(path, layers, state, meta)
        got = load(path)
        assert os.listdir(path.parent) == ["net.npz"]  # no temporary file left behind
    assert_same_network(got.layers, layers)
    assert_same_state(got.opt_state, state)
    assert got.meta == meta
    assert {k: type(v) for k, v in got.meta.items()} == {k: type(v) for k, v in meta.items()}


def test_round_trip_of_an_mlp_with_adam_state_and_comp(tmp_path: Path) -> None:
    layers = mlp([7, 5, 3], batchnorm=True, dropout=0.1, comp=lb.Comp.Par)
    state = init_state(Adam(), layers)
    save(str(tmp_path / "n.npz"), layers, state, {"epoch": 3})
    got = load(tmp_path / "n.npz")
    assert_same_network(got.layers, layers)
    assert_same_state(got.opt_state, state)
    assert got.meta == {"epoch": 3}
    assert all(x.w.comp is lb.Comp.Par for x in got.layers if isinstance(x, LinearNoBias))
    assert all(x.w.comp is lb.Comp.Seq for x in load(tmp_path / "n.npz", comp=lb.Comp.Seq).layers
               if isinstance(x, LinearNoBias))
    with np.load(tmp_path / "n.npz") as z:  # readable names, JSON header
        assert {"layer0.w", "layer1.gamma", "layer1.var", "opt.slot.1.0", "header.json"} <= set(z.files)
        header = json.loads(z["header.json"].tobytes())
    assert header["format"] == "lazybn-network" and header["version"] == 1 and header["dtype"] == "float32"
    assert header["layers"][1] == {"kind": "Batchnorm1d", "eps": 1e-5, "momentum": 0.1, "unbiased": True, "tracked": 0,
                                   "arrays": {"mu": [5], "var": [5], "gamma": [5], "beta": [5]}}
    assert header["layers"][2] == {"kind": "Activation", "activation": "relu"}
    assert header["layers"][3] == {"kind": "Dropout", "p": 0.1}
    assert header["optimizer"]["step"] == 0


def test_an_empty_network_round_trips(tmp_path: Path) -> None:
    save(tmp_path / "e.npz", [])
    got = load(tmp_path / "e.npz")
    assert got.layers == [] and got.opt_state is None and got.meta == {}


# --- atomic writes -------------------------------------------------------------------------

KILLED_WRITER = """
import sys, time
import numpy as np
from lazybn.init import mlp
from lazybn.persist import save

real_savez = np.savez


class Slow:
    # a file that stalls after its first few writes, so the writer can be killed mid-file
    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, b):
        self.f.write(b)
        self.f.flush()
        self.n += 1
        if self.n == 3:
            print("mid-write", flush=True)
            time.sleep(300)
        return len(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


np.savez = lambda file, *a, **k: real_savez(Slow(file), *a, **k)
save(sys.argv[1], mlp([300, 200, 10], batchnorm=False, seed=99))
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "net.npz"
    old = mlp([6, 4, 2], batchnorm=True, seed=1)
    save(path, old, meta={"generation": 1})
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "mid-write\n", proc.stderr.read() if proc.stderr else line
        partial = [p for p in tmp_path.iterdir() if p.name != "net.npz"]
        assert len(partial) == 1 and partial[0].stat().st_size > 0  # the temporary file being written
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    got = load(path)
    assert_same_network(got.layers, old)
    assert got.meta == {"generation": 1}
    with pytest.raises(PersistenceError, match="truncated"):  # the stale temporary file is not a network
        load(partial[0])


@pytest.mark.parametrize("name", ["n" * 251 + ".npz", "网" * 85], ids=["ascii", "utf-8"])  # 255 bytes: the most
def test_the_longest_file_names_are_written(tmp_path: Path, name: str) -> None:
    """The temporary file beside the target has a name of its own that must fit too."""
    net = mlp([3, 2], batchnorm=True, seed=2)
    save(tmp_path / name, net)
    assert os.listdir(tmp_path) == [name]
    assert_same_network(load(tmp_path / name).layers, net)


def test_temporary_files_of_killed_writes_are_removed_once_a_day_old(tmp_path: Path) -> None:
    """A write killed before its rename leaves its temporary file; the next write of the same file
    removes those more than a day old, and leaves younger ones (a write still under way), other
    files' and look-alikes alone."""
    name = "net[1].npz"  # a name with glob's special characters
    day = 86400
    files = {f".{name}.abcd1234.tmp": 2 * day, f".{name}.efgh5678.tmp": day // 2, ".other.npz.abcd1234.tmp": 2 * day,
             f".{name}.short.tmp": 2 * day, f".{name}.abcd1234.tmp.keep": 2 * day}
    for f, age in files.items():
        (tmp_path / f).write_bytes(b"partial")
        os.utime(tmp_path / f, (time.time() - age, time.time() - age))
    save(tmp_path / name, mlp([3, 2], batchnorm=True, seed=2))
    assert sorted(os.listdir(tmp_path)) == sorted([name, *(f for f, age in files.items() if f != f".{name}.abcd1234.tmp")])


# --- bad files ----------------------------------------------------------------------------------


def _saved(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A saved BN network, and its arrays and header as a dict for tampering."""
    path = tmp_path / "good.npz"
    save(path, mlp([4, 3, 2], batchnorm=True, seed=5), init_state(Adam(), mlp([4, 3, 2], batchnorm=True)))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header.json"].tobytes())
    return path, {"arrays": arrays, "header": header}


def _write(path: Path, arrays: dict[str, Any], header: Any = None, raw_header: bytes | None = None) -> Path:
    out = dict(arrays)
    if raw_header is not None or header is not None:
        text = raw_header if raw_header is not None else json.dumps(header).encode()
        out["header.json"] = np.frombuffer(text, dtype=np.uint8)
    np.savez(path, **out)
    return path


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, fraction: float) -> None:
    path, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(PersistenceError, match=re.escape(str(path)) + ".*not a zip.*truncated"):
        load(path)


def test_corrupted_bytes_inside_the_archive(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    start = data.index(b"\x93NUMPY", data.index(b"layer0.w.npy"))
    header_len = int.from_bytes(data[start + 8:start + 10], "little")  # .npy format 1.0
    i = start + 10 + header_len + 5  # inside layer0.w's values
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PersistenceError, match="layer0.w.*(truncated or corrupt|CRC)"):
        load(path)


@pytest.mark.parametrize("how", sorted(ZIP_HEADER_DAMAGE))
def test_a_damaged_zip_header_is_a_persistence_error(tmp_path: Path, how: str) -> None:
    """One flipped field in the archive's directory makes zipfile raise NotImplementedError or
    RuntimeError (not one of its usual errors); load reports it as a damaged file all the same."""
    path, _ = _saved(tmp_path)
    path.write_bytes(damage_zip_headers(path.read_bytes(), how))
    with pytest.raises(PersistenceError, match=re.escape(str(path))):
        load(path)


@pytest.mark.parametrize("how", sorted(set(ZIP_HEADER_DAMAGE) - {"future zip version"}))  # that one: when it opens
def test_one_array_behind_a_damaged_zip_header_is_named(tmp_path: Path, how: str) -> None:
    """The archive opens and its header reads; only layer0.w's entry is damaged: the error names that array."""
    path, _ = _saved(tmp_path)
    path.write_bytes(damage_zip_headers(path.read_bytes(), how, member="layer0.w.npy"))
    with pytest.raises(PersistenceError, match=re.escape(f"{path}: array 'layer0.w' is truncated or corrupt")):
        load(path)


def test_missing_header(tmp_path: Path) -> None:
    path, d = _saved(tmp_path)
    arrays = {k: v for k, v in d["arrays"].items() if k != "header.json"}
    with pytest.raises(PersistenceError, match="no 'header.json'.*not a lazybn network"):
        load(_write(tmp_path / "h.npz", arrays))


def test_header_that_is_not_json(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    with pytest.raises(PersistenceError, match="header is not valid JSON"):
        load(_write(tmp_path / "h.npz", d["arrays"], raw_header=b"{not json"))


def test_other_format_and_version(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    with pytest.raises(PersistenceError, match="format 'keras-weights', not 'lazybn-network'"):
        load(_write(tmp_path / "f.npz", d["arrays"], {**d["header"], "format": "keras-weights"}))
    with pytest.raises(PersistenceError, match="version 2; this lazybn reads version 1"):
        load(_write(tmp_path / "v.npz", d["arrays"], {**d["header"], "version": 2}))
    with pytest.raises(PersistenceError, match="version 1.0; this lazybn reads version 1"):  # JSON has no 1.0 == 1
        load(_write(tmp_path / "w.npz", d["arrays"], {**d["header"], "version": 1.0}))
    with pytest.raises(PersistenceError, match="header comp 'GPU' is not Seq or Par"):
        load(_write(tmp_path / "c.npz", d["arrays"], {**d["header"], "comp": "GPU"}))


def test_tampered_header(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    header = json.loads(json.dumps(d["header"]))
    header["layers"][0]["arrays"]["w"] = [3, 4]
    with pytest.raises(PersistenceError, match=re.escape("array 'layer0.w' has shape (4, 3), the header says [3, 4]")):
        load(_write(tmp_path / "t.npz", d["arrays"], header))
    header = json.loads(json.dumps(d["header"]))
    header["layers"][2] = {"kind": "Activation", "activation": "swish"}
    with pytest.raises(PersistenceError, match="layer 2: unknown activation 'swish'"):
        load(_write(tmp_path / "a.npz", d["arrays"], header))
    header = json.loads(json.dumps(d["header"]))
    header["layers"][1]["eps"] = "small"
    with pytest.raises(PersistenceError, match="layer 1: header field 'eps' is missing or invalid"):
        load(_write(tmp_path / "e.npz", d["arrays"], header))
    header = json.loads(json.dumps(d["header"]))
    header["layers"][1]["eps"] = -1.0  # the layer's own validation, reported as a bad file
    with pytest.raises(PersistenceError, match="invalid.*Batchnorm1d.eps"):
        load(_write(tmp_path / "n.npz", d["arrays"], header))
    header = json.loads(json.dumps(d["header"]))
    header["layers"][1]["frozen"] = "yes"
    with pytest.raises(PersistenceError, match="layer 1: header field 'frozen' is missing or invalid"):
        load(_write(tmp_path / "fz.npz", d["arrays"], header))
    header = json.loads(json.dumps(d["header"]))
    header["layers"][1].update(frozen=True, ghost_batch=4)  # settings that cannot go together
    with pytest.raises(PersistenceError, match="frozen layer"):
        load(_write(tmp_path / "fg.npz", d["arrays"], header))
    header = json.loads(json.dumps(d["header"]))
    header["layers"][0]["trainable"] = 0  # a number is not a flag
    with pytest.raises(PersistenceError, match="layer 0: header field 'trainable' is missing or invalid"):
        load(_write(tmp_path / "tr.npz", d["arrays"], header))
    header["layers"][0]["trainable"] = False  # written by hand: the flag a saved layer would carry
    assert not load(_write(tmp_path / "tf.npz", d["arrays"], header)).layers[0].trainable  # type: ignore[union-attr]


def test_the_optimizer_that_made_a_saved_state_is_kept(tmp_path: Path) -> None:
    path, d = _saved(tmp_path)  # Adam's state
    assert d["header"]["optimizer"]["made_by"] == "Adam"
    saved = load(path)
    assert saved.opt_state is not None and saved.opt_state.optimizer == "Adam"
    header = json.loads(json.dumps(d["header"]))
    del header["optimizer"]["made_by"]  # a file written before the record: loads, unrecorded
    old = load(_write(tmp_path / "old.npz", d["arrays"], header)).opt_state
    assert old is not None and old.optimizer is None
    header["optimizer"]["made_by"] = "Nadam"
    with pytest.raises(PersistenceError, match="'made_by' of the optimizer is invalid"):
        load(_write(tmp_path / "bad.npz", d["arrays"], header))


def test_wrong_array_shape_dtype_missing_and_extra(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    a, h = d["arrays"], d["header"]
    with pytest.raises(PersistenceError, match=re.escape("array 'layer1.gamma' has shape (4,), the header says [3]")):
        load(_write(tmp_path / "s.npz", {**a, "layer1.gamma": np.ones(4, np.float32)}, h))
    with pytest.raises(PersistenceError, match="array 'layer3.w' is float64, the header says float32"):
        load(_write(tmp_path / "d.npz", {**a, "layer3.w": a["layer3.w"].astype(np.float64)}, h))
    with pytest.raises(PersistenceError, match="array 'opt.slot.0.1' listed in the header is missing"):
        load(_write(tmp_path / "m.npz", {k: v for k, v in a.items() if k != "opt.slot.0.1"}, h))
    with pytest.raises(PersistenceError, match=r"not described by the header: \['layer9.w'\]"):
        load(_write(tmp_path / "x.npz", {**a, "layer9.w": np.ones((2, 2), np.float32)}, h))


@pytest.mark.parametrize("name,bad,message", [
    ("layer1.var", -1.0, "layer 1 \\(Batchnorm1d\\): the running variance has negative entries \\[-1.\\]"),
    ("layer1.var", float("nan"), "array 'layer1.var' holds NaN or infinity"),
    ("layer0.w", float("nan"), "array 'layer0.w' holds NaN or infinity"),
    ("layer3.w", float("-inf"), "array 'layer3.w' holds NaN or infinity"),
    ("opt.slot.0.1", float("inf"), "array 'opt.slot.0.1' holds NaN or infinity"),
])
def test_negative_variances_and_non_finite_values_are_refused(tmp_path: Path, name: str, bad: float,
                                                               message: str) -> None:
    _, d = _saved(tmp_path)
    a = d["arrays"][name].copy()
    a.flat[1] = bad
    with pytest.raises(PersistenceError, match=message):
        load(_write(tmp_path / "v.npz", {**d["arrays"], name: a}, d["header"]))


def test_save_refuses_non_finite_weights_and_directories(tmp_path: Path) -> None:
    w = np.ones((2, 3), np.float32)
    w[1, 2] = np.nan  # a Linear layer does not look at its weights; save does
    with pytest.raises(ValueRangeError, match="save: array 'layer0.w' holds NaN or infinity"):
        save(tmp_path / "n.npz", [LinearNoBias(lb.matrix(w))])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(lb.ArgumentError, match="it is a directory"):
        save(tmp_path, mlp([2, 2], batchnorm=False))
    assert list(tmp_path.iterdir()) == []  # no temporary file left beside it
    for name in ("new/", f"new{os.sep}"):  # a file named "new" would be written
        with pytest.raises(lb.ArgumentError, match="names a directory"):
            save(f"{tmp_path}/{name}", mlp([2, 2], batchnorm=False))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f.npz").write_bytes(b"kept")
    with pytest.raises(NotADirectoryError, match="f.npz is a file, not a directory"):
        save(tmp_path / "f.npz" / "sub" / "x.npz", mlp([2, 2], batchnorm=False))
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"] and (tmp_path / "f.npz").read_bytes() == b"kept"
    with pytest.raises(lb.ArgumentError, match=r"save: layers\[1\] is a str, not a lazybn layer"):
        save(tmp_path / "s.npz", [*mlp([2, 2], batchnorm=False), "relu"])  # type: ignore[list-item]


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    evil = np.empty((4, 3), dtype=object)
    with pytest.raises(PersistenceError, match="layer0.w.*(pickle|[Oo]bject)"):
        load(_write(tmp_path / "o.npz", {**d["arrays"], "layer0.w": evil}, d["header"]))
    with pytest.raises(PersistenceError, match="'header.json' is unreadable.*never unpickles"):
        load(_write(tmp_path / "h.npz", {**d["arrays"], "header.json": np.array([{"format": 1}], dtype=object)}))
    with pytest.raises(PersistenceError, match="'header.json' must be a 1-d uint8 array, got int64"):
        load(_write(tmp_path / "i.npz", {**d["arrays"], "header.json": np.arange(3, dtype=np.int64)}))


@pytest.mark.parametrize("member", ["layer0.w", "header.json"])
def test_a_member_stored_as_raw_bytes_is_named(tmp_path: Path, member: str) -> None:
    """An archive member without a .npy header (written by hand: ``layer0.w`` instead of
    ``layer0.w.npy``), for which numpy returns the member's bytes instead of an array."""
    path, _ = _saved(tmp_path)
    raw = tmp_path / "raw.npz"
    with zipfile.ZipFile(path) as zi, zipfile.ZipFile(raw, "w") as zo:
        for name in zi.namelist():
            if name == f"{member}.npy":
                zo.writestr(member, json.dumps({"format": "lazybn-network"}).encode())
            else:
                zo.writestr(name, zi.read(name))
    with pytest.raises(PersistenceError, match=re.escape(f"{raw}: ") + f".*'{re.escape(member)}' is not stored as an "
                                               r"array \(\.npy\), but as raw bytes"):
        load(raw)


def test_not_a_zip_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"\x93NUMPY" + b"\0" * 100)
    with pytest.raises(PersistenceError, match="not a zip"):
        load(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.npz")


def test_hostile_headers_are_persistence_errors(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    with pytest.raises(PersistenceError, match="not valid JSON"):  # json would recurse 100000 levels deep
        load(_write(tmp_path / "deep.npz", d["arrays"], raw_header=b"[" * 100_000 + b"]" * 100_000))
    header = json.loads(json.dumps(d["header"]))
    header["layers"][0]["arrays"]["w"] = [4, 3.0]
    with pytest.raises(PersistenceError, match=re.escape("the header says [4, 3.0]")):
        load(_write(tmp_path / "float.npz", d["arrays"], header))
    huge = tmp_path / "huge.npz"  # an array whose own header claims 2**40 elements
    with zipfile.ZipFile(_write(tmp_path / "ok.npz", d["arrays"])) as zi, zipfile.ZipFile(huge, "w") as zo:
        for name in zi.namelist():
            data = zi.read(name)
            if name == "layer0.w.npy":
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                                            "shape": (1 << 40,)})
                data = head.getvalue() + data[128:]
            zo.writestr(name, data)
    with pytest.raises(PersistenceError, match="layer0.w"):
        load(huge)


@pytest.mark.parametrize("member", ["header.json.npy", "layer0.w.npy"])
@pytest.mark.parametrize("how", NPY_HEADER_DAMAGE)
def test_a_damaged_npy_header_is_a_persistence_error(tmp_path: Path, member: str, how: str) -> None:
    """One array's .npy header damaged inside an archive whose CRCs match it (numpy's parser of the
    header fails with TokenError or OverflowError, or the shape cannot be allocated): a PersistenceError."""
    path, _ = _saved(tmp_path)
    damaged = tmp_path / "damaged.npz"
    with zipfile.ZipFile(path) as zi, zipfile.ZipFile(damaged, "w") as zo:
        for name in zi.namelist():
            data = zi.read(name)
            zo.writestr(name, damage_npy_header(data, how) if name == member else data)
    assert damaged.read_bytes() != path.read_bytes()
    with pytest.raises(PersistenceError, match=re.escape(str(damaged))):
        load(damaged)


def test_a_directory_is_not_a_network_file(tmp_path: Path) -> None:
    with pytest.raises(PersistenceError, match="is a directory, not a saved network"):
        load(tmp_path)


def test_layers_that_do_not_fit_together_are_refused_by_save_and_load(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)  # 4 -> 3 (batch norm over 3) -> 2
    header = json.loads(json.dumps(d["header"]))
    header["layers"][3]["arrays"]["w"] = [5, 2]
    wide = {**d["arrays"], "layer3.w": np.ones((5, 2), np.float32)}
    with pytest.raises(PersistenceError, match=r"layer 3 \(LinearNoBias\) takes 5 features but the layer before gives 3"):
        load(_write(tmp_path / "w.npz", wide, header))
    header["layers"][1]["arrays"] = {k: [4] for k in ("mu", "var", "gamma", "beta")}
    narrow = {**d["arrays"], **{f"layer1.{k}": np.ones(4, np.float32) for k in ("mu", "var", "gamma", "beta")}}
    with pytest.raises(PersistenceError, match=r"layer 1 \(Batchnorm1d\) takes 4 features but the layer before gives 3"):
        load(_write(tmp_path / "b.npz", {**narrow, "layer3.w": d["arrays"]["layer3.w"]},
                    {**header, "layers": [*header["layers"][:3], d["header"]["layers"][3]]}))
    misfit: list[Layer] = [LinearNoBias(lb.matrix(np.ones((4, 3)))), LinearNoBias(lb.matrix(np.ones((2, 2))))]
    with pytest.raises(lb.ShapeError, match="layer 1 \\(LinearNoBias\\) takes 2 features"):
        save(tmp_path / "never.npz", misfit)
    assert not (tmp_path / "never.npz").exists()


def test_save_refuses_an_optimizer_state_of_other_layers_and_load_a_file_with_one(tmp_path: Path) -> None:
    """What load would refuse (or train_step, later), save refuses: a state with another number of
    entries, one made for another network (other shapes), moments for a layer without parameters,
    layers with different numbers of moments per parameter, something else than a state."""
    layers = mlp([4, 3, 2], batchnorm=True, seed=5)  # LinearNoBias, Batchnorm1d, Activation, LinearNoBias
    adam, momentum = init_state(Adam(), layers), init_state(lb.Momentum(0.1), layers)
    extra = lb.Manifest(np.zeros(3, np.float32))
    bad: list[tuple[Any, str]] = [
        (lb.OptState(0, adam.slots[:2], "Adam"), "the optimizer state has 2 entries for 4 layers"),
        (init_state(Adam(), mlp([4, 5, 2], batchnorm=True)),
         r"the optimizer state's array 0 for layer 0 \(LinearNoBias\) has shape \(4, 5\), its w \(4, 3\)"),
        (lb.OptState(0, (*adam.slots[:2], (extra,), adam.slots[3])),
         r"the optimizer state holds 1 arrays for layer 2 \(Activation\), which has 0 parameters"),
        (lb.OptState(0, (adam.slots[0], momentum.slots[1], (), adam.slots[3])),
         r"the optimizer state holds 2 arrays for layer 1 \(Batchnorm1d\), which has 2 parameters "
         r"\(and the layers before it 2 arrays per"),
        ({"step": 0}, "opt_state is a dict, not an OptState"),
    ]
    for state, message in bad:
        with pytest.raises(lb.ArgumentError, match="save: " + message):
            save(tmp_path / "s.npz", layers, state)
    assert not list(tmp_path.iterdir())
    for state in (adam, momentum, init_state(lb.SGD(0.1), layers)):  # what init_state makes is saved
        save(tmp_path / "s.npz", layers, state)
        assert_same_state(load(tmp_path / "s.npz").opt_state, state)
    _, d = _saved(tmp_path)  # by hand: Adam's moments of layer 0 as wide as another network's
    header = json.loads(json.dumps(d["header"]))
    header["optimizer"]["slots"][0] = [[4, 5], [4, 5]]
    arrays = {**d["arrays"], "opt.slot.0.0": np.zeros((4, 5), np.float32), "opt.slot.0.1": np.zeros((4, 5), np.float32)}
    with pytest.raises(PersistenceError, match=re.escape(str(tmp_path / "o.npz")) + r": the optimizer state's array 0 "
                                               r"for layer 0 \(LinearNoBias\) has shape \(4, 5\), its w \(4, 3\); the "
                                               "file is corrupt"):
        load(_write(tmp_path / "o.npz", arrays, header))


def test_save_rejects_mixed_dtypes_and_bad_meta(tmp_path: Path) -> None:
    layers: list[Layer] = [Linear(lb.matrix(np.ones((2, 2)), np.float32), lb.vector(np.ones(2), np.float32)),
                           LinearNoBias(lb.matrix(np.ones((2, 2)), np.float64))]
    with pytest.raises(DTypeError, match="mix dtypes"):
        save(tmp_path / "m.npz", layers)
    with pytest.raises(ValueRangeError, match="NaN"):
        save(tmp_path / "m.npz", layers[:1], meta={"loss": float("nan")})
    with pytest.raises(TypeError, match="meta"):
        save(tmp_path / "m.npz", layers[:1], meta={"x": [1, 2]})  # type: ignore[dict-item]
    for not_a_dict in ([("epoch", 1)], "epoch=1"):
        with pytest.raises(lb.ArgumentError, match=f"meta must be a dict of str to str/int/float/bool, got a "
                                                   f"{type(not_a_dict).__name__}"):
            save(tmp_path / "m.npz", layers[:1], meta=not_a_dict)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


NUMPY_META_DTYPES = [np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                            np.uint32, np.uint64, np.float16, np.float32, np.float64)]


def _numpy_value(dtype: np.dtype[Any], data: st.DataObject) -> object:
    """A finite value of ``dtype``, as a numpy scalar or a 0-d array."""
    a = data.draw(hnp.arrays(dtype, (), elements=hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False)))
    return a if data.draw(st.booleans()) else a[()]


@given(data=st.data(), dtypes=st.lists(st.sampled_from(NUMPY_META_DTYPES), max_size=4))
def test_numpy_scalars_in_meta_load_as_their_python_values(data: st.DataObject, dtypes: list[np.dtype[Any]]) -> None:
    """A numpy bool, integer or float, or a 0-d array of one, comes back as numpy's ``item()`` of it:
    a Python bool, int or float of the same value (every bit of a float)."""
    meta = {f"k{i}": _numpy_value(dt, data) for i, dt in enumerate(dtypes)}
    expected = {k: np.asarray(v).item() for k, v in meta.items()}
    with tempfile.TemporaryDirectory() as d:
        save(Path(d) / "m.npz", [], meta=meta)  # type: ignore[arg-type]  # a 0-d array is not typed as meta
        got = load(Path(d) / "m.npz").meta
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}
    assert all(type(v) in (bool, int, float) for v in got.values())
    assert [repr(v) for v in got.values()] == [repr(v) for v in expected.values()]  # -0.0 stays -0.0


@given(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.longdouble]),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf")]), zero_d=st.booleans())
def test_non_finite_numpy_floats_in_meta_are_refused_as_python_floats_are(
        dtype: type[np.floating[Any]], value: float, zero_d: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(ValueRangeError, match=r"meta\['x'\] = nan: JSON cannot store NaN or infinity"
                           if value != value else r"meta\['x'\] = -?inf: JSON cannot store NaN or infinity"):
            save(Path(d) / "m.npz", [], meta={"x": value})
        given_value = np.array(value, dtype) if zero_d else dtype(value)
        with pytest.raises(ValueRangeError, match=r"meta\['x'\] = .*(nan|inf).*: JSON cannot store NaN or infinity"):
            save(Path(d) / "m.npz", [], meta={"x": given_value})  # type: ignore[dict-item]
        assert not os.listdir(d)


def test_a_longdouble_beyond_float64_in_meta_is_refused_as_infinity(tmp_path: Path) -> None:
    huge = np.longdouble(np.finfo(np.float64).max) * 2
    if np.isinf(huge):  # longdouble is float64 here
        pytest.skip("longdouble is float64 on this platform")
    with pytest.raises(ValueRangeError, match=r"meta\['x'\] = .*: JSON cannot store NaN or infinity"):
        save(tmp_path / "m.npz", [], meta={"x": huge})
    assert not list(tmp_path.iterdir())


def test_an_int_in_meta_beyond_pythons_int_text_limit_is_refused(tmp_path: Path) -> None:
    """JSON writes an int as its digits, and Python converts at most sys.get_int_max_str_digits()
    (4300 by default) of them either way: at the limit the int round-trips, beyond it save refuses."""
    limit = sys.get_int_max_str_digits()
    if limit == 0:
        pytest.skip("this Python converts ints of any length")
    at_limit, beyond = -(10**limit - 1), 10**limit  # limit digits; limit + 1 digits
    save(tmp_path / "m.npz", [], meta={"n": at_limit})
    assert load(tmp_path / "m.npz").meta == {"n": at_limit}
    with pytest.raises(ValueRangeError, match=re.escape(f"save: meta['n'] is an int of more digits than Python writes "
                                                        f"as text (sys.get_int_max_str_digits(): {limit})")):
        save(tmp_path / "big.npz", [], meta={"n": beyond})
    assert os.listdir(tmp_path) == ["m.npz"]


def test_meta_values_json_cannot_round_trip_are_refused_naming_key_and_type(tmp_path: Path) -> None:
    refused: list[tuple[object, str]] = [
        (np.complex128(1 + 2j), "a complex128"), (np.datetime64("2020-01-01"), "a datetime64"),
        (np.array([1.0, 2.0]), "an array of dtype float64 and shape (2,)"),
        (np.array(1j), "an array of dtype complex128 and shape ()"),
        (np.array(None, dtype=object), "an array of dtype object and shape ()"), (None, "a NoneType"),
        ([1, 2], "a list"), ({"a": 1}, "a dict")]
    for value, kind in refused:
        with pytest.raises(lb.ArgumentError, match=re.escape(f"save: meta['bad'] is {kind}")):
            save(tmp_path / "m.npz", [], meta={"ok": np.float32(0.5), "bad": value})  # type: ignore[dict-item]
    with pytest.raises(lb.ArgumentError, match=re.escape("got the key 1 (an int)")):
        save(tmp_path / "m.npz", [], meta={1: 2})  # type: ignore[dict-item]
    assert not list(tmp_path.iterdir())


def test_loaded_batchnorm_settings_survive(tmp_path: Path) -> None:
    bn = Batchnorm1d(lb.vector([1.0, 2.0]), lb.vector([0.0, 3.5]), lb.vector([-1.0, 1.0]), lb.vector([0.5, 0.0]),
                     eps=1e-3, momentum=0.01, unbiased=False)
    save(tmp_path / "b.npz", [bn])
    got = load(tmp_path / "b.npz").layers[0]
    assert isinstance(got, Batchnorm1d)
    assert (got.eps, got.momentum, got.unbiased) == (1e-3, 0.01, False)


def test_every_batch_norm_and_linear_flag_round_trips_and_is_written_as_documented(tmp_path: Path) -> None:
    """Each setting of its own, on layers whose every other setting is the default: a frozen
    layer that does not train, a cumulative average with its count and ghost batches, a Linear
    that does not train, and renormalisation bounds."""
    v = lb.vector([1.0, 2.0], np.float64)
    frozen = Batchnorm1d(v, v, v, v, frozen=True, trainable=False)
    ghost = Batchnorm1d(v, v, v, v, momentum=None, tracked=7, ghost_batch=4)
    fixed = Linear(lb.matrix(np.ones((2, 2)), np.float64), v, trainable=False)
    renorm = Batchnorm1d(v, v, v, v, renorm=lb.Renorm(3.0, None))
    save(tmp_path / "f.npz", [frozen, ghost, fixed, renorm])
    got = load(tmp_path / "f.npz").layers
    assert isinstance(got[0], Batchnorm1d) and isinstance(got[1], Batchnorm1d) and isinstance(got[2], Linear)
    assert (got[0].frozen, got[0].trainable, got[0].ghost_batch, got[0].renorm) == (True, False, None, None)
    assert (got[1].frozen, got[1].trainable, got[1].momentum, got[1].tracked) == (False, True, None, 7)
    assert (got[1].ghost_batch, got[1].renorm) == (4, None)
    assert got[2].trainable is False
    assert isinstance(got[3], Batchnorm1d) and (got[3].renorm, got[3].ghost_batch) == (lb.Renorm(3.0, None), None)
    with np.load(tmp_path / "f.npz") as z:
        layers = json.loads(z["header.json"].tobytes())["layers"]
    assert (layers[0]["frozen"], layers[0]["trainable"]) == (True, False)
    assert "ghost_batch" not in layers[0] and "renorm" not in layers[0]
    assert (layers[1]["momentum"], layers[1]["tracked"], layers[1]["ghost_batch"]) == (None, 7, 4)
    assert "renorm" not in layers[1] and "frozen" not in layers[1]
    assert layers[2]["trainable"] is False
    assert layers[3]["renorm"] == {"rmax": 3.0, "dmax": None} and "ghost_batch" not in layers[3]


def test_meta_that_save_would_not_write_is_refused_by_load(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    bad: list[object] = [[1, 2], "epoch=3", {"epoch": [1, 2]}, {"note": None}, {"x": {"y": 1}}]
    for i, meta in enumerate(bad):
        with pytest.raises(PersistenceError, match="header field 'meta' is not an object of str/int/float/bool values"):
            load(_write(tmp_path / f"m{i}.npz", d["arrays"], {**d["header"], "meta": meta}))
    good: list[dict[str, object] | None] = [None, {}, {"epoch": 3, "lr": 0.5, "note": "x", "done": False}]
    for i, ok in enumerate(good):  # what save writes
        got = load(_write(tmp_path / f"ok{i}.npz", d["arrays"], {**d["header"], "meta": ok})).meta
        assert got == (ok or {})


def test_a_saved_file_gets_the_mode_a_plain_write_gets(tmp_path: Path) -> None:
    """The temporary file behind the rename is created private (0600); the file saved is given
    the mode open() would give a new file under the process's umask."""
    old = os.umask(0o027)
    try:
        save(tmp_path / "n.npz", mlp([3, 2], batchnorm=False, seed=1))
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    mode = (tmp_path / "n.npz").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o640


def test_a_write_that_fails_removes_its_temporary_file_and_keeps_the_old_one(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "net.npz"
    old = mlp([4, 3, 2], batchnorm=True, seed=1)
    save(path, old)
    before = path.read_bytes()

    def failing(f: Any, **arrays: Any) -> None:
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing)
    with pytest.raises(OSError, match="disk full"):
        save(path, mlp([4, 3, 2], batchnorm=True, seed=2))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["net.npz"] and path.read_bytes() == before
    assert_same_network(load(path).layers, old)


def test_the_cache_directory_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lazybn._files import cache_dir

    monkeypatch.setenv("LAZYBN_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("LAZYBN_CACHE_DIR", "")  # empty: not set
    assert cache_dir() == tmp_path / "xdg" / "lazybn"
    monkeypatch.delenv("LAZYBN_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "lazybn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "lazybn"


def test_a_batch_norm_header_without_momentum_is_refused_and_null_is_a_cumulative_average(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)
    header = json.loads(json.dumps(d["header"]))
    del header["layers"][1]["momentum"]  # save always writes it: absent is not "null"
    with pytest.raises(PersistenceError, match="layer 1: header field 'momentum' is missing or invalid"):
        load(_write(tmp_path / "a.npz", d["arrays"], header))
    header["layers"][1]["momentum"] = None
    bn = load(_write(tmp_path / "n.npz", d["arrays"], header)).layers[1]
    assert isinstance(bn, Batchnorm1d) and bn.momentum is None


def test_optimizer_slots_that_are_not_one_list_per_layer_are_persistence_errors(tmp_path: Path) -> None:
    _, d = _saved(tmp_path)  # 4 layers: LinearNoBias, Batchnorm1d, Activation, LinearNoBias
    slots = d["header"]["optimizer"]["slots"]
    for i, (changed, message) in enumerate((
            (slots[:3], "the optimizer state has 3 entries for 4 layers, each a list of shapes: ['list', 'list', 'list']"),
            ([*slots, []], "the optimizer state has 5 entries for 4 layers"),
            ([*slots[:2], 5, slots[3]], "4 entries for 4 layers, each a list of shapes: ['list', 'list', 'int', 'list']"),
            ([slots[0], None, *slots[2:]], "['list', 'NoneType', 'list', 'list']"))):
        header = json.loads(json.dumps(d["header"]))
        header["optimizer"]["slots"] = changed
        with pytest.raises(PersistenceError, match=re.escape(message)):
            load(_write(tmp_path / f"s{i}.npz", d["arrays"], header))
