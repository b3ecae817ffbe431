"""Canonicalisation: a delayed DAG becomes numbered structure plus run-time arguments.

``canonicalize`` walks the DAG once and numbers every distinct subexpression (structural CSE):
leaves by first appearance of their array, scalars by position, dimension sizes by value. The
resulting structure (with the dtype and Seq/Par) is the kernel's cache key
(:mod:`lazybn.fuse.lower` renders it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

from .algebra import CNode
from .graph import Br, ColsLike, Const, Leaf, Map, Node, Reduce, Scalar, Zip


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
