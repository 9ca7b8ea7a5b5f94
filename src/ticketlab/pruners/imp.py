"""``pruner=imp``: iterative magnitude pruning with rewinding (Frankle & Carbin, ICLR 2019, Sec. 2;
Frankle et al., ICML 2020, Sec. 3; facebookresearch/open_lth ``lottery/runner.py``,
``pruning/sparse_global.py``).

Level 0 trains the dense network. Each later level removes ``rate`` (20%) of the still-kept weights
globally by trained magnitude (``|w|`` at the end of the previous level), rewinds every parameter and
buffer to the saved state of optimizer step ``rewind_step`` (0 = the initialization), and trains the
kept weights with the normal loop. After ``L`` levels the density is ``0.8^L`` (exactly: each level keeps
``num_kept(R, rate)`` of the ``R`` remaining weights).

The levels are stages of one run (:mod:`ticketlab.runner.stages`): each has its own folder
``<run>/level_<LL>/``, its own identity and W&B run, and is skipped once completed, so the same
command continues an interrupted IMP run inside the level it was training. This module is one
level: it applies the previous level's mask after rewinding, saves the rewind point (level 0) and
computes the next level's mask (``next_mask.pt``) when its training ends.

Rewinding restores the weights (and BN statistics) of step ``rewind_step``; the learning-rate schedule
and data order restart from the beginning of each level (open_lth instead continues them from step k:
"late rewinding" of the schedule is not implemented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError, check_range
from ticketlab.files import atomic_torch_save
from ticketlab.pruners.base import PruneContext, Pruner, PrunerConfig, register_pruner
from ticketlab.pruners.phases import TrainState
from ticketlab.sparsity.masks import attach_dense_masks, load_plain_state_dict, plain_state_dict, select_layers
from ticketlab.sparsity.selection import global_topk, num_kept

REWIND_FILE = "rewind.pt"
NEXT_MASK_FILE = "next_mask.pt"


@dataclass
class ImpConfig(PrunerConfig):
    """``pruner=imp``.

    Attributes:
        sparsity: target; the number of levels is the smallest ``L`` with ``(1 - rate)^L <= 1 - sparsity``
            unless ``levels`` is set.
        levels: number of pruning levels after the dense level 0 (null: from ``sparsity``).
        rate: fraction of the remaining weights removed per level (0.2).
        rewind_step: optimizer step whose weights every level rewinds to (0 = initialization).
        first_layer_dense, last_layer_dense: exclude the input / output layer (open_lth excludes
            LeNet's and VGG's output layer).
    """

    name: str = "imp"
    sparsity: float = 0.8
    levels: int | None = None
    rate: float = 0.2
    rewind_step: int = 0
    first_layer_dense: bool = False
    last_layer_dense: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.rate", self.rate, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range("pruner.rewind_step", self.rewind_step, 0, float("inf"))
        if self.levels is not None:
            check_range("pruner.levels", self.levels, 0, float("inf"))

    @property
    def n_levels(self) -> int:
        """Levels after the dense one."""
        if self.levels is not None:
            return self.levels
        if self.sparsity == 0:
            return 0
        return math.ceil(math.log(1 - self.sparsity) / math.log(1 - self.rate) - 1e-9)


@register_pruner("imp", ImpConfig)
class Imp(Pruner):
    """One IMP level (a stage of the IMP run; :mod:`ticketlab.runner.stages` runs the levels)."""

    cfg: ImpConfig

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """All-ones masks on the selected layers (the level's mask is set by :meth:`initialize`)."""
        self.layers = select_layers(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        self.masks = attach_dense_masks(self.layers)
        self.ctx = ctx

    @property
    def level(self) -> int:
        """This stage's level (0 outside the stage runner)."""
        return self.ctx.stage.index if self.ctx.stage is not None else 0

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Every level trains; the rewind step must be reached in level 0; later levels need their inputs.

        Raises:
            ConfigError: ``trainer.epochs=0``, a ``rewind_step`` beyond level 0's last step, a level > 0
                outside the stage runner, or a missing rewind point or previous mask.
        """
        if ctx.epochs < 1:
            raise ConfigError("pruner=imp trains every level, so trainer.epochs must be >= 1 "
                              f"(got {ctx.epochs}).")
        steps = ctx.epochs * (ctx.batches_per_epoch or 0)
        if self.cfg.rewind_step > steps:
            raise ConfigError(f"pruner.rewind_step={self.cfg.rewind_step} is never reached: level 0 takes "
                              f"{steps} optimizer steps (trainer.epochs={ctx.epochs} x {ctx.batches_per_epoch} "
                              f"batches); allowed: 0 <= pruner.rewind_step <= {steps}.")
        if self.level > 0:
            for f in (self._rewind_file(), self._previous_mask_file()):
                if not f.exists():
                    raise ConfigError(f"IMP level {self.level} needs {f}, written by the earlier levels; it is "
                                      "missing (was the IMP run folder edited?). Start the IMP run afresh with "
                                      "trainer.resume=fresh.")
        return []

    def _rewind_file(self) -> Path:
        return Path(self.ctx.stage.parent_dir) / REWIND_FILE

    def _previous_mask_file(self) -> Path:
        return Path(self.ctx.stage.previous_dir) / NEXT_MASK_FILE

    def initialize(self, model: nn.Module, ctx: PruneContext) -> None:
        """Level 0: save the rewind point at step 0. Level L: rewind, then apply the previous level's mask."""
        if ctx.stage is None:
            return
        if self.level == 0:
            if self.cfg.rewind_step == 0:
                atomic_torch_save(self._rewind_file(), plain_state_dict(model))
            return
        load_plain_state_dict(model, torch.load(self._rewind_file(), weights_only=True, map_location="cpu"))
        saved = torch.load(self._previous_mask_file(), weights_only=True, map_location="cpu")
        with torch.no_grad():
            for (name, _), fm in zip(self.layers, self.masks, strict=True):
                fm.mask.copy_(saved[f"{name}.weight"])

    def on_step_end(self, state: TrainState) -> None:
        """Level 0: save the rewind point at ``rewind_step``."""
        if self.level == 0 and self.ctx.stage is not None and self.cfg.rewind_step \
                and state.step == self.cfg.rewind_step:
            atomic_torch_save(self._rewind_file(), plain_state_dict(state.model))

    def on_epoch_end(self, state: TrainState) -> None:
        """After the last epoch: the next level's mask (remove ``rate`` of the kept weights by magnitude)."""
        if state.epoch < state.epochs or state.run_dir is None:
            return
        trained = [layer.parametrizations.weight.original.detach().abs() for _, layer in self.layers]
        current = [fm.mask.bool() for fm in self.masks]
        remaining = sum(int(m.sum()) for m in current)
        keep = num_kept(remaining, self.cfg.rate)
        scores = [torch.where(m, w, torch.full_like(w, -1.0)) for w, m in zip(trained, current, strict=True)]
        nxt = global_topk(scores, keep)  # pruned weights (-1) never return
        atomic_torch_save(Path(state.run_dir) / NEXT_MASK_FILE,
                          {f"{name}.weight": m.cpu() for (name, _), m in zip(self.layers, nxt, strict=True)})

    def summary(self) -> dict[str, Any]:
        """The level of this stage."""
        return {"imp_level": self.level}
