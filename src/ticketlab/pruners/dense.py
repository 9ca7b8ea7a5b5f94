"""``pruner=dense``: ordinary training of every weight, no mask (the dense baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from ticketlab.errors import ConfigError
from ticketlab.pruners.base import Pruner, PrunerConfig, register_pruner


@dataclass
class DenseConfig(PrunerConfig):
    """``pruner=dense``. ``sparsity`` must stay 0."""

    name: str = "dense"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity != 0:
            raise ConfigError(f"pruner.sparsity={self.sparsity} with pruner=dense: dense training keeps every "
                              "weight, so sparsity must be 0; choose a pruning method (e.g. pruner=edge_popup).")


@register_pruner("dense", DenseConfig)
class Dense(Pruner):
    """Dense training: the base :class:`Pruner` behaviour (all parameters trained)."""
