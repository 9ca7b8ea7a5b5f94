"""Evaluation: mean loss and accuracy of a model on one split, summed over ranks under DDP."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketlab.data.loaders import eval_batches
from ticketlab.distributed import all_sum
from ticketlab.training.placement import Placement


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, placement: Placement, limit_batches: int | None = None
             ) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy (in [0, 1]) of ``model`` on ``loader``, in eval mode.

    Args:
        model: maps ``(B, C, H, W)`` to logits ``(B, K)``.
        loader: an evaluation loader yielding ``(x: (B, C, H, W), y: (B,))``.
        placement: device, autocast and DDP shard (each rank evaluates its part; the sums are combined).
        limit_batches: evaluate only the first batches (``trainer.limit_eval_batches``; ``None``: all).

    Returns:
        ``(loss, accuracy)`` over the evaluated examples.

    Raises:
        NonFiniteError: the masks cannot be computed (non-finite scores).
    """
    model.eval()
    device = placement.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for i, (x, y) in enumerate(eval_batches(loader, placement.shard)):
        if limit_batches and i >= limit_batches:
            break
        x, y = placement.to_device(x), y.to(device, non_blocking=True)
        with placement.autocast():
            out = model(x)
        loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
    if placement.shard:
        loss_sum, correct, seen_t = all_sum(placement.dist, loss_sum, correct, torch.tensor(seen, device=device))
        seen = int(seen_t)
    return loss_sum.item() / max(seen, 1), int(correct.item()) / max(seen, 1)


__all__ = ["evaluate"]
