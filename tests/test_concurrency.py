"""Two processes filling the same kernel cache or the same data cache at once: neither crashes,
neither corrupts what the other reads. A process forked after a ``Comp.Par`` kernel ran computes
the same results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

KERNELS = """
import json, sys, numpy as np, lazybn as lb
out = []
for k in range(6):  # six different expression structures, compiled by both processes at once
    x = lb.matrix(np.arange(12.0).reshape(3, 4) + k)
    e = x
    for _ in range(k + 1):
        e = lb.amap(lb.Fn.tanh, e) * 2.0
    out.append(lb.compute(lb.sum_rows(e)).array.tolist())
print(json.dumps(out))
"""

DATA = """
import sys, numpy as np
from pathlib import Path
from lazybn.data import mnist as mn
from lazybn.data import Dataset
rng = np.random.default_rng(0)
def split(n):
    return Dataset(rng.integers(0, 256, (n, 784), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10)
train, test = split(30), split(20)
counts = [tuple(int(c) for c in np.bincount(d.labels, minlength=10)) for d in (train, test)]
spec = mn.OfficialSpec("0" * 64, 30, 20, *counts)
path = Path(sys.argv[1])
for _ in range(15):
    mn.write_cache(path, mn.Mnist(train, test, "test"), spec)
    got = mn.read_cache(path, spec)
    assert (got.train.images == train.images).all() and (got.test.labels == test.labels).all()
print("ok")
"""

FORK = """
import multiprocessing as mp, queue, sys, numpy as np, lazybn as lb
from lazybn.batchnorm import bn_forward
x = lb.matrix(np.random.default_rng(0).normal(size=(1024, 1024)), np.float32, comp=lb.Comp.Par)  # 4 MiB: Par
def step():
    y = lb.compute(lb.amap(lb.Fn.tanh, x) * 2.0)
    layer = lb.Batchnorm1d(*(lb.replicate(1024, v, np.float32, lb.Comp.Par) for v in (0.0, 1.0, 1.0, 0.0)))
    return [np.asarray(a) for a in (y, *bn_forward(x, layer))]
parent = [step(), step()]  # the second call replays the first's trace
def child(q):
    q.put([step(), step()])
ctx = mp.get_context("fork")  # Linux's default start method
q = ctx.Queue()
proc = ctx.Process(target=child, args=(q,))
proc.start()
got = None
while got is None:
    try:
        got = q.get(timeout=1)
    except queue.Empty:
        if not proc.is_alive():
            sys.exit(f"the forked child died (exit code {proc.exitcode})")
proc.join(60)
assert proc.exitcode == 0, proc.exitcode
for a, b in zip(parent[0] + parent[1], got[0] + got[1]):
    assert a.dtype == b.dtype and np.array_equal(a, b), "the child's results differ"
print("ok")
"""

# The fork scripts' kernel maker: an expression structure of its own for each k, so a kernel compiled afresh.
TANHS = """
def tanhs(k):
    e = lb.matrix(np.arange(12.0).reshape(3, 4))
    for _ in range(k):
        e = lb.amap(lb.Fn.tanh, e) * 2.0
    return lb.compute(lb.sum_rows(e)).array.tolist()
"""

FORK_WHILE_COMPILING = """
import multiprocessing as mp, queue, sys, threading, time, numpy as np, lazybn as lb
from lazybn.fuse import cache
from numba.core.compiler_lock import global_compiler_lock
""" + TANHS + """
def child(q):
    q.put(tanhs(9))
tanhs(1)  # numba and what it imports on a first call are loaded (a fork during an import can hang too)
inside, real = threading.Event(), cache._import
def slow_import(path, name):  # the thread stays inside lazybn's kernel load (its lock held) a while
    inside.set()
    time.sleep(1.0)
    return real(path, name)
if sys.argv[2] == "load":
    cache._import = slow_import
thread = threading.Thread(target=tanhs, args=(7,))
thread.start()
if sys.argv[2] == "load":
    inside.wait()
while sys.argv[2] == "compile" and global_compiler_lock._lock.acquire(blocking=False):  # until the thread
    global_compiler_lock._lock.release()  # is inside numba's compiler
    if not thread.is_alive():
        sys.exit("the thread's kernel was not compiled (is the cache empty?)")
    time.sleep(1e-4)
ctx = mp.get_context("fork")
q = ctx.Queue()
proc = ctx.Process(target=child, args=(q,))
proc.start()
try:
    got = q.get(timeout=float(sys.argv[1]))
except queue.Empty:
    proc.kill()
    sys.exit(f"the forked child hung (exit code {proc.exitcode})")
proc.join(60)
thread.join()
assert proc.exitcode == 0, proc.exitcode
x = np.arange(12.0).reshape(3, 4)
for _ in range(9):
    x = np.tanh(x) * 2.0
assert np.allclose(got, x.sum(axis=0), rtol=1e-12), (got, x.sum(axis=0))
print("ok")
"""


FORK_INTERRUPTED = """
import os, signal, sys, threading, numpy as np, lazybn as lb
from numba.core.compiler_lock import global_compiler_lock
""" + TANHS + """
tanhs(1)  # the first kernel: forks wait for compiles from now on
held, done = threading.Event(), threading.Event()
def compiling():  # stands for a long compile in another thread
    with global_compiler_lock:
        held.set()
        done.wait()
t = threading.Thread(target=compiling)
t.start()
held.wait()
def interrupted(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupted)
signal.setitimer(signal.ITIMER_REAL, 0.5)  # Ctrl-C while the fork waits for the compile
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
done.set()
t.join()
other = threading.Thread(target=tanhs, args=(5,), daemon=True)  # a kernel of another thread's
other.start()
other.join(float(sys.argv[1]))
sys.exit("the other thread hangs at its kernel" if other.is_alive() else 0)
"""


def _spawn(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full)


def test_two_processes_fill_one_kernel_cache(tmp_path: Path) -> None:
    env = {"LAZYBN_CACHE_DIR": str(tmp_path)}
    procs = [_spawn(KERNELS, env=env) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    after = _spawn(KERNELS, env={**env, "LAZYBN_NO_COMPILE": "1"})  # the cache they left is complete
    out, err = after.communicate(timeout=600)
    assert after.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == results[0]


def test_two_processes_write_and_read_one_data_cache(tmp_path: Path) -> None:
    path = tmp_path / "mnist" / "mnist-v1.npz"
    procs = [_spawn(DATA, str(path), env={"LAZYBN_CACHE_DIR": str(tmp_path)}) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_a_process_forked_after_a_parallel_kernel_computes_the_same_results(tmp_path: Path) -> None:
    p = _spawn(FORK, env={"LAZYBN_CACHE_DIR": str(tmp_path)})
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and out.strip().endswith("ok"), err


def test_a_process_forked_while_another_thread_compiles_compiles_its_own_kernels(tmp_path: Path) -> None:
    """The fork waits for the compile in flight; without that, the child inherits compile locks
    held by a thread it does not have and hangs at its first compile."""
    p = _spawn(FORK_WHILE_COMPILING, "120", "compile", env={"LAZYBN_CACHE_DIR": str(tmp_path)})
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and out.strip().endswith("ok"), err


def test_a_process_forked_while_another_thread_loads_a_kernel_compiles_its_own_kernels(tmp_path: Path) -> None:
    """The fork waits for a kernel load in flight (writing and importing its module, before numba
    compiles it); without that, the child inherits lazybn's kernel lock held by a thread it does
    not have and hangs at its first kernel."""
    p = _spawn(FORK_WHILE_COMPILING, "120", "load", env={"LAZYBN_CACHE_DIR": str(tmp_path)})
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and out.strip().endswith("ok"), err


def test_a_fork_interrupted_while_it_waits_for_a_compile_leaves_no_lock_held(tmp_path: Path) -> None:
    """A signal (Ctrl-C) while the fork waits: the fork goes on (Python ignores the exception of a
    fork hook) and the locks it had taken are released, so another thread's next kernel loads."""
    p = _spawn(FORK_INTERRUPTED, "60", env={"LAZYBN_CACHE_DIR": str(tmp_path)})
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
