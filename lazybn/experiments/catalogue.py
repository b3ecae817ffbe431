"""Imports every experiment module; each registers itself with :mod:`.registry` on import."""

import lazybn.experiments.activations  # noqa: F401
import lazybn.experiments.bad_init  # noqa: F401
import lazybn.experiments.bn_vs_dropout  # noqa: F401
import lazybn.experiments.deep_nets  # noqa: F401
import lazybn.experiments.fine_tune  # noqa: F401
import lazybn.experiments.init_stats  # noqa: F401
import lazybn.experiments.population  # noqa: F401
