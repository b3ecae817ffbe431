"""The engine's only algebra: two identities of sums, applied to canonical nodes before code
generation.

:func:`distribute_sums` uses the linearity of sums (pulling broadcast vectors and constants out
of them, splitting sums of sums where that moves a reduction to an earlier pass) and the
decomposition of a sum of squared deviations about a vector into the column's own statistics
(which moves a variance to the pass of its mean); see its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

# A canonical node: (kind, arg, kids, dims). kind is L C M Z B K R, or Q (made here); dims are
# size slots. ("Q", "", (e, w), dims) is the vector sum_rows((e - br(w))^2), computed from the
# column mean and the sum of squared deviations of e, which one pass over e yields.
CNode = tuple[str, str, tuple[int, ...], tuple[int, ...]]


def levels(nodes: Sequence[CNode]) -> list[int]:
    """The pass after which each node is known: a reduction needs one more pass than its
    operand; Q's statistics come from the pass that reads e, its value needs w too."""
    level: list[int] = []
    for kind, _, kids, _ in nodes:
        if kind == "Q":
            level.append(max(level[kids[0]] + 1, level[kids[1]]))
            continue
        lv = max((level[k] for k in kids), default=0)
        level.append(lv + 1 if kind == "R" else lv)
    return level


def distribute_sums(nodes: Sequence[CNode], roots: Sequence[int]) -> tuple[list[CNode], list[int]]:
    """Pull broadcast vectors and constants out of sums: ``sum_rows(a * br(v)) = sum_rows(a) * v``
    (also ``a * (b * br(v))``, reassociated), and split ``sum_rows(a + b) = sum_rows(a) +
    sum_rows(b)`` (likewise ``sum_cols`` with ``cols_like``).

    The sums keep float64 values (the kernel stores them unrounded) and the expression that
    combines them is rounded to the array's dtype once, as a ``round`` node: the value of the
    sum the step code asked for, computed in another order. (Rounding each part first would
    overflow where the whole does not, e.g. ``sum_rows(scale(1e-3, x))`` of float32 rows of
    1e36, and cancel: ``sum_rows(x - br(mean))`` as the difference of two rounded sums.)

    Pulling factors out lets sums that differ only by them share one accumulator (the batch-norm
    backward's five sums become three). Splitting is applied only where a sum reads a vector
    that is itself the result of a reduction, so that the sum moves to an earlier pass: the
    step-by-step backward then needs two passes over the data instead of three.

    One more identity moves a sum to an earlier pass without expanding the square (which would
    cancel catastrophically): ``sum_rows((e - br(w))^2) = M2 + n * (mean - w)^2``, where mean and
    M2 (the sum of squared deviations from the mean) are e's column statistics. They need only
    e, so they come from the pass that computes ``sum_rows(e)`` (block by block, merged with
    Chan's formula; see :mod:`lazybn.fuse.lower`), and batch norm's variance about the batch
    mean no longer needs a pass of its own. Both terms are non-negative, so nothing cancels.
    It is applied only where w is made of sums (a mean, say): a w made with an extreme
    (``max_rows``, ``maximum``...) can be finite where e holds an infinity, whose squared
    deviation is then infinite, while the statistics of that e are NaN.
    """
    level = levels(nodes)
    extreme: list[bool] = []  # whether a node reads an extreme (a max or min) of anything
    for kind, arg, kids, _ in nodes:
        extreme.append(kind == "R" and arg not in ("sum_rows", "sum_cols") or kind == "Z" and arg in ("max", "min")
                       or any(extreme[k] for k in kids))
    out: list[CNode] = []
    index: dict[CNode, int] = {}
    memo: dict[int, int] = {}

    def add(cn: CNode) -> int:
        if cn[0] == "Z" and cn[1] in "*+":  # a * b and b * a are one node (IEEE: the same value)
            cn = (cn[0], cn[1], tuple(sorted(cn[2])), cn[3])
        cid = index.get(cn)
        if cid is None:
            cid = index[cn] = len(out)
            out.append(cn)
        return cid

    def rebuild(cid: int) -> int:
        if cid not in memo:
            kind, arg, kids, dims = nodes[cid]
            if kind == "R" and arg in ("sum_rows", "sum_cols"):  # float64 partial sums, rounded once
                memo[cid] = add(("M", "round", (total(kids[0], "B" if arg == "sum_rows" else "K", arg, dims),), dims))
            else:
                memo[cid] = scaled(add((kind, arg, tuple(rebuild(k) for k in kids), dims)))
        return memo[cid]

    def scaled(cid: int) -> int:
        """``c * round(s)`` as ``round(c * s)`` (also ``round(s) / c``): a mean, ``scale(1 / n, sum)``,
        is the float64 sum times 1 / n in float64, rounded once (a constant column's mean is exact)."""
        kind, arg, kids, dims = out[cid]
        if kind != "Z" or arg not in "*/":
            return cid
        ops = [out[k] for k in kids]
        for r, c in ((0, 1), (1, 0)) if arg == "*" else ((0, 1),):
            if ops[r][:2] == ("M", "round") and ops[c][0] == "C":
                inner = (ops[r][2][0], kids[c]) if r == 0 else (kids[c], ops[r][2][0])
                return add(("M", "round", (add(("Z", arg, inner, dims)),), dims))
        return cid

    def total(cid: int, bcast: str, op: str, dims: tuple[int, ...]) -> int:
        """A vector expression equal to ``op`` (a sum) of the matrix expression ``cid``. A scalar
        constant is never summed on its own (its sum over rows has no node): a sum whose split or
        pulled-out factor would leave one is kept whole."""
        kind, arg, kids, mdims = nodes[cid]
        matrix = [bool(nodes[k][3]) for k in kids]  # which operands are matrices (a constant has no dims)
        squared = (kind == "M" and arg == "square") or (kind == "Z" and arg == "*" and kids[0] == kids[1])
        if op == "sum_rows" and squared and nodes[kids[0]][:2] == ("Z", "-"):  # sum of (e - br(w))^2
            pair = nodes[kids[0]][2]
            for ex, bw in (pair, pair[::-1]):  # (e - br(w))^2 = (br(w) - e)^2
                w = nodes[bw][2][0] if nodes[bw][0] == "B" else -1
                if w >= 0 and nodes[ex][3] and level[ex] < level[w] and not extreme[w]:  # w needs a pass over e
                    return add(("Q", "", (rebuild(ex), rebuild(w)), dims))
        if level[cid] >= 1 and kind == "Z" and arg in "+-" and all(matrix):
            return add(("Z", arg, (total(kids[0], bcast, op, dims), total(kids[1], bcast, op, dims)), dims))
        if level[cid] >= 1 and kind == "M" and arg == "negate":
            return add(("M", arg, (total(kids[0], bcast, op, dims),), dims))
        if kind == "Z" and arg in "*/":
            a, b = (nodes[k] for k in kids)
            if (b[0] == bcast or (b[0] == "C" and arg == "*")) and matrix[0]:
                vec = rebuild(b[2][0]) if b[0] == bcast else rebuild(kids[1])
                return add(("Z", arg, (total(kids[0], bcast, op, dims), vec), dims))
            if arg == "*" and (a[0] == bcast or a[0] == "C") and matrix[1]:
                vec = rebuild(a[2][0]) if a[0] == bcast else rebuild(kids[0])
                return add(("Z", arg, (vec, total(kids[1], bcast, op, dims)), dims))
            if arg == "*":  # x * (p * br(v)) = (x * p) * br(v), either way round
                for x, y in ((kids[0], kids[1]), (kids[1], kids[0])):
                    ykind, yarg, ykids, _ = nodes[y]
                    if ykind != "Z" or yarg != "*":
                        continue
                    for p, q in ((ykids[0], ykids[1]), (ykids[1], ykids[0])):
                        if nodes[q][0] == bcast and (nodes[x][3] or nodes[p][3]):
                            rest = add(("Z", "*", (rebuild(x), rebuild(p)), mdims))
                            return add(("Z", "*", (add(("R", op, (rest,), dims)), rebuild(nodes[q][2][0])), dims))
        return add(("R", op, (rebuild(cid),), dims))

    new_roots = [rebuild(r) for r in roots]
    return out, new_roots
