"""``pruner=weight_recycling``: Iterative Weight Recycling (Gorbett & Whitley 2023, "Randomly
Initialized Subnetworks with Iterative Weight Recycling", arXiv 2303.15953, Sec. 3; code
mattgorb/parameter_tiling_and_recycling @420a2c8 ``utils/conv_type.py``).

Edge-popup or biprop (``base``), plus, every ``every`` epochs, an intra-layer copy: in each masked
weight tensor the ``q = floor(rate * n)`` positions with the lowest ``|score|`` take the values of
the ``q`` positions with the highest ``|score|``, paired in rank order (the i-th lowest receives
the i-th of the top block, both in ascending score order). Scores, optimizer state and the mask
rule are untouched. ``source=next_lowest`` is the paper's ablation (copy from positions
``q..2q-1`` instead of the top block).

Schedule (reference ``main.py`` / ``main_parallel.py``): after 0-based epoch ``e`` when ``e > 0``,
``e % every == 0``, ``e != epochs - 1`` and ``e > warmup`` (the reference's ``rerand_warmup`` test), after
that epoch's evaluation (the reference recycles after validation, so an epoch's reported accuracy is
the one before recycling). ``every_steps = F > 0`` recycles instead after the step of every batch whose
index within its epoch is a multiple of ``F`` (the reference's iteration frequency, ``trainers/default.py``),
once ``e > warmup``: 10 batches per epoch, F = 4, 3 epochs recycle after steps 11, 15, 19, 21, 25, 29.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError, check_choice, check_range
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.biprop import BipropMask
from ticketlab.pruners.edge_popup import EdgePopup, EdgePopupConfig
from ticketlab.pruners.phases import TrainState
from ticketlab.sparsity.masks import ScoreMask, masked_tensors
from ticketlab.sparsity.selection import density_of


@dataclass
class WeightRecyclingConfig(EdgePopupConfig):
    """``pruner=weight_recycling``.

    Attributes:
        base: ``edge_popup`` or ``biprop`` (which mask the recycling runs on).
        rate: rho, fraction of each layer's weights recycled, in [0, 1] (default 0.2).
        every: F, epochs between recyclings (default 10).
        every_steps: > 0: recycle after the batches whose in-epoch index is a multiple of this, instead of
            every ``every`` epochs.
        warmup: recycle only after 0-based epochs ``e > warmup`` (0: from the end of epoch 1 on).
        source: ``top`` (the method) or ``next_lowest`` (the ablation).
    """

    name: str = "weight_recycling"
    base: str = "edge_popup"
    rate: float = 0.2
    every: int = 10
    every_steps: int = 0
    warmup: int = 0
    source: str = "top"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("pruner.base", self.base, ("edge_popup", "biprop"))
        check_range("pruner.rate", self.rate, 0.0, 1.0)
        check_range("pruner.every", self.every, 1, float("inf"))
        check_range("pruner.warmup", self.warmup, 0, float("inf"))
        check_range("pruner.every_steps", self.every_steps, 0, float("inf"))
        check_choice("pruner.source", self.source, ("top", "next_lowest"))
        if self.source == "next_lowest":
            check_range("pruner.rate", self.rate, 0.0, 0.5)
        density = self.density
        if self.rate > density + 1e-12:  # 0.2 at sparsity 0.8 is allowed (1 - 0.8 = 0.19999999999999996)
            raise ConfigError(f"pruner.rate={self.rate} exceeds the density {density:g} (pruner.sparsity="
                              f"{self.sparsity}): the {self.rate:g} highest-|score| weights that donate their values "
                              f"would include pruned ones; allowed: pruner.rate <= 1 - pruner.sparsity.")


def capped_rate(rate: float, sparsity: float) -> float:
    """``min(rate, density)``: a recycling rate whose donors are all kept weights at any sparsity.

    The ``${tl.recycle_rate:<rate>,${pruner.sparsity}}`` resolver of the method presets
    (``conf/method/*_recycle*.yaml``), so that one preset serves a sweep that reaches 99 % pruned. The density
    is the decimal one (:func:`~ticketlab.sparsity.selection.density_of`): rate 0.1 at sparsity 0.9 stays 0.1,
    where ``1 - 0.9`` would cap it at 0.09999999999999998 and recycle one weight fewer per layer than the
    reference's ``floor(0.1 n)``.
    """
    return min(float(rate), density_of(sparsity))



@register_pruner("weight_recycling", WeightRecyclingConfig)
class WeightRecycling(EdgePopup):
    """Edge-popup/biprop with iterative weight recycling."""

    cfg: WeightRecyclingConfig

    def __init__(self, cfg: WeightRecyclingConfig) -> None:
        super().__init__(cfg)
        self.mask_class: type[ScoreMask] = BipropMask if cfg.base == "biprop" else ScoreMask
        self.recycled_at: list[int] = []
        self.total_epochs = 0

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Edge-popup (or biprop) set-up; remember the run length for the recycling schedule."""
        super().attach(model, ctx)
        self.total_epochs = ctx.epochs

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Warn when the schedule never recycles in a run this short."""
        warnings = super().check(model, ctx)
        if self.cfg.rate > 0 and not self.cfg.every_steps and not any(self.due(e) for e in range(1, ctx.epochs + 1)):
            warnings.append(f"pruner=weight_recycling never recycles in this run: pruner.every={self.cfg.every} "
                            f"and pruner.warmup={self.cfg.warmup} leave no recycling epoch before the last of "
                            f"trainer.epochs={ctx.epochs}; the run is plain {self.cfg.base}.")
        return warnings

    def due(self, epoch: int) -> bool:
        """Whether recycling follows completed epoch ``epoch`` (1-based), per the reference schedule."""
        e = epoch - 1
        if self.cfg.every_steps:
            return False
        return e > 0 and e % self.cfg.every == 0 and e != self.total_epochs - 1 and e > self.cfg.warmup

    def after_evaluation(self, state: TrainState) -> None:
        """Recycle when due, after the epoch's evaluation (as the reference)."""
        super().after_evaluation(state)
        if self.due(state.epoch):
            self.recycle(state.model)
            self.recycled_at.append(state.epoch)

    def on_step_end(self, state: TrainState) -> None:
        """Score clamping (edge-popup); with ``every_steps`` = F, recycle after the step of every in-epoch batch
        index ``i`` with ``i % F == 0`` in 0-based epochs ``e > warmup`` (the reference's ``trainers/default.py``
        ``i % rerand_iter_freq == 0 and epoch > 0``, ``default_parallel.py`` ``epoch > rerand_warmup``);
        ``recycled_at`` then holds the phase's step numbers."""
        super().on_step_end(state)
        if self.cfg.every_steps and state.batch_index % self.cfg.every_steps == 0 and state.epoch > self.cfg.warmup:
            self.recycle(state.model)
            self.recycled_at.append(state.step)

    @torch.no_grad()
    def recycle(self, model: nn.Module) -> None:
        """Copy top-|score| weight values into the lowest-|score| positions of every masked weight."""
        for mt in masked_tensors(model):
            if mt.tensor_name != "weight":
                continue
            flat = mt.original.view(-1)
            n = flat.numel()
            q = math.floor(self.cfg.rate * n)
            if q == 0:
                continue
            order = torch.sort(mt.mask.scores.detach().abs().reshape(-1), stable=True).indices
            src = order[n - q:] if self.cfg.source == "top" else order[q:2 * q]
            flat[order[:q]] = flat[src].clone()

    def state_dict(self) -> dict[str, Any]:
        """Edge-popup state plus the epochs after which recycling happened."""
        return {**super().state_dict(), "recycled_at": list(self.recycled_at)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.recycled_at = list(state["recycled_at"])

    def summary(self) -> dict[str, Any]:
        """Epochs after which weights were recycled."""
        return {**super().summary(), "recycled_at": self.recycled_at}
