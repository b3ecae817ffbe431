# dataclasses.replace (how a layer is frozen for fine-tuning) checks the new fields' types and ranks.
import dataclasses

import lazybn as lb

v = lb.vector([1.0, 2.0])
m = lb.matrix([[1.0, 2.0], [3.0, 4.0]])
bn = lb.Batchnorm1d(v, v, v, v)
lin = lb.Linear(m, v)
dataclasses.replace(bn, frozen="yes")  # type: ignore[arg-type]
dataclasses.replace(bn, gamma=m)  # type: ignore[arg-type]
dataclasses.replace(lin, w=v)  # type: ignore[arg-type]
dataclasses.replace(lin, b=v * 2.0)  # type: ignore[arg-type]
dataclasses.replace(bn, forzen=True)  # type: ignore[call-arg]
