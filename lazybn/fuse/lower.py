"""Lowering: a delayed DAG becomes one readable numba kernel (source text, no numba call).

1. ``canonicalize`` walks the DAG once and numbers every distinct subexpression (structural
   CSE): leaves by first appearance of their array, scalars by position, dimension sizes by
   value. The resulting structure (with the dtype and Seq/Par) is the kernel's cache key.
2. ``generate`` applies the linearity of sums (:mod:`lazybn.fuse.algebra`), then schedules the
   canonical nodes into stages separated by reductions: pass k is one loop nest over a matrix
   domain that evaluates every reduction of depth k together and writes the matrix outputs
   whose inputs are ready; between passes, a short loop over each vector length materialises
   the vector arithmetic that later passes broadcast.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

import numpy as np

from .algebra import CNode, distribute_sums, levels
from .graph import Br, ColsLike, Const, Leaf, Map, Node, Reduce, Scalar, Zip

CODEGEN_VERSION = 5



@final
@dataclass(slots=True)
class Canon:
    """One ``compute`` call, canonicalised: the structure plus the run-time arguments."""

    nodes: list[CNode]
    roots: list[int]
    leaves: list[Any]
    consts: list[float | Scalar]
    sizes: list[int]


def canonicalize(roots: Sequence[Node]) -> Canon:
    """Number the distinct subexpressions of ``roots`` in post-order (children first).

    This runs on every ``compute``, so it is written for speed: one recursive visit per node,
    type dispatch by identity, no allocation beyond the canonical tuples.
    """
    memo: dict[int, int] = {}
    index: dict[CNode, int] = {}
    leaf_slot: dict[int, int] = {}
    size_slot: dict[int, int] = {}
    c = Canon([], [], [], [], [])
    nodes, leaves, consts, sizes = c.nodes, c.leaves, c.consts, c.sizes

    dims_of: dict[tuple[int, ...], tuple[int, ...]] = {}

    def dims(shape: tuple[int, ...]) -> tuple[int, ...]:
        got = dims_of.get(shape)
        if got is None:
            out = []
            for v in shape:
                slot = size_slot.get(v)
                if slot is None:
                    slot = size_slot[v] = len(sizes)
                    sizes.append(v)
                out.append(slot)
            got = dims_of[shape] = tuple(out)
        return got

    def visit(node: Node) -> int:
        cid = memo.get(id(node))
        if cid is not None:
            return cid
        t = type(node)
        cn: CNode
        if t is Leaf:
            arr = node.array  # type: ignore[union-attr]
            slot = leaf_slot.get(id(arr))
            if slot is None:
                slot = leaf_slot[id(arr)] = len(leaves)
                leaves.append(arr)
            cn = ("L", str(slot), (), dims(node.shape))
        elif t is Const:
            cn = ("C", str(len(consts)), (), ())
            consts.append(node.value)  # type: ignore[union-attr]
        elif t is Zip:
            z: Zip = node  # type: ignore[assignment]
            cn = ("Z", z.op._value_, (visit(z.a), visit(z.b)), dims(z.shape))
        else:
            u: Map | Br | ColsLike | Reduce = node  # type: ignore[assignment]
            kid = (visit(u.a),)
            if t is Map:
                cn = ("M", u.fn._value_, kid, dims(u.shape))  # type: ignore[union-attr]
            elif t is Reduce:
                cn = ("R", u.op._value_, kid, dims(u.shape))  # type: ignore[union-attr]
            else:
                cn = ("B" if t is Br else "K", "", kid, dims(u.shape))
        cid = index.get(cn)
        if cid is None:
            cid = index[cn] = len(nodes)
            nodes.append(cn)
        memo[id(node)] = cid
        return cid

    c.roots = [visit(r) for r in roots]
    return c


@final
@dataclass(frozen=True, slots=True)
class Kernel:
    """A generated kernel: exactly the source written to the kernel cache, and its calling shape."""

    key: str
    source: str
    n_leaves: int
    n_consts: int
    n_sizes: int
    outputs: tuple[tuple[int, ...], ...]  # size slots of each output's shape
    temporaries: tuple[tuple[int, ...], ...]  # size slots of each temporary array
    passes: int  # loop nests over a matrix domain
    par: bool


def kernel_key(nodes: Sequence[CNode], roots: Sequence[int], dtype: str, par: bool) -> str:
    text = repr((CODEGEN_VERSION, tuple(nodes), tuple(roots), dtype, par))
    return hashlib.sha256(text.encode()).hexdigest()


_FN = {
    "exp": "np.exp({a})",
    "log": "np.log({a})",
    "sqrt": "np.sqrt({a})",
    "recip": "one / {a}",
    "negate": "-{a}",
    "square": "{a} * {a}",
    "abs": "abs({a})",
    "relu": "np.maximum({a}, zero)",
    "drelu": "one if {a} > zero else zero",
    "sigmoid": "one / (one + np.exp(-{a}))",
    "dsigmoid": "{s} * (one - {s})",
    "tanh": "np.tanh({a})",
    "dtanh": "one - {s} * {s}",
}
_HELPER = {"dsigmoid": "sigmoid", "dtanh": "tanh"}  # derivatives reuse the function's value


class _Emitter:
    """Writes the expression of a node into a loop body, each subexpression once (CSE)."""

    def __init__(self, g: _Gen, index: str, level: int) -> None:
        self.g, self.index, self.level = g, index, level
        self.lines: list[str] = []
        self.done: dict[int, str] = {}

    def vec(self, cid: int, idx: str) -> str:
        name = self.g.vname.get(cid) or f"L{self.g.nodes[cid][1]}"  # a vector leaf is read in place
        return f"{name}[{idx}]"

    def value(self, cid: int) -> str:
        if cid in self.done:
            return self.done[cid]
        kind, arg, kids, dims = self.g.nodes[cid]
        g = self.g
        if kind == "C":
            return f"c{arg}"
        if kind == "L":
            expr = f"L{arg}[i, j]" if len(dims) == 2 else f"L{arg}[{self.index}]"
        elif kind == "B":
            expr = self.vec(kids[0], "j")
        elif kind == "K":
            expr = self.vec(kids[0], "i")
        elif kind == "R" or (cid in g.vname and g.level[cid] < self.level):
            expr = self.vec(cid, self.index)
        elif kind == "M":
            a = self.value(kids[0])
            s = ""
            if arg in _HELPER:
                s = f"u{cid}"
                self.lines.append(f"{s} = {_FN[_HELPER[arg]].format(a=a)}")
            expr = _FN[arg].format(a=a, s=s)
        else:  # "Z"
            expr = f"{self.value(kids[0])} {arg} {self.value(kids[1])}"
        name = f"t{cid}"
        self.lines.append(f"{name} = {expr}")
        self.done[cid] = name
        return name


class _Gen:
    def __init__(self, nodes: Sequence[CNode], roots: Sequence[int], par: bool) -> None:
        self.nodes, self.roots, self.par = nodes, roots, par
        self.level = levels(nodes)
        out_name = {cid: f"O{n}" for n, cid in reversed(list(enumerate(roots)))}
        # vectors that live in memory: reductions, broadcast vectors, vector outputs
        self.vname: dict[int, str] = {}
        for cid, (kind, _, kids, dims) in enumerate(nodes):
            if kind in "BK" and nodes[kids[0]][0] != "L":
                self.vname[kids[0]] = ""
            if kind == "R" or (len(dims) == 1 and cid in out_name):
                self.vname[cid] = ""
        for cid in self.vname:
            self.vname[cid] = out_name.get(cid, f"{'R' if nodes[cid][0] == 'R' else 'V'}{cid}")
        for cid in out_name:  # leaf vectors that are outputs are read from the leaf
            if nodes[cid][0] == "L":
                self.vname[cid] = out_name[cid]
        self.out_name = out_name
        self.body: list[str] = []
        self.passes = 0
        self.rowsum = False  # whether the kernel calls the rowsum helper

    def emit(self, lines: list[str], indent: int) -> None:
        self.body.extend("    " * indent + ln for ln in lines)

    def vector_loops(self, level: int) -> None:
        groups: dict[tuple[int, ...], list[int]] = {}
        for cid, name in self.vname.items():
            kind, _, _, dims = self.nodes[cid]
            if kind != "R" and self.level[cid] == level:
                groups.setdefault(dims, []).append(cid)
        for dims, cids in sorted(groups.items()):
            e = _Emitter(self, "j", level)
            stores = []
            for cid in sorted(cids):
                if self.nodes[cid][0] == "L":
                    stores.append(f"{self.vname[cid]}[j] = L{self.nodes[cid][1]}[j]")
                else:
                    stores.append(f"{self.vname[cid]}[j] = {e.value(cid)}")
            self.emit([f"for j in range(n{dims[0]}):"], 1)
            self.emit(e.lines + stores, 2)

    def matrix_passes(self, level: int) -> None:
        groups: dict[tuple[int, ...], list[int]] = {}
        for cid, (kind, _, kids, dims) in enumerate(self.nodes):
            if kind == "R" and self.level[cid] == level:
                groups.setdefault(self.nodes[kids[0]][3], []).append(cid)
            elif len(dims) == 2 and cid in self.out_name and self.level[cid] + 1 == level:
                groups.setdefault(dims, []).append(cid)
        for (r, c), cids in sorted(groups.items()):
            self.passes += 1
            e = _Emitter(self, "j", level)
            chunk: list[str] = []  # Par only: run once per row chunk, before its rows
            pre, inner, post, fin = [], [], [], []
            acc_ix = "t, j" if self.par else "j"
            for cid in sorted(cids):
                kind, arg, kids, _ = self.nodes[cid]
                if kind != "R":
                    inner.append(f"{self.out_name[cid]}[i, j] = {e.value(cid)}")
                    continue
                v, dst = e.value(kids[0]), self.vname[cid]
                if arg == "sum_rows" and self.par:  # one accumulator row per chunk, zeroed by its thread
                    self.emit([f"acc{cid} = np.empty((nch, n{c}), np.float64)"], 1)
                    chunk += [f"for j in range(n{c}):", f"    acc{cid}[t, j] = 0.0"]
                    inner.append(f"acc{cid}[{acc_ix}] += np.float64({v})")
                    # a plain loop, never np.sum: in a parallel=True kernel numba turns np.sum into a
                    # parallel reduction, i.e. one thread-pool launch per column
                    fin += [f"for j in range(n{c}):", "    tot = np.float64(0.0)", "    for k in range(nch):",
                            f"        tot += acc{cid}[k, j]", f"    {dst}[j] = dt(tot)"]
                elif arg == "sum_rows":
                    self.emit([f"acc{cid} = np.zeros(n{c}, np.float64)"], 1)
                    inner.append(f"acc{cid}[{acc_ix}] += np.float64({v})")
                    fin += [f"for j in range(n{c}):", f"    {dst}[j] = dt(acc{cid}[j])"]
                elif arg == "sum_cols":  # a row buffer, summed by rowsum (a running scalar sum cannot vectorise)
                    self.rowsum = True
                    self.emit([f"rb{cid} = np.empty({f'(nch, n{c})' if self.par else f'n{c}'}, np.float64)"], 1)
                    inner.append(f"rb{cid}[{acc_ix}] = np.float64({v})")
                    post.append(f"{dst}[i] = dt(rowsum(rb{cid}{'[t]' if self.par else ''}, n{c}))")
                else:  # max_cols
                    pre.append(f"s{cid} = dt(-np.inf)")
                    inner.append(f"s{cid} = {v} if ({v} > s{cid} or {v} != {v}) else s{cid}")  # NaN propagates
                    post.append(f"{dst}[i] = s{cid}")
            rows = ["for j in range(n%d):" % c] + ["    " + ln for ln in e.lines + inner]
            rows = pre + rows + post
            if self.par:
                self.emit(["for t in prange(nch):",
                           "    lo = np.uint64(t) * n%d // unch" % r,
                           "    hi = np.uint64(t + 1) * n%d // unch" % r], 1)
                self.emit(chunk + ["for i in range(lo, hi):"], 2)
                self.emit(rows, 3)
            else:
                self.emit([f"for i in range(n{r}):"], 1)
                self.emit(rows, 2)
            self.emit(fin, 1)

    def temporaries(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, self.nodes[cid][3]) for cid, name in self.vname.items() if not name.startswith("O")]


def generate(canon: Canon, dtype: np.dtype[Any], par: bool) -> Kernel:
    """Render the kernel for a canonicalised expression; pure (no numba involved)."""
    nodes, roots = distribute_sums(canon.nodes, canon.roots)
    g = _Gen(nodes, roots, par)
    top = max(g.level, default=0)
    temps = g.temporaries()
    for name, dims in temps:
        g.emit([f"{name} = np.empty(n{dims[0]}, dt)"], 1)
    for level in range(top + 2):
        if level > 0:
            g.matrix_passes(level)
        g.vector_loops(level)
    n_out = len(canon.roots)
    args = ([f"L{k}" for k in range(len(canon.leaves))] + [f"c{k}" for k in range(len(canon.consts))]
            + [f"n{k}" for k in range(len(canon.sizes))] + [f"O{k}" for k in range(n_out)])
    if par:
        args.append("unch")
    key = kernel_key(canon.nodes, canon.roots, dtype.name, par)
    prelude = [f"dt = np.{dtype.name}", "zero = dt(0.0)", "one = dt(1.0)"]
    if g.rowsum:  # reassociation is confined to this helper: LLVM may vectorise its sum, nothing else
        prelude += ["", "", "@njit(cache=True, fastmath={'reassoc'}, error_model='numpy', nogil=True)",
                    "def rowsum(buf, n):", "    s = np.float64(0.0)", "    for j in range(n):",
                    "        s += buf[j]", "    return s"]
    src = [
        "# lazybn generated kernel; do not edit (regenerated when it differs).",
        f"# dtype {dtype.name}, {'Par' if par else 'Seq'}, {g.passes} pass(es); key {key}",
        "import numpy as np",
        "from numba import njit, prange",
        "",
        *prelude,
        "",
        "",
        f"@njit(cache=True, parallel={par}, error_model='numpy', nogil=True)",
        f"def kernel({', '.join(args)}):",
    ]
    if par:
        src.append("    nch = np.int64(unch)")
    for k, r in enumerate(roots):  # an output equal to an earlier one (after the sum rewrite)
        first = roots.index(r)
        if first != k:
            g.emit([f"O{k}[{', '.join(':' * len(nodes[r][3]))}] = O{first}"], 1)
    src += g.body or ["    pass"]
    return Kernel(
        key=key,
        source="\n".join(src) + "\n",
        n_leaves=len(canon.leaves),
        n_consts=len(canon.consts),
        n_sizes=len(canon.sizes),
        outputs=tuple(nodes[r][3] for r in roots),
        temporaries=tuple(d for _, d in temps),
        passes=g.passes,
        par=par,
    )
