"""``pruner=random``: i.i.d. random scores (standard normal), per layer or global.

The pruning-at-init baseline of Synaptic-Flow (Tanaka et al. 2020, Sec. 6; ``Pruners/pruners.py::Rand``).
With ``scope=layerwise`` every layer gets the target density; with ``global`` the densities are
uniform in expectation. Scores come from a generator keyed by ``(seed, layer index, "random")``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ticketlab.init.weights import layer_generator
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.score_based import ScorePruner, ScorePrunerConfig


@dataclass
class RandomConfig(ScorePrunerConfig):
    """``pruner=random``."""

    name: str = "random"


@register_pruner("random", RandomConfig)
class RandomPruner(ScorePruner):
    """Random scores."""

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """``N(0, 1)`` per weight (shape of each weight)."""
        import torch

        return [torch.randn(tuple(w.shape), generator=layer_generator(ctx.seed, i, "random")).to(w.device)
                for i, w in enumerate(weights)]
