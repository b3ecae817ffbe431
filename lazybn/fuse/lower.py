"""Lowering: a delayed DAG becomes one readable numba kernel (source text, no numba call).

1. :func:`lazybn.fuse.canon.canonicalize` numbers the DAG's distinct subexpressions; the
   structure (with the dtype and Seq/Par) is the kernel's cache key.
2. ``generate`` applies the identities of sums (:mod:`lazybn.fuse.algebra`), then schedules the
   canonical nodes into stages separated by reductions: pass k is one loop nest over a matrix
   domain that evaluates every reduction of depth k together and writes the matrix outputs
   whose inputs are ready; between passes, a short loop over each vector length materialises
   the vector arithmetic that later passes broadcast. A pass that gathers column statistics
   (for a Q node) walks its rows in cache-sized blocks (see ``stats_blocks``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .algebra import CNode, distribute_sums, levels
from .cache import CODEGEN_VERSION, Kernel
from .canon import Canon
from .emit import Emitter, Sum, row_loop
from .scalar import tanh_helper

BLOCK_BYTES = 1 << 18  # rows per statistics block: about this many bytes of the matrix (half an L2)


def kernel_key(nodes: Sequence[CNode], roots: Sequence[int], dtype: str, par: bool) -> str:
    text = repr((CODEGEN_VERSION, BLOCK_BYTES, tuple(nodes), tuple(roots), dtype, par))
    return hashlib.sha256(text.encode()).hexdigest()


class _Gen:
    def __init__(self, nodes: Sequence[CNode], roots: Sequence[int], par: bool, itemsize: int) -> None:
        self.nodes, self.roots, self.par, self.itemsize = nodes, roots, par, itemsize
        self.one_look = itemsize == 4  # float32 block statistics in one look (see stats_setup)
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
        self.wides: dict[int, bool] = {}

    def wide(self, cid: int) -> bool:
        """Whether a node's value is float64: a sum (a Q is one), or a sum and constants combined (under a round)."""
        if cid not in self.wides:
            kind, arg, kids, _ = self.nodes[cid]
            self.wides[cid] = kind == "Q" or kind == "R" and arg in ("sum_rows", "sum_cols") or (
                kind == "Z" or (kind, arg) == ("M", "negate")) and any(self.wide(k) for k in kids)
        return self.wides[cid]

    def emit(self, lines: list[str], indent: int) -> None:
        self.body.extend("    " * indent + ln for ln in lines)

    def vector_loops(self, level: int) -> None:
        groups: dict[tuple[int, ...], list[int]] = {}
        for cid, name in self.vname.items():
            kind, _, _, dims = self.nodes[cid]
            if kind != "R" and self.level[cid] == level:
                groups.setdefault(dims, []).append(cid)
        for dims, cids in sorted(groups.items()):
            e = Emitter(self, "j", level)
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
            if (kind == "R" and self.level[cid] == level) or (kind == "Q" and self.level[kids[0]] + 1 == level):
                groups.setdefault(self.nodes[kids[0]][3], []).append(cid)
            elif len(dims) == 2 and cid in self.out_name and self.level[cid] + 1 == level:
                groups.setdefault(dims, []).append(cid)
        for (r, c), cids in sorted(groups.items()):
            self.passes += 1
            e = Emitter(self, "j", level)
            # Working arrays are allocated per row chunk (once with Seq), inside the chunk's loop:
            # LLVM knows a fresh allocation aliases nothing, so the accumulating loops lose the
            # overlap checks and scalar fallbacks they get over a shared (chunk, column) array
            # (Par kernels up to 28% faster). A Par chunk publishes its partial results at its end
            # (``publish``) into the arrays shared by the chunks.
            chunk: list[str] = []
            pre, inner, post, publish, fin = [], [], [], [], []
            sums: list[Sum] = []  # the pass's column sums
            block_sums: list[tuple[int, int]] = []  # (sum_rows node, Q node whose e it sums)
            stats = [cid for cid in cids if self.nodes[cid][0] == "Q"]  # column statistics, block by block
            of_block = {self.nodes[q][2][0]: q for q in stats}  # a sum of a Q's e: from the block sums
            for cid in sorted(cids):
                kind, arg, kids, _ = self.nodes[cid]
                if kind == "Q" and self.one_look:
                    sums.append((kids[0], f"d{cid}{{s}} = np.float64({{v}}) - sh{cid}[j]",
                                 [(f"bm{cid}[j]", f"d{cid}{{s}}"), (f"bq{cid}[j]", f"d{cid}{{s}} * d{cid}{{s}}")]))
                    continue
                if kind == "Q":
                    sums.append((kids[0], "", [(f"bm{cid}[j]", f"(np.float64({{v}}) - sh{cid}[j])")]))
                    continue
                if kind != "R":
                    inner.append(f"{self.out_name[cid]}[i, j] = {e.value(cid)}")
                    continue
                v, dst = e.value(kids[0]), self.vname[cid]
                q = of_block.get(kids[0])  # the sum of a Q's e comes from its (shifted) block sums
                shift = "" if q is None else f" + np.float64(n{r}) * sh{q}[j]"
                if arg == "sum_rows":
                    chunk.append(f"a{cid} = np.zeros(n{c}, np.float64)")
                    if self.par:  # one partial sum per chunk, added in chunk order
                        self.emit([f"acc{cid} = np.empty((nch, n{c}), np.float64)"], 1)
                        publish += [f"for j in range(n{c}):", f"    acc{cid}[t, j] = a{cid}[j]"]
                        # a plain loop, never np.sum: in a parallel=True kernel numba turns np.sum into
                        # a parallel reduction, i.e. one thread-pool launch per column
                        fin += [f"for j in range(n{c}):", "    tot = np.float64(0.0)", "    for k in range(nch):",
                                f"        tot += acc{cid}[k, j]", f"    {dst}[j] = tot{shift}"]
                    else:  # sums stay float64: the algebra's round node rounds what combines them
                        fin += [f"for j in range(n{c}):", f"    {dst}[j] = a{cid}[j]{shift}"]
                    if q is not None:  # added once per block, not per row
                        block_sums.append((cid, q))
                    else:
                        sums.append((kids[0], "", [(f"a{cid}[j]", "np.float64({v})")]))
                elif arg == "sum_cols":  # a row buffer, summed by rowsum (a running scalar sum cannot vectorise)
                    self.rowsum = True
                    chunk.append(f"rb{cid} = np.empty(n{c}, np.float64)")
                    inner.append(f"rb{cid}[j] = np.float64({v})")
                    post.append(f"{dst}[i] = rowsum(rb{cid}, n{c})")
                elif arg in ("max_cols", "min_cols"):  # a running extreme of the row
                    start, cmp = ("-np.inf", ">") if arg == "max_cols" else ("np.inf", "<")
                    pre.append(f"s{cid} = dt({start})")
                    inner.append(f"s{cid} = {v} if ({v} {cmp} s{cid} or {v} != {v}) else s{cid}")  # NaN propagates
                    post.append(f"{dst}[i] = s{cid}")
                else:  # max_rows, min_rows: a running extreme per column (per chunk, merged in order if Par)
                    start, cmp = ("-np.inf", ">") if arg == "max_rows" else ("np.inf", "<")
                    chunk.append(f"a{cid} = np.full(n{c}, {start}, dt)")
                    inner.append(f"a{cid}[j] = {v} if ({v} {cmp} a{cid}[j] or {v} != {v}) else a{cid}[j]")
                    if self.par:
                        self.emit([f"acc{cid} = np.empty((nch, n{c}), dt)"], 1)
                        publish += [f"for j in range(n{c}):", f"    acc{cid}[t, j] = a{cid}[j]"]
                        fin += [f"for j in range(n{c}):", f"    m{cid} = dt({start})", "    for k in range(nch):",
                                f"        w{cid} = acc{cid}[k, j]",
                                f"        m{cid} = w{cid} if (w{cid} {cmp} m{cid} or w{cid} != w{cid}) else m{cid}",
                                f"    {dst}[j] = m{cid}"]
                    else:
                        fin += [f"for j in range(n{c}):", f"    {dst}[j] = a{cid}[j]"]
            # A serial pass of column sums alone takes its rows in pairs (both rows' terms added
            # before they are accumulated: half the accumulator loads and stores; 5-10% faster
            # serial passes). Par kernels stream from memory, where pairs were up to 8% slower.
            alone = all(self.nodes[k][0] == "Q" or self.nodes[k][:2] == ("R", "sum_rows") for k in cids)
            pair = self.sum_loops(sums, c, level)[1] if alone and sums and not self.par else None
            inner += self.accumulate(sums, [e])
            rows = pre + ["for j in range(n%d):" % c] + ["    " + ln for ln in e.lines + inner] + post
            if stats:
                chunk += self.stats_setup(stats, r, c, level)
                publish += self.stats_publish(stats, c)
                rows = self.stats_blocks(stats, block_sums, r, c, level, rows, pair)
            else:
                rows = row_loop("lo" if self.par else "", "hi" if self.par else f"n{r}", rows, pair)
            if self.par:
                self.emit(["for t in prange(nch):",
                           "    lo = np.uint64(t) * n%d // unch" % r,
                           "    hi = np.uint64(t + 1) * n%d // unch" % r], 1)
                self.emit(chunk + rows + publish, 2)
            else:
                self.emit(chunk + rows, 1)
            self.emit(fin + self.stats_merge(stats, c), 1)

    def accumulate(self, sums: list[Sum], rows: list[Emitter]) -> list[str]:
        """The lines adding each sum's terms of one row, or of a pair of rows added first."""
        lets, adds = [], []
        for cid, let, terms in sums:
            vs = [(e.value(cid), e.sfx) for e in rows]
            lets += [let.format(v=v, s=sfx) for v, sfx in vs if let]
            adds += [f"{acc} += " + " + ".join(t.format(v=v, s=sfx) for v, sfx in vs) for acc, t in terms]
        return lets + adds

    def sum_loops(self, sums: list[Sum], c: int, level: int) -> tuple[list[str], list[str]]:
        """The column loop of a pass of sums alone: for row i, and for the rows i and i + 1."""
        loops = []
        for rows in ((("i", ""),), (("i", ""), ("i + np.uint64(1)", "b"))):
            es = [Emitter(self, "j", level, row, sfx) for row, sfx in rows]
            adds = self.accumulate(sums, es)
            loops.append([f"for j in range(n{c}):"] + ["    " + ln for e in es for ln in e.lines + (adds if e is es[-1] else [])])
        return loops[0], loops[1]

    # Column statistics for Q nodes (Chan, Golub & LeVeque's pairwise update): the rows are
    # taken in blocks small enough to stay in cache; each block's mean and sum of squared
    # deviations are merged into the running (mean, M2) in float64. The data are read from
    # memory once. Means are kept relative to a shift sh, the mean of the first k = 8 rows, so
    # that the difference of two means, which the merge squares, carries no rounding error from a
    # large common offset (0 where that mean is not finite: an infinite shift would make the
    # column's sum NaN, not its infinity). float64 kernels take exact two-pass values over the cached block.
    # float32 kernels take one look: shifted sums d = e - sh and d*d in float64, M2 = sum(d*d) -
    # fb * mean(d)^2. Its rounding error is about eps64 * sum((e - sh)^2) <= eps64 * M2 * (1 + n/k)
    # (Cauchy-Schwarz: (sh - mean)^2 <= n/k * var), far below float32's eps for any batch; the
    # clamp at 0 keeps a constant block's M2 from rounding below zero.
    def stats_setup(self, stats: list[int], r: int, c: int, level: int) -> list[str]:
        """Compute the shifts (before the pass); returns the lines allocating a chunk's statistics."""
        self.emit([f"bsz{c} = max(np.uint64(8), min(np.uint64(512), np.uint64({BLOCK_BYTES}) // "
                   f"(n{c} * np.uint64({self.itemsize}) + np.uint64(1))))"], 1)
        e = Emitter(self, "j", level)
        first, chunk = [], []
        block = ("bm", "bq") if self.one_look else ("bm", "bq", "bc")  # a block's mean, M2 (and centre)
        for q in stats:
            self.emit([f"sh{q} = np.zeros(n{c}, np.float64)"], 1)
            if self.par:
                self.emit([f"{n}{q} = np.empty((nch, n{c}), np.float64)" for n in ("PM", "PQ")]
                          + [f"pn{q} = np.empty(nch, np.float64)"], 1)
            first.append(f"sh{q}[j] += np.float64({e.value(self.nodes[q][2][0])})")
            chunk += ([f"{n}{q} = np.zeros(n{c}, np.float64)" for n in ("pm", "pq")]
                      + [f"{n}{q} = np.empty(n{c}, np.float64)" for n in block])
        self.emit([f"kb = min(np.uint64(8), n{r})", "for i in range(kb):", f"    for j in range(n{c}):"]
                  + ["        " + ln for ln in e.lines + first]
                  + ["fk = np.float64(max(kb, np.uint64(1)))", f"for j in range(n{c}):"]
                  + [f"    sh{q}[j] = sh{q}[j] / fk if abs(sh{q}[j]) < np.inf else 0.0" for q in stats], 1)
        return chunk

    def stats_blocks(self, stats: list[int], block_sums: list[tuple[int, int]], r: int, c: int, level: int,
                     rows: list[str], pair: list[str] | None) -> list[str]:
        """The pass's row loop, blocked, with each block's statistics merged after it."""
        lo, hi = ("lo", "hi") if self.par else ("np.uint64(0)", f"n{r}")
        summed = ("bm", "bq") if self.one_look else ("bm",)  # the sums of the block's first look
        out = [f"for b in range(({hi} - {lo} + bsz{c} - np.uint64(1)) // bsz{c}):",
               f"    i0 = {lo} + b * bsz{c}",
               f"    i1 = min(i0 + bsz{c}, {hi})",
               f"    fa = np.float64(i0 - {lo})",
               "    fb = np.float64(i1 - i0)",
               f"    for j in range(n{c}):"] + [f"        {n}{q}[j] = 0.0" for q in stats for n in summed]
        out += ["    " + ln for ln in row_loop("i0", "i1", rows, pair)]
        out += [f"    for j in range(n{c}):"] + [f"        a{r_}[j] += bm{q}[j]" for r_, q in block_sums]
        if self.one_look:
            for q in stats:
                out += [f"        bm{q}[j] /= fb", f"        m2 = bq{q}[j] - fb * bm{q}[j] * bm{q}[j]",
                        f"        bq{q}[j] = 0.0 if m2 < 0.0 else m2"]  # NaN stays NaN
        else:
            second: list[Sum] = []  # the second look at the cached block recomputes each e
            for q in stats:
                second.append((self.nodes[q][2][0], f"d{q}{{s}} = np.float64({{v}}) - bc{q}[j]",
                               [(f"bq{q}[j]", f"d{q}{{s}} * d{q}{{s}}")]))
                out += [f"        bm{q}[j] /= fb", f"        bc{q}[j] = sh{q}[j] + bm{q}[j]", f"        bq{q}[j] = 0.0"]
            single, pair2 = self.sum_loops(second, c, level)
            out += ["    " + ln for ln in row_loop("i0", "i1", single, None if self.par else pair2)]
        out += [f"    for j in range(n{c}):"]
        for q in stats:
            out += [f"        dm = bm{q}[j] - pm{q}[j]",
                    f"        pm{q}[j] += dm * (fb / (fa + fb))",
                    f"        pq{q}[j] += bq{q}[j] + dm * dm * (fa * fb / (fa + fb))"]
        return out

    def stats_publish(self, stats: list[int], c: int) -> list[str]:
        """Par only: a chunk's row count, mean and M2, stored for the merge."""
        if not self.par:
            return []
        out = []
        for q in stats:
            out += [f"pn{q}[t] = np.float64(hi - lo)", f"for j in range(n{c}):",
                    f"    PM{q}[t, j] = pm{q}[j]", f"    PQ{q}[t, j] = pq{q}[j]"]
        return out

    def stats_merge(self, stats: list[int], c: int) -> list[str]:
        """The final statistics cm, cq: the chunks' merged in a fixed order (Par), else the running ones."""
        if not self.par:
            return [ln for q in stats for ln in (f"cm{q} = pm{q}", f"cq{q} = pq{q}")]
        out = []
        for q in stats:
            out += [f"cm{q} = np.empty(n{c}, np.float64)", f"cq{q} = np.empty(n{c}, np.float64)",
                    f"for j in range(n{c}):", "    na = np.float64(0.0)", "    m = np.float64(0.0)",
                    "    s = np.float64(0.0)", "    for k in range(nch):", f"        nb = pn{q}[k]",
                    "        if nb > 0.0:", f"            dm = PM{q}[k, j] - m",
                    "            m += dm * (nb / (na + nb))",
                    f"            s += PQ{q}[k, j] + dm * dm * (na * nb / (na + nb))", "            na += nb",
                    f"    cm{q}[j] = m", f"    cq{q}[j] = s"]
        return out

    def temporaries(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, self.nodes[cid][3]) for cid, name in self.vname.items() if not name.startswith("O")]


