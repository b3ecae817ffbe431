"""lazybn: batch normalization you can read, on a typed lazy-array core fused into numba kernels."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

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
from .array import is_matrix as is_matrix
from .array import is_vector as is_vector
from .array import set_comp as set_comp
from .array import to_numpy as to_numpy
from .construct import matrix as matrix
from .construct import ones as ones
from .construct import replicate as replicate
from .construct import vector as vector
from .construct import zeros as zeros
from .errors import ArgumentError as ArgumentError
from .errors import CompileError as CompileError
from .errors import DataError as DataError
from .errors import DTypeError as DTypeError
from .errors import LazybnError as LazybnError
from .errors import NumericalError as NumericalError
from .errors import PersistenceError as PersistenceError
from .errors import RankError as RankError
from .errors import ReplayWarning as ReplayWarning
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
from .ops import max_rows as max_rows
from .ops import maximum as maximum
from .ops import min_cols as min_cols
from .ops import min_rows as min_rows
from .ops import minimum as minimum
from .ops import rows as rows
from .ops import rows_like as rows_like
from .ops import reshape as reshape
from .ops import scale as scale
from .ops import sum_cols as sum_cols
from .ops import sum_rows as sum_rows
from .ops import transpose as transpose
from .stats import Moments as Moments
from .stats import merge as merge
from .stats import merge_all as merge_all
from .stats import moments as moments

from .cast import to_dtype as to_dtype
from .conventions import KerasBatchNorm as KerasBatchNorm
from .conventions import from_keras as from_keras
from .conventions import from_torch as from_torch
from .conventions import momentum_from_keras as momentum_from_keras
from .conventions import momentum_to_keras as momentum_to_keras
from .conventions import to_keras as to_keras
from .conventions import to_torch as to_torch
from .fold import fold_batchnorm as fold_batchnorm
from .grads import clip_grad_norm as clip_grad_norm
from .grads import grad_norm as grad_norm
from .gradcheck import GradError as GradError
from .gradcheck import gradcheck as gradcheck
from .init import summary as summary
from .init import Init as Init
from .init import mlp as mlp
from .layers import BN1 as BN1
from .layers import Act as Act
from .layers import Activation as Activation
from .layers import Batchnorm1d as Batchnorm1d
from .layers import Dropout as Dropout
from .layers import Gradients as Gradients
from .layers import Layer as Layer
from .layers import Linear as Linear
from .layers import LinearGradients as LinearGradients
from .layers import LinearNoBias as LinearNoBias
from .layers import LinearNoBiasGradients as LinearNoBiasGradients
from .layers import NoGrad as NoGrad
from .layers import Renorm as Renorm
from .layers import RenormRamp as RenormRamp
from .batchnorm import reset_running as reset_running
from .batchnorm import update_running as update_running
from .network import PassResult as PassResult
from .network import forward as forward
from .network import gradients as gradients
from .network import logits as logits
from .optim import init_state as init_state
from .optim import OptState as OptState
from .optim import UpdateMismatchError as UpdateMismatchError
from .optim import update as update
from .optimizers import Adam as Adam
from .optimizers import Momentum as Momentum
from .optimizers import Optimizer as Optimizer
from .optimizers import RMSProp as RMSProp
from .optimizers import SGD as SGD
from .persist import Saved as Saved
from .persist import load as load
from .persist import save as save
from .preprocess import Pixels as Pixels
from .preprocess import one_hot as one_hot
from .preprocess import prepare as prepare
from .train import Evaluation as Evaluation
from .train import StepResult as StepResult
from .train import accuracy as accuracy
from .train import batches as batches
from .train import evaluate as evaluate
from .train import train_epoch as train_epoch
from .train import train_step as train_step
from .trace import fused as fused

if TYPE_CHECKING:
    from . import data as data
else:
    def __getattr__(name: str) -> object:
        """``lb.data`` is imported on first use (``import lazybn`` stays fast)."""
        if name == "data":
            import importlib

            return importlib.import_module(".data", __name__)
        raise AttributeError(f"module 'lazybn' has no attribute {name!r}")
