"""``pruner=magnitude``: keep the largest ``|W|`` at initialization (Synaptic-Flow ``Mag``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.score_based import ScorePruner, ScorePrunerConfig


@dataclass
class MagnitudeConfig(ScorePrunerConfig):
    """``pruner=magnitude``."""

    name: str = "magnitude"


@register_pruner("magnitude", MagnitudeConfig)
class Magnitude(ScorePruner):
    """Magnitude at initialization."""

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """``|W|`` (shape of each weight)."""
        return [w.detach().abs() for w in weights]
