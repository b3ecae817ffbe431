# The flags are bools and the weight decays numbers: mypy refuses other values before a run does.
import lazybn as lb

w, b = lb.matrix([[1.0, 2.0]]), lb.vector([0.5, 0.5])
lb.Linear(w, b, trainable="no")  # type: ignore[arg-type]
lb.LinearNoBias(w, trainable=None)  # type: ignore[arg-type]
lb.Adam(decoupled_weight_decay="yes")  # type: ignore[arg-type]
lb.SGD(0.1, weight_decay="5e-4")  # type: ignore[arg-type]
lb.Momentum(0.1, bn_weight_decay=None)  # type: ignore[arg-type]
