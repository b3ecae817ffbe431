"""numpy numbers are scalars like Python's: on either side of an operator, in scale/add_c, and as
save's metadata (loaded as Python's)."""

import tempfile
from pathlib import Path
from typing import assert_type

import numpy as np

import lazybn as lb

x = lb.matrix(np.arange(6.0).reshape(2, 3))
right = x * np.float32(2.0)
assert_type(right, lb.Delayed[lb.Ix2])
left = np.float64(2.0) * x
assert_type(left, lb.Delayed[lb.Ix2])
scaled = lb.scale(np.float32(2.0), x)
shifted = lb.add_c(x, np.int64(1))
halved = x / np.int32(2)
r, sc, sh, h = lb.compute_all(right, scaled, shifted, halved)
assert np.array_equal(r.array, 2.0 * x.array) and np.array_equal(sc.array, 2.0 * x.array)
assert np.array_equal(sh.array, x.array + 1.0) and np.array_equal(h.array, x.array / 2.0)
assert np.array_equal(lb.compute(left).array, 2.0 * x.array)
narrow = np.float32(2.0) * lb.matrix(np.arange(6.0).reshape(2, 3), np.float32)
assert_type(narrow, lb.Delayed[lb.Ix2])
ints = np.int64(1) + x - np.int32(1)
offset = np.float32(1.0) - x
ratio = np.float32(6.0) / (x + 1.0)
i, o, q = lb.compute_all(ints, offset, ratio)
assert np.array_equal(lb.compute(narrow).array, np.float32(2.0) * x.array.astype(np.float32))
assert np.array_equal(i.array, x.array) and np.array_equal(o.array, 1.0 - x.array)
assert np.array_equal(q.array, 6.0 / (x.array + 1.0))
with tempfile.TemporaryDirectory() as d:
    lb.save(Path(d) / "net.npz", [], meta={"acc": np.float32(0.5), "epoch": np.int64(3), "done": np.bool_(True),
                                         "loss": np.float64(0.25)})
    assert lb.load(Path(d) / "net.npz").meta == {"acc": 0.5, "epoch": 3, "done": True, "loss": 0.25}
