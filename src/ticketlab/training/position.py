"""Where one training epoch stands: its order, the next batch, its learning rate, and the running sums.

A checkpoint written inside an epoch stores an :class:`EpochPosition`; the continued run replays the
same order from the next batch and keeps adding to the same sums, so its epoch metrics equal the
uninterrupted run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ticketlab.data.loaders import EpochOrder
from ticketlab.distributed import Dist, all_sum


@dataclass
class EpochPosition:
    """A snapshot of an epoch in progress (what ``last.ckpt`` holds as ``position``).

    Attributes:
        order: the epoch's random order (permutation, augmentation seed).
        batch: index of the next batch to train.
        loss_sum: sum of per-example training losses so far (over every rank under DDP).
        correct: correct training predictions so far (over every rank).
        seen: training examples so far (over every rank).
        lr: the learning rate the epoch started with (reported in its metric row).
    """

    order: EpochOrder
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return {"order": self.order.state_dict(), "batch": self.batch, "loss_sum": self.loss_sum,
                "correct": self.correct, "seen": self.seen, "lr": self.lr}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochPosition:
        """Inverse of :meth:`state_dict`."""
        return cls(EpochOrder.from_state(state["order"]), int(state["batch"]), float(state["loss_sum"]),
                   int(state["correct"]), int(state["seen"]), state["lr"])


class RunningSums:
    """The training loss, correct count and example count of the epoch so far, kept on the device.

    Args:
        device: where the sums live (no host synchronisation per step).
        start: the position a resumed epoch continues from (its sums belong to rank 0 under DDP).
        own: whether this rank starts from ``start``'s sums (rank 0, or a single process).
    """

    def __init__(self, device: torch.device, start: EpochPosition | None = None, own: bool = True) -> None:
        take = start is not None and own
        self.device = device
        self.loss_sum = torch.tensor(start.loss_sum if take else 0.0, dtype=torch.float64, device=device)
        self.correct = torch.tensor(start.correct if take else 0, dtype=torch.long, device=device)
        self.seen = start.seen if take else 0

    def add(self, loss: torch.Tensor, hits: torch.Tensor, n: int) -> None:
        """Add one step: its mean loss (0-dim), its correct count (0-dim) and its batch size."""
        self.loss_sum += loss.double() * n
        self.correct += hits
        self.seen += n

    def mean_loss(self) -> float:
        """Mean training loss so far (a host synchronisation)."""
        return self.loss_sum.item() / max(self.seen, 1)

    def accuracy(self) -> float:
        """Training accuracy so far, in [0, 1] (a host synchronisation)."""
        return self.correct.item() / max(self.seen, 1)

    def totals(self, dist: Dist, sharded: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(loss_sum, correct, seen)`` over every rank when ``sharded``, else this process's."""
        if not sharded:
            return self.loss_sum, self.correct, self.seen
        loss_sum, correct, seen = all_sum(dist, self.loss_sum, self.correct,
                                          torch.tensor(self.seen, device=self.device))
        return loss_sum, correct, int(seen)


__all__ = ["EpochPosition", "RunningSums"]
