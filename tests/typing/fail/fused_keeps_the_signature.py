"""@fused keeps the decorated function's signature: a vector where it takes a matrix is rejected."""

import lazybn as lb


@lb.fused
def scaled(x: lb.Matrix, s: float) -> lb.Matrix:
    return lb.compute(lb.scale(s, x))


@lb.fused(dynamic=("s",))
def shifted(x: lb.Matrix, s: float) -> lb.Matrix:
    return lb.compute(lb.add_c(x, s))


v = lb.vector([1.0, 2.0])
scaled(v, 2.0)  # type: ignore[arg-type]
shifted(lb.matrix([[1.0]]), "one")  # type: ignore[arg-type]
bad: lb.Vector = scaled(lb.matrix([[1.0]]), 2.0)  # type: ignore[assignment]
