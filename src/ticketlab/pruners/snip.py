"""``pruner=snip``: connection sensitivity (Lee, Ajanthan & Torr, ICLR 2019, Eq. 6).

Score ``|dL/dm| = |g * W|`` at ``m = 1`` with ``g = dL/dW`` of the mean cross-entropy, gradients
summed over ``data_batches`` training batches (Synaptic-Flow ``Pruners/pruners.py::SNIP``; the
normalisation by the global sum does not change the ranking and is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import PruneContext, register_pruner
from .pai import ScorePruner, ScorePrunerConfig


@dataclass
class SnipConfig(ScorePrunerConfig):
    """``pruner=snip`` (needs ``data_batches`` >= 1)."""

    name: str = "snip"
    data_batches: int = 1


@register_pruner("snip", SnipConfig)
class Snip(ScorePruner):
    """SNIP."""

    needs_data = True

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """``|sum_batches dL/dW * W|`` (shape of each weight)."""
        for w in weights:
            w.requires_grad_(True)
            w.grad = None
        for x, y in self.batches(ctx):
            nn.functional.cross_entropy(model(x), y).backward()
        return [(w.grad * w).detach().abs() for w in weights]
