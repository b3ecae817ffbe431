# Layer fields have a rank: a Linear's weights are a matrix and its bias a vector.
import numpy as np

import lazybn as lb
from lazybn.layers import Batchnorm1d, Linear, LinearNoBias

v = lb.vector(np.ones(3))
m = lb.matrix(np.ones((3, 3)))

Linear(w=v, b=v)  # type: ignore[arg-type]
Linear(m, m)  # type: ignore[arg-type]
LinearNoBias(lb.delay(m))  # type: ignore[arg-type]
Batchnorm1d(v, v, m, v)  # type: ignore[arg-type]
Batchnorm1d(v, v, v, v * 2.0)  # type: ignore[arg-type]
