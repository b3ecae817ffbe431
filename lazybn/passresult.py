"""What :func:`lazybn.network.gradients` returns: a training pass's loss, predictions and
gradients, and the input gradient ``dx`` when it was asked for.

The type says whether ``dx`` is there: ``gradients(..., input_grad=True)`` gives a
``PassResult[Matrix]``, without it a ``PassResult[None]``, and with a flag known only at run
time a ``PassResult[Matrix | None]``, which is also what a bare ``PassResult`` annotation means
(and, the type parameter being covariant, it holds the other two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, final

from .array import Matrix
from .layers import Gradients

if TYPE_CHECKING:  # a default (PEP 696) lets a bare ``PassResult`` stand for ``PassResult[Matrix | None]``
    from typing_extensions import TypeVar

    DX = TypeVar("DX", bound=Matrix | None, default=Matrix | None, covariant=True)
else:  # typing's TypeVar takes a default from Python 3.13 on; nothing at run time reads it
    import typing

    DX = typing.TypeVar("DX", bound=Matrix | None, covariant=True)


# No slots: ``PassResult[Matrix](...)`` sets ``__orig_class__`` on the new instance; typing lets a
# frozen dataclass refuse that, but with slots the refusal is a TypeError on Python 3.11.
@final
@dataclass(frozen=True)
class PassResult(Generic[DX]):
    """One training pass over a batch (:func:`~lazybn.network.gradients`)."""

    loss: float  # the batch's mean cross-entropy
    pred: Matrix  # the predicted class probabilities, one row per sample
    grads: list[Gradients]  # grads[i] belongs to layers[i]; a BN1 also carries its batch statistics
    dx: DX  # the gradient of the loss with respect to the input, if asked for (else None)
