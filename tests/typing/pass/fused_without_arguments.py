"""``@fused()`` with empty parentheses is ``@fused``: mypy accepts it and keeps the signature."""

from typing import assert_type

import lazybn as lb


@lb.fused()
def doubled(x: lb.Matrix) -> lb.Matrix:
    return lb.compute(lb.scale(2.0, x))


y = doubled(lb.matrix([[1.0, 2.0]]))
assert_type(y, lb.Matrix)
assert y.array.tolist() == [[2.0, 4.0]]