def generate(canon: Canon, dtype: np.dtype[Any], par: bool) -> Kernel:
    """Render the kernel for a canonicalised expression; pure (no numba involved)."""
    nodes, roots = distribute_sums(canon.nodes, canon.roots)
    g = _Gen(nodes, roots, par, dtype.itemsize)
    top, temps = max(g.level, default=0), g.temporaries()
    wide = {name for cid, name in g.vname.items() if nodes[cid][:2] in (("R", "sum_rows"), ("R", "sum_cols"))}
    for name, dims in temps:  # sums in float64 (see distribute_sums), everything else in dt
        g.emit([f"{name} = np.empty(n{dims[0]}, {'np.float64' if name in wide else 'dt'})"], 1)
    for level in range(top + 2):
        if level > 0:
            g.matrix_passes(level)
        g.vector_loops(level)
    n_out = len(canon.roots)
    args = ([f"L{k}" for k in range(len(canon.leaves))] + [f"C{k}" for k in range(len(canon.consts))]
            + [f"n{k}" for k in range(len(canon.sizes))] + [f"O{k}" for k in range(n_out)])
    if par:
        args.append("unch")
    key = kernel_key(canon.nodes, canon.roots, dtype.name, par)
    prelude = [f"dt = np.{dtype.name}", "zero = dt(0.0)", "one = dt(1.0)"]
    if g.rowsum:  # reassociation is confined to this helper: LLVM may vectorise its sum, nothing else
        prelude += ["", "", "@njit(cache=True, fastmath={'reassoc'}, error_model='numpy', nogil=True)",
                    "def rowsum(buf, n):", "    s = np.float64(0.0)", "    for j in range(n):",
                    "        s += buf[j]", "    return s"]
    if any("tanh_(" in ln for ln in g.body):
        prelude += ["", "", *tanh_helper(dtype.name)]
    if any("< tiny" in ln for ln in g.body):
        prelude.insert(3, f"tiny = dt({float(np.finfo(dtype).tiny)!r})  # the smallest normal number")
    src = [
        "# lazybn generated kernel; do not edit (regenerated when it differs).",
        f"# dtype {dtype.name}, {'Par' if par else 'Seq'}, {g.passes} pass(es); key {key}",
        "import numpy as np",
        *(["import math"] if any("math.erf(" in ln for ln in g.body) else []),
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
    src += [f"    c{k} = dt(C{k})" for k in range(len(canon.consts))]  # constants come in float64
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
