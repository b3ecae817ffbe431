"""Experiments: ``lazybn train`` (the main MNIST comparison) and the reproductions of the
batch-norm articles' experiments, all on the shared runner of :mod:`lazybn.experiments.runner`."""
