"""lazybn: batch normalization you can read, on a typed lazy-array core fused into numba kernels."""

from .array import Comp as Comp
from .array import Delayed as Delayed
from .array import Ix1 as Ix1
from .array import Ix2 as Ix2
from .array import Manifest as Manifest
from .array import Matrix as Matrix
from .array import Vector as Vector
from .array import compute as compute
from .array import compute_all as compute_all
from .array import delay as delay
from .array import matrix as matrix
from .array import ones as ones
from .array import replicate as replicate
from .array import set_comp as set_comp
from .array import to_numpy as to_numpy
from .array import vector as vector
from .array import zeros as zeros
from .errors import CompileError as CompileError
from .errors import DataError as DataError
from .errors import DTypeError as DTypeError
from .errors import LazybnError as LazybnError
from .errors import PersistenceError as PersistenceError
from .errors import RankError as RankError
from .errors import ShapeError as ShapeError
from .errors import ValueRangeError as ValueRangeError
from .fuse.graph import Fn as Fn
from .ops import add_c as add_c
from .ops import amap as amap
from .ops import br as br
from .ops import cols as cols
from .ops import cols_like as cols_like
from .ops import matmul as matmul
from .ops import max_cols as max_cols
from .ops import rows as rows
from .ops import rows_like as rows_like
from .ops import scale as scale
from .ops import sum_cols as sum_cols
from .ops import sum_rows as sum_rows
from .ops import transpose as transpose

__version__ = "0.1.0"
