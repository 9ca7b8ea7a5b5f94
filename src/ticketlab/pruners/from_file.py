"""``pruner=from_file``: apply the mask saved by an earlier run (its ``masks.pt``) and train the kept weights.

Any TicketLab run writes ``masks.pt`` (``{"masks": {"<layer>.weight": bool tensor}, ...}``); the names
and shapes must match this run's model (checked before training). Works for masks from strong-ticket
runs too (the weights are then trained, e.g. to compare a found ticket with its retrained version).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from ..errors import ConfigError
from ..masks import attach_fixed_masks
from .base import PruneContext, Pruner, PrunerConfig, register_pruner


@dataclass
class FromFileConfig(PrunerConfig):
    """``pruner=from_file``.

    Attributes:
        path: a run folder or its ``masks.pt``.
        sparsity: informational; the file decides (the summary reports the measured sparsity).
    """

    name: str = "from_file"
    path: str = MISSING


@register_pruner("from_file", FromFileConfig)
class FromFile(Pruner):
    """Apply a saved mask."""

    cfg: FromFileConfig

    def load(self) -> dict[str, torch.Tensor]:
        """The masks in ``cfg.path``.

        Raises:
            ConfigError: missing or unreadable file.
        """
        path = Path(self.cfg.path)
        path = path / "masks.pt" if path.is_dir() else path
        if not path.exists():
            raise ConfigError(f"pruner.path={self.cfg.path!r}: no masks.pt there (every run writes one in its "
                              "run folder).")
        blob = torch.load(path, weights_only=False, map_location="cpu")
        return blob["masks"] if isinstance(blob, dict) and "masks" in blob else blob

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach the saved masks as fixed masks (weights stay trainable).

        Raises:
            ConfigError: a layer name or shape that does not match the model.
        """
        masks = self.load()
        attach_fixed_masks(model, {k: v.bool() for k, v in masks.items()})

    def summary(self) -> dict[str, Any]:
        """Where the mask came from."""
        return {"mask_file": self.cfg.path}



