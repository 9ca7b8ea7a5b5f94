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
level: it applies the previous level's mask after rewinding, keeps the rewind point (level 0) and,
when its training ends, the next level's mask -- :func:`next_mask`, a pure function of the trained
weights and the current mask (open_lth's ``Strategy.prune``). Where they are kept is the runner's
business (:class:`ticketlab.pruners.base.StageFiles`).

Rewinding restores the weights (and BN statistics) of step ``rewind_step``; the learning-rate schedule
and data order restart from the beginning of each level (open_lth instead continues them from step k:
"late rewinding" of the schedule is not implemented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ticketlab.errors import ConfigError, check_range
from ticketlab.pruners.base import PruneContext, Pruner, PrunerConfig, register_pruner
from ticketlab.pruners.phases import TrainState
from ticketlab.sparsity.masks import attach_dense, load_plain_state_dict, plain_state_dict
from ticketlab.sparsity.selection import global_topk, num_kept

#: Stage keys: the weights every level rewinds to (shared by the levels), and the mask of the next level.
REWIND, NEXT_MASK = "rewind", "next_mask"


def next_mask(trained: list[Tensor], current: list[Tensor], rate: float) -> list[Tensor]:
    """The next IMP level's masks: remove ``rate`` of the still-kept weights, globally, by trained magnitude.

    Frankle & Carbin 2019, Sec. 2 (global pruning: Sec. 5); open_lth ``pruning/sparse_global.py``.

    Args:
        trained: the trained weights of the masked layers (any shapes).
        current: their current masks (same shapes; bool or 0/1).
        rate: fraction of the kept weights removed, in (0, 1).

    Returns:
        Bool masks (same shapes) keeping ``num_kept(remaining, rate)`` weights; a pruned weight never returns.
    """
    kept = [m.bool() for m in current]
    keep = num_kept(sum(int(m.sum()) for m in kept), rate)
    scores = [torch.where(m, w.detach().abs(), torch.full_like(w, -1.0)) for w, m in zip(trained, kept, strict=True)]
    return global_topk(scores, keep)  # pruned weights score -1 and never return


def level_sparsity(rate: float, level: int) -> float:
    """Nominal sparsity after ``level`` IMP levels, ``1 - (1 - rate)^level``, rounded to 12 decimals
    (0.36 after two levels at rate 0.2, not 0.3599999999999999).

    Source: Frankle & Carbin 2019, Sec. 2 (each round prunes p^(1/n) % of the surviving weights)."""
    return round(1.0 - (1.0 - rate) ** level, 12)


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
    def final_sparsity(self) -> float:
        """The nominal sparsity of the last level (what ``pruner.levels`` gives; else about ``sparsity``)."""
        return level_sparsity(self.rate, self.n_levels)

    @property
    def n_levels(self) -> int:
        """Levels after the dense one."""
        if self.levels is not None:
            return self.levels
        if self.sparsity == 0:
            return 0
        return math.ceil(math.log(self.density) / math.log(1 - self.rate) - 1e-9)


@register_pruner("imp", ImpConfig)
class Imp(Pruner):
    """One IMP level (a stage of the IMP run; :mod:`ticketlab.runner.stages` runs the levels)."""

    cfg: ImpConfig

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """All-ones masks on the selected layers (the level's mask is set by :meth:`initialize`)."""
        dense = attach_dense(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        self.layers, self.masks, self.weights = dense.layers, dense.masks, dense.tensors
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
            for f in (ctx.stage.locate(REWIND, shared=True), ctx.stage.locate(NEXT_MASK)):
                if not f.exists():
                    raise ConfigError(f"IMP level {self.level} needs {f}, written by the earlier levels; it is "
                                      "missing (was the IMP run folder edited?). Start the IMP run afresh with "
                                      "trainer.resume=fresh.")
        return []

    def initialize(self, model: nn.Module, ctx: PruneContext) -> None:
        """Level 0: save the rewind point at step 0. Level L: rewind, then apply the previous level's mask."""
        if ctx.stage is None:
            return
        if self.level == 0:
            if self.cfg.rewind_step == 0:
                ctx.stage.save(REWIND, plain_state_dict(model), shared=True)
            return
        load_plain_state_dict(model, ctx.stage.load(REWIND, shared=True))
        saved = ctx.stage.load(NEXT_MASK)
        with torch.no_grad():
            for (name, _), fm in zip(self.layers, self.masks, strict=True):
                fm.mask.copy_(saved[f"{name}.weight"])

    def on_step_end(self, state: TrainState) -> None:
        """Level 0: save the rewind point at ``rewind_step``."""
        if self.level == 0 and self.ctx.stage is not None and self.cfg.rewind_step \
                and state.step == self.cfg.rewind_step:
            self.ctx.stage.save(REWIND, plain_state_dict(state.model), shared=True)

    def on_epoch_end(self, state: TrainState) -> None:
        """After the last epoch: the next level's mask (remove ``rate`` of the kept weights by magnitude)."""
        if state.epoch < state.epochs or self.ctx.stage is None:
            return
        nxt = next_mask(self.weights, [fm.mask for fm in self.masks], self.cfg.rate)
        masks = {f"{name}.weight": m.cpu() for (name, _), m in zip(self.layers, nxt, strict=True)}
        self.ctx.stage.save(NEXT_MASK, masks)

    def summary(self) -> dict[str, Any]:
        """The level of this stage."""
        return {"imp_level": self.level}

    @property
    def target_sparsity(self) -> float:
        """This level's nominal sparsity ``1 - (1 - rate)^level`` (0 for the dense level 0), not
        ``pruner.sparsity``, which only chooses the number of levels when ``pruner.levels`` is unset."""
        return level_sparsity(self.cfg.rate, self.level)
