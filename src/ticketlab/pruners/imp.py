"""``pruner=imp``: iterative magnitude pruning with rewinding (Frankle & Carbin, ICLR 2019, Sec. 2;
Frankle et al., ICML 2020, Sec. 3; facebookresearch/open_lth ``lottery/runner.py``,
``pruning/sparse_global.py``).

Level 0 trains the dense network. Each later level removes ``rate`` (20%) of the still-kept weights
globally by trained magnitude (``|w|`` at the end of the previous level), rewinds every parameter and
buffer to the saved state of optimizer step ``rewind_step`` (0 = the initialization), and trains the
kept weights with the normal loop. After ``L`` levels the density is ``0.8^L`` (exactly: each level keeps
``num_kept(R, rate)`` of the ``R`` remaining weights).

Every level is a stage with its own run folder ``<run>/level_<LL>/`` (metrics, summary, checkpoint,
mask). A stage whose ``summary.json`` says ``completed`` is skipped, so re-running the same command
continues an interrupted IMP run at the first unfinished level. ``<run>/summary.json`` lists every
level; its top-level numbers are the last level's.

Rewinding restores the weights (and BN statistics) of step ``rewind_step``; the learning-rate schedule
and data order restart from the beginning of each level (open_lth instead continues them from step k:
"late rewinding" of the schedule is not implemented).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..errors import ConfigError, check_range
from ..masks import FixedMask, attach, num_kept, select_layers, topk_mask
from ..results import atomic_torch_save, atomic_write_json
from .base import PruneContext, Pruner, PrunerConfig, register_pruner


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
        level, root: set by the stage runner (which level this stage is, and the IMP run folder).
    """

    name: str = "imp"
    sparsity: float = 0.8
    levels: int | None = None
    rate: float = 0.2
    rewind_step: int = 0
    first_layer_dense: bool = False
    last_layer_dense: bool = False
    level: int = 0
    root: str = ""

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
    """One IMP level (a stage); :meth:`run_stages` runs the levels."""

    cfg: ImpConfig

    @classmethod
    def run_stages(cls, cfg: DictConfig, run_dir: Path, run_one) -> dict[str, Any]:
        """Run levels ``0..L`` as stages under ``run_dir``, skipping completed ones.

        Args:
            cfg: the composed config (``pruner=imp``).
            run_dir: the IMP run folder.
            run_one: ``run_one(stage_cfg, stage_dir) -> summary`` (:func:`ticketlab.run.run_single`).

        Returns:
            The IMP summary (``levels``: one entry per level; top level: the last level's numbers).
        """
        icfg: ImpConfig = OmegaConf.to_object(cfg.pruner)
        run_dir.mkdir(parents=True, exist_ok=True)
        levels = []
        for level in range(icfg.n_levels + 1):
            stage_dir = run_dir / f"level_{level:02d}"
            done = stage_dir / "summary.json"
            if done.exists():
                summary = json.loads(done.read_text())
                if summary.get("status") == "completed":
                    levels.append(summary)
                    continue
            stage_cfg = cfg.copy()
            OmegaConf.update(stage_cfg, "pruner.level", level, merge=False)
            OmegaConf.update(stage_cfg, "pruner.root", str(run_dir), merge=False)
            levels.append(run_one(stage_cfg, stage_dir))
        keys = ("status", "test_acc", "best_test_acc", "sparsity", "density", "params_remaining", "wall_s",
                "effective_sparsity")
        summary = {**levels[-1], "run_dir": str(run_dir), "imp_levels": len(levels) - 1,
                   "wall_s": sum(s["wall_s"] for s in levels),
                   "levels": [{"level": i, **{k: s.get(k) for k in keys}} for i, s in enumerate(levels)]}
        atomic_write_json(run_dir / "summary.json", summary)
        return summary

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Level 0: save the rewind point (step 0) and train dense. Level L: rewind and apply the mask.

        Raises:
            ConfigError: the previous level's mask or the rewind point is missing (run the levels in order).
        """
        root = Path(self.cfg.root) if self.cfg.root else None
        self.layers = select_layers(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        self.ctx = ctx
        if self.cfg.level == 0:
            masks = [torch.ones_like(layer.weight, dtype=torch.bool) for _, layer in self.layers]
            if root is not None and self.cfg.rewind_step == 0:
                atomic_torch_save(root / "rewind.pt", model.state_dict())
        else:
            if root is None:
                raise ConfigError("pruner=imp levels > 0 run inside the IMP stage runner (python train.py pruner=imp).")
            prev = root / f"level_{self.cfg.level - 1:02d}" / "next_mask.pt"
            rewind = root / "rewind.pt"
            for f in (prev, rewind):
                if not f.exists():
                    raise ConfigError(f"pruner=imp level {self.cfg.level} needs {f}; run the levels in order.")
            model.load_state_dict(torch.load(rewind, weights_only=False))
            saved = torch.load(prev, weights_only=False)
            masks = [saved[f"{name}.weight"].to(layer.weight.device) for name, layer in self.layers]
        for (_, layer), m in zip(self.layers, masks, strict=True):
            attach(layer, "weight", FixedMask(m))

    def on_step_end(self, trainer: Any) -> None:
        """Level 0: save the rewind point at ``rewind_step``."""
        if self.cfg.level == 0 and self.cfg.rewind_step and trainer.step == self.cfg.rewind_step and self.cfg.root:
            state = {k: v for k, v in trainer.model.state_dict().items() if ".parametrizations." not in k}
            for name, layer in self.layers:  # store plain layer names, as the dense model has them
                state[f"{name}.weight"] = layer.parametrizations.weight.original.detach().clone()
            atomic_torch_save(Path(self.cfg.root) / "rewind.pt", state)

    def on_epoch_end(self, trainer: Any) -> None:
        """After the last epoch: the next level's mask (remove ``rate`` of the kept weights by magnitude)."""
        if trainer.epoch < trainer.cfg.epochs:
            return
        trained = [layer.parametrizations.weight.original.detach().abs() for _, layer in self.layers]
        current = [fm.mask.bool() for _, layer in self.layers for fm in layer.parametrizations.weight
                   if isinstance(fm, FixedMask)]
        remaining = sum(int(m.sum()) for m in current)
        keep = num_kept(remaining, self.cfg.rate)
        scores = [torch.where(m, w, torch.full_like(w, -1.0)) for w, m in zip(trained, current, strict=True)]
        flat = topk_mask(torch.cat([s.reshape(-1) for s in scores]), keep)  # pruned weights (-1) never return
        nxt = [part.view_as(s) for part, s in zip(flat.split([s.numel() for s in scores]), scores, strict=True)]
        atomic_torch_save(trainer.run_dir / "next_mask.pt",
                          {f"{name}.weight": m.cpu() for (name, _), m in zip(self.layers, nxt, strict=True)})

    def summary(self) -> dict[str, Any]:
        """The level of this stage."""
        return {"imp_level": self.cfg.level}
