# Reductions over rows or columns need a matrix.
import lazybn as lb

v = lb.vector([1.0, 2.0])
lb.sum_rows(v)  # type: ignore[arg-type]
lb.sum_cols(lb.delay(v))  # type: ignore[arg-type]
lb.max_cols(v)  # type: ignore[arg-type]
