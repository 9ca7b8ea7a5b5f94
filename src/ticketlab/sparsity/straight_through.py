"""The straight-through estimator of edge-popup: ``W * m`` whose gradient reaches the scores through the top-k.

Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?", Sec. 3, Eq. 2: the
top-k that turns scores ``S`` into the mask ``m`` is treated as the identity in the backward pass,
so ``dL/dS = dL/dW_eff * W`` (times ``sign(S)`` when the ranking key is ``|S|``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ticketlab.sparsity import kernels


def score_gradient(grad: Tensor, weight: Tensor, scores: Tensor, signed: bool) -> Tensor:
    """Straight-through score gradient ``dL/dS = grad * W`` (times ``sign(S)`` for the ``|S|`` key).

    Args:
        grad: ``dL/dW_eff``, the gradient reaching the masked weight (shape of ``weight``).
        weight, scores: the frozen weight and its scores (same shape).
        signed: the ranking key is ``|S|``.

    Returns:
        ``dL/dS`` (shape of ``scores``); on the CPU one fused pass (:func:`ticketlab.sparsity.kernels.score_grad`),
        bit-identical to the torch ops.

    Source: Ramanujan et al. 2020, Eq. 2 / Sec. 3 (the top-k is treated as the identity).
    """
    fused = kernels.score_grad(grad, weight, scores, signed)
    if fused is not None:
        return fused
    out = grad * weight
    return out.mul_(torch.sign(scores)) if signed else out


class _ScoreSTE(torch.autograd.Function):
    """``W * m`` with a straight-through gradient to the scores.

    Forward: ``W_eff = W * m`` with ``m = TopK(key(S))`` precomputed. Backward (Ramanujan et al.
    2020, Eq. 2 / Sec. 3): the top-k is treated as the identity, so
    ``dL/dS = dL/dW_eff * W`` for the raw key, times ``sign(S)`` for the ``|S|`` key; the weight
    gets ``dL/dW_eff * m`` (only used when the weight is trainable).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, mask: Tensor, signed: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(weight, scores, mask)
        ctx.signed = signed
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        weight, scores, mask = ctx.saved_tensors
        grad_w = grad * mask if ctx.needs_input_grad[0] else None
        grad_s = score_gradient(grad, weight, scores, ctx.signed) if ctx.needs_input_grad[1] else None
        return grad_w, grad_s, None, None


def straight_through(weight: Tensor, scores: Tensor, mask: Tensor, signed: bool) -> Tensor:
    """``W * m`` whose gradient reaches the scores straight through the top-k (edge-popup).

    Args:
        weight: the frozen (or trainable) tensor, any shape.
        scores: its scores (shape of ``weight``).
        mask: the 0/1 mask in force, ``TopK(key(S))`` (shape and dtype of ``weight``).
        signed: the key is ``|S|`` (the score gradient is multiplied by ``sign(S)``).

    Returns:
        ``weight * mask``; backward gives ``dL/dS = dL/dW_eff * W`` (:func:`score_gradient`) and, when the
        weight requires grad, ``dL/dW = dL/dW_eff * m``.
    """
    return _ScoreSTE.apply(weight, scores, mask, signed)


__all__ = ["score_gradient", "straight_through"]
