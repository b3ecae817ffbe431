# br / rows_like / cols_like broadcast vectors only.
import lazybn as lb

m = lb.matrix([[1.0, 2.0]])
lb.br(3, m)  # type: ignore[arg-type]
lb.rows_like(m, m)  # type: ignore[arg-type]
lb.cols_like(lb.delay(m), m)  # type: ignore[arg-type]
