"""The loop bodies of a generated kernel: a node's expression written as lines of code (once per
node, :class:`Emitter`), the loops over rows around them (:func:`row_loop`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .scalar import BINFN, FN, HELPER, POW

if TYPE_CHECKING:
    from .lower import _Gen as Gen


# A column sum of a pass: (node summed, a line naming its term (or ""), [(accumulator, term)]),
# the templates in {v} (the node's value in a row) and {s} (the row's name suffix).
Sum = tuple[int, str, list[tuple[str, str]]]


def row_loop(lo: str, hi: str, single: list[str], pair: list[str] | None) -> list[str]:
    """The rows lo .. hi - 1 (from 0 if ``lo`` is empty) around a column loop, or two at a time
    around ``pair`` with ``single`` for an odd last row."""
    if pair is None:
        return [f"for i in range({f'{lo}, ' if lo else ''}{hi}):"] + ["    " + ln for ln in single]
    return ([f"i = {lo or 'np.uint64(0)'}", f"while i + np.uint64(1) < {hi}:"] + ["    " + ln for ln in pair]
            + ["    i += np.uint64(2)", f"if i < {hi}:"] + ["    " + ln for ln in single])


class Emitter:
    """Writes the expression of a node into a loop body, each subexpression once (CSE)."""

    def __init__(self, g: Gen, index: str, level: int, row: str = "i", sfx: str = "") -> None:
        self.g, self.index, self.level, self.row, self.sfx = g, index, level, row, sfx  # row i or i + 1
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
            expr = f"L{arg}[{self.row}, j]" if len(dims) == 2 else f"L{arg}[{self.index}]"
        elif kind == "B":
            expr = self.vec(kids[0], "j")
        elif kind == "K":
            expr = self.vec(kids[0], self.row)
        elif kind == "R" or (cid in g.vname and g.level[cid] < self.level):
            expr = self.vec(cid, self.index)
        elif kind == "Q":  # sum_rows((e - br(w))^2) = M2 + n (mean - w)^2, a float64 sum (rounded by its round)
            w, rows = self.value(kids[1]), g.nodes[kids[0]][3][0]
            expr = (f"cq{cid}[{self.index}] + np.float64(n{rows}) * "
                    f"(sh{cid}[{self.index}] - np.float64({w}) + cm{cid}[{self.index}]) ** 2")
        elif kind == "M":
            a = self.value(kids[0])
            s = ""
            if arg in HELPER:
                s = f"u{cid}{self.sfx}"
                self.lines.append(f"{s} = {FN[HELPER[arg]].format(a=a)}")
            expr = FN[arg].format(a=a, s=s)
        else:  # "Z"; a constant meets a float64 combination of sums as its float64 value C
            wide = g.wide(cid)
            a, b = (f"C{g.nodes[k][1]}" if wide and g.nodes[k][0] == "C" else self.value(k) for k in kids)
            expr = f"{BINFN[arg]}({a}, {b})" if arg in BINFN else f"{a} {arg} {b}"
            if arg == "**" and g.nodes[kids[1]][0] == "C":  # a dynamic exponent: numpy's shortcuts, as
                expr = POW.format(a=a, b=b)  # a number's ** makes them (Fn.square, sqrt, recip)
        name = f"t{cid}{self.sfx}"
        self.lines.append(f"{name} = {expr}")
        self.done[cid] = name
        return name
