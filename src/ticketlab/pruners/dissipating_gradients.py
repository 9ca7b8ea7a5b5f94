"""``pruner=dissipating_gradients``: remove the weights that stay near their initial value early in
training (Haroon 2022, "What to Prune and What Not to Prune at Initialization", arXiv 2209.02201).

**No public code exists and only the abstract is known**; this implements a specification written from
the abstract, with every open question a named option:

* training starts dense (or from the mask another method set up, see ``pruner=kstarts``);
* after each of the first ``epochs_to_prune`` epochs the kept fraction steps down linearly towards
  the target (``density_e = d0 - (d0 - D) * e / epochs_to_prune``, ``d0`` the starting density), applied
  when the next epoch begins: an epoch is trained and evaluated with one mask, and a run needs more
  than ``epochs_to_prune`` epochs to reach the target;
  removing the kept weights that moved least relative to their initial value,
  ``|theta_e - theta_0| / (|theta_0| + 1e-12)`` (``movement=relative``) or in absolute terms
  (``movement=absolute``);
* ``rule=threshold`` only removes weights with relative movement ``<= alpha`` (the abstract's
  "within a fraction of their initial value"), so the density may stay above the schedule;
  ``rule=rank`` (default) removes the least-moved weights up to the schedule's count;
* ``scope``: the ranking is ``global`` (default) or per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import check_choice, check_range
from ticketlab.pruners.base import PruneContext, Pruner, PrunerConfig, register_pruner
from ticketlab.pruners.phases import TrainState
from ticketlab.pruners.score_based import allocate
from ticketlab.sparsity.masks import FixedMask, attach_dense
from ticketlab.sparsity.selection import sparsity_of


@dataclass
class DissipatingConfig(PrunerConfig):
    """``pruner=dissipating_gradients`` (open questions of the paper are options; see the module docstring).

    Attributes:
        sparsity: target fraction removed (default 0.9).
        epochs_to_prune: epochs over which the density steps down to the target (default 2).
        alpha: relative-movement threshold of ``rule=threshold`` (default 0.1).
        rule: ``rank`` or ``threshold``.
        movement: ``relative`` or ``absolute``.
        scope: ``global`` or ``layerwise``.
        first_layer_dense, last_layer_dense: leave the input / output layer unpruned.
    """

    name: str = "dissipating_gradients"
    sparsity: float = 0.9
    epochs_to_prune: int = 2
    alpha: float = 0.1
    rule: str = "rank"
    movement: str = "relative"
    scope: str = "global"
    first_layer_dense: bool = False
    last_layer_dense: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.epochs_to_prune", self.epochs_to_prune, 1, float("inf"))
        check_range("pruner.alpha", self.alpha, 0.0, float("inf"))
        check_choice("pruner.rule", self.rule, ("rank", "threshold"))
        check_choice("pruner.movement", self.movement, ("relative", "absolute"))
        check_choice("pruner.scope", self.scope, ("global", "layerwise"))


@register_pruner("dissipating_gradients", DissipatingConfig)
class Dissipating(Pruner):
    """Dissipating gradients: prune the most static weights during the first epochs."""

    cfg: DissipatingConfig

    def __init__(self, cfg: DissipatingConfig) -> None:
        super().__init__(cfg)
        self.masks: list[FixedMask] = []
        self.theta0: list[torch.Tensor] = []
        self.start_density = 1.0
        self.history: list[float] = []

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach all-ones masks to the selected layers (training starts dense, or from K-starts' winner)."""
        dense = attach_dense(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        self.layers, self.masks, self.weights = dense.layers, dense.masks, dense.tensors

    def begin_main(self, state: TrainState, resumed: bool) -> None:
        """(Fresh) remember ``theta_0`` and the starting density."""
        if not resumed:
            self.theta0 = [w.detach().clone() for w in self.weights]
            total = sum(fm.mask.numel() for fm in self.masks)
            self.start_density = sum(int(fm.mask.sum()) for fm in self.masks) / total

    def density_after(self, epoch: int) -> float:
        """Scheduled density after ``epoch`` (1-based) completed epochs."""
        target = self.cfg.density
        frac = min(epoch, self.cfg.epochs_to_prune) / self.cfg.epochs_to_prune
        return self.start_density - (self.start_density - target) * frac

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Warn when the run ends before the schedule reaches the target density."""
        if ctx.epochs > self.cfg.epochs_to_prune:
            return []
        return [f"pruner={self.cfg.name} prunes after each of the first pruner.epochs_to_prune="
                f"{self.cfg.epochs_to_prune} epochs, and an epoch trains and is evaluated with the mask it starts "
                f"with, so trainer.epochs={ctx.epochs} ends before the last pruning step: the run ends above the "
                f"target density {self.cfg.density:g}; set trainer.epochs > {self.cfg.epochs_to_prune}."]

    @torch.no_grad()
    def begin_epoch(self, state: TrainState) -> None:
        """At the start of 0-based epoch ``e`` in ``1..epochs_to_prune``: remove the kept weights that moved least
        during the epochs before, down to the schedule's density after ``e`` epochs. Done once per epoch (the
        density history counts the steps taken), so a run resumed inside the epoch does not prune again."""
        if not 1 <= state.epoch <= self.cfg.epochs_to_prune or len(self.history) >= state.epoch or not self.masks:
            return
        density = self.density_after(state.epoch)
        scores, relative = [], []
        for w, w0, fm in zip(self.weights, self.theta0, self.masks, strict=True):
            rel = (w - w0).abs() / (w0.abs() + 1e-12)
            move = rel if self.cfg.movement == "relative" else (w - w0).abs()
            scores.append(torch.where(fm.mask.bool(), move, torch.full_like(move, -1.0)))  # removed stay removed
            relative.append(rel)
        new = allocate(scores, sparsity_of(density), self.cfg.scope)
        if self.cfg.rule == "threshold":  # only weights within alpha of their init may go
            new = [n | (fm.mask.bool() & (r > self.cfg.alpha)) for n, fm, r in zip(new, self.masks, relative,
                                                                                    strict=True)]
        for fm, m in zip(self.masks, new, strict=True):
            fm.mask.copy_(fm.mask.bool() & m)
        self.history.append(sum(int(fm.mask.sum()) for fm in self.masks) / sum(fm.mask.numel() for fm in self.masks))

    def state_dict(self) -> dict[str, Any]:
        """``theta_0`` and the density history (the masks are in the model state)."""
        return {"theta0": [t.cpu() for t in self.theta0], "history": list(self.history),
                "start_density": self.start_density}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.theta0 = [t.to(w.device) for t, w in zip(state["theta0"], self.weights, strict=False)]
        self.history, self.start_density = list(state["history"]), state["start_density"]

    def summary(self) -> dict[str, Any]:
        """Density after each pruning epoch."""
        return {"density_history": self.history}
