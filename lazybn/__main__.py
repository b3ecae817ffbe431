"""``python -m lazybn``: the ``lazybn`` command."""

import sys

from .cli import main

sys.exit(main())
