"""Train the two MNIST networks (784-300-50-10, with and without batch norm) through lazybn's
Python API: load the data, build the networks, run epochs with a progress bar, report the test
accuracy (and the batch-norm network's once more with batch norm folded into its linear layers). ``lazybn train`` does the same with reports, seeds and presets; this is the loop
written out.

Run: python examples/train_mnist.py [--epochs 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

import lazybn as lb
from lazybn.data import load_mnist

SIZES = (784, 300, 50, 10)
BATCH = 100


def train(layers: list[lb.Layer], x: NDArray[np.float32], labels: NDArray[np.int64], epochs: int, *,
          lr: float = 0.1, seed: int = 0, desc: str = "") -> list[lb.Layer]:
    """``epochs`` passes of plain SGD over (x, labels) in shuffled batches of 100."""
    y = lb.one_hot(labels, SIZES[-1])
    opt = lb.SGD(lr)
    state = lb.init_state(opt, layers)
    rng = np.random.default_rng(seed)
    steps = math.ceil(x.shape[0] / BATCH)
    with tqdm(total=epochs * steps, desc=desc, unit="step") as bar:
        for _ in range(epochs):
            layers, state, loss = lb.train_epoch(layers, opt, state, x, y, BATCH, rng,
                                                 progress=lambda _loss: bar.update())  # after every step
            bar.set_postfix(loss=f"{loss:.4f}")
    return layers


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="a directory with the IDX or CSV files")
    args = parser.parse_args(argv)
    mnist = load_mnist(args.data_dir, progress=True)
    x = lb.prepare(mnist.train.images, lb.Pixels.standard)
    x_test = lb.prepare(mnist.test.images, lb.Pixels.standard)
    for name, bn in (("batch norm", True), ("no batch norm", False)):
        layers = lb.mlp(SIZES, batchnorm=bn, init=lb.Init.small, seed=0)  # the same weight matrices
        print(f"{name}:\n{lb.summary(layers)}")
        layers = train(layers, x, mnist.train.labels, args.epochs, desc=name)
        print(f"{name}: test accuracy {lb.accuracy(layers, x_test, mnist.test.labels):.2%}")
        if bn:  # for deployment: each batch-norm layer folded into the linear layer before it
            deploy = lb.fold_batchnorm(layers)
            print(f"batch norm folded into the linear layers: test accuracy "
                  f"{lb.accuracy(deploy, x_test, mnist.test.labels):.2%}")


if __name__ == "__main__":
    main()
