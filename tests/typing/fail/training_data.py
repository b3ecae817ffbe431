# train_epoch and accuracy take numpy data; from_torch takes a network (a sequence of layers).
import numpy as np

import lazybn as lb

layers = lb.mlp((4, 3, 2), batchnorm=True, seed=0)
x = np.zeros((8, 4), np.float32)
labels = np.zeros(8, np.int64)
lb.accuracy(layers, lb.matrix(x), labels)  # type: ignore[arg-type]
lb.accuracy(layers[0], x, labels)  # type: ignore[arg-type]
lb.from_torch(lb.to_torch(layers), like=layers[0])  # type: ignore[arg-type]
opt = lb.SGD(0.1)


def shout(message: str) -> None:
    print(message.upper())


lb.train_epoch(layers, opt, lb.init_state(opt, layers), x, lb.one_hot(labels, 2), 4, None,
               progress=shout)  # type: ignore[arg-type]
lb.gradients(layers, x, lb.matrix(lb.one_hot(labels, 2)))  # type: ignore[call-overload]
lb.one_hot([0.0, 1.0], 2)  # type: ignore[list-item]
lb.update(opt, lb.init_state(opt, layers), layers, lb.gradients(layers, lb.matrix(x), lb.matrix(x)))  # type: ignore[arg-type]
