"""``pruner=kstarts``: K random starts, keep the fittest (Haroon 2022, "What to Prune and What Not to
Prune at Initialization", arXiv 2209.02201), optionally combined with dissipating gradients.

**No public code exists and only the abstract is known**; this implements the proposed spec of
``shared/docs/pruning-at-init.md`` Sec. 4, every open question a named option:

* ``k`` candidate random masks (``mask_sampler``: ``layerwise_uniform`` = the same density in every
  layer, or ``global_uniform`` = one random top-k over all weights) share one initialization;
* each candidate trains ``selection_epochs`` epochs (at most ``selection_batches`` batches each, when
  set) on the same data order (SGD, momentum 0.9, ``selection_lr``), pruned weights held at zero,
  accumulating ``G = sum_steps |grad * m|``;
* fitness: ``magnitude`` = ``sum |theta * m|`` after selection, ``grad_accum`` = ``sum G``, or
  ``both`` = the sum of the two ranks among candidates (ties: lower index);
* the winner continues training (``rewind=false``) or restarts from the shared initialization;
* ``dissipating=true`` is the combination: candidates have density ``start_density`` (default twice
  the target, at most 1) and dissipating gradients then prunes the winner down to the target during
  the first ``epochs_to_prune`` epochs (see :mod:`ticketlab.pruners.dissipating_gradients`).

The selection epochs come before, and in addition to, ``trainer.epochs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import check_choice, check_range
from ..init import layer_generator
from .base import PruneContext, register_pruner
from .dissipating_gradients import Dissipating, DissipatingConfig
from .pai import allocate


@dataclass
class KStartsConfig(DissipatingConfig):
    """``pruner=kstarts`` (open questions of the paper are options; see the module docstring)."""

    name: str = "kstarts"
    k: int = 4
    selection_epochs: int = 1
    selection_lr: float = 0.05
    selection_batches: int | None = None
    fitness: str = "both"
    mask_sampler: str = "layerwise_uniform"
    rewind: bool = False
    dissipating: bool = False
    start_density: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.k", self.k, 1, float("inf"))
        check_range("pruner.selection_epochs", self.selection_epochs, 1, float("inf"))
        check_range("pruner.selection_lr", self.selection_lr, 0.0, float("inf"), lo_open=True)
        if self.selection_batches is not None:
            check_range("pruner.selection_batches", self.selection_batches, 1, float("inf"))
        check_choice("pruner.fitness", self.fitness, ("magnitude", "grad_accum", "both"))
        check_choice("pruner.mask_sampler", self.mask_sampler, ("layerwise_uniform", "global_uniform"))
        if self.start_density is not None:
            check_range("pruner.start_density", self.start_density, 1.0 - self.sparsity, 1.0)


@register_pruner("kstarts", KStartsConfig)
class KStarts(Dissipating):
    """K-starts (and, with ``dissipating``, K-starts + dissipating gradients)."""

    cfg: KStartsConfig

    def candidate_density(self) -> float:
        """Density of the candidate masks."""
        target = 1.0 - self.cfg.sparsity
        if not self.cfg.dissipating:
            return target
        return self.cfg.start_density if self.cfg.start_density is not None else min(1.0, 2 * target)

    def start_masks(self, model: nn.Module, layers: list[tuple[str, nn.Module]], ctx: PruneContext
                    ) -> list[torch.Tensor]:
        """Train ``k`` random-mask candidates briefly and return the fittest mask (weights: the winner's)."""
        density = self.candidate_density()
        theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        gen = ctx.data.generator
        order = gen.get_state() if gen is not None else None
        results = []
        for j in range(self.cfg.k):
            model.load_state_dict(theta0)
            scores = [torch.rand(tuple(layer.weight.shape), generator=layer_generator(ctx.seed, i, f"kstart{j}"))
                      for i, (_, layer) in enumerate(layers)]
            scope = "layerwise" if self.cfg.mask_sampler == "layerwise_uniform" else "global"
            masks = [m.to(layer.weight.device) for m, (_, layer) in
                     zip(allocate(scores, density, scope), layers, strict=True)]
            if gen is not None:
                gen.set_state(order)
            grad_accum = self._train_candidate(model, layers, masks, ctx)
            magnitude = sum(float((layer.weight.detach() * m).abs().sum()) for (_, layer), m in
                            zip(layers, masks, strict=True))
            results.append({"masks": masks, "magnitude": magnitude, "grad_accum": grad_accum,
                            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}})
        self.fitness = [{"magnitude": r["magnitude"], "grad_accum": r["grad_accum"]} for r in results]
        best = self._select(results)
        self.winner = best
        model.load_state_dict(theta0 if self.cfg.rewind else results[best]["state"])
        if gen is not None:
            gen.set_state(order)
        model.train()
        return results[best]["masks"]

    def _select(self, results: list[dict[str, Any]]) -> int:
        def ranks(key: str) -> list[int]:
            order = sorted(range(len(results)), key=lambda i: (-results[i][key], i))
            out = [0] * len(results)
            for rank, i in enumerate(order):
                out[i] = rank
            return out

        if self.cfg.fitness == "both":
            total = [a + b for a, b in zip(ranks("magnitude"), ranks("grad_accum"), strict=True)]
            return min(range(len(results)), key=lambda i: (total[i], i))
        return min(range(len(results)), key=lambda i: (-results[i][self.cfg.fitness], i))

    def _train_candidate(self, model: nn.Module, layers, masks, ctx: PruneContext) -> float:
        weights = [layer.weight for _, layer in layers]
        with torch.no_grad():
            for w, m in zip(weights, masks, strict=True):
                w.mul_(m)
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=self.cfg.selection_lr, momentum=0.9)
        model.train()
        accum = 0.0
        for _ in range(self.cfg.selection_epochs):
            for b, (x, y) in enumerate(ctx.data.train):
                if self.cfg.selection_batches is not None and b >= self.cfg.selection_batches:
                    break
                x, y = x.to(ctx.device), y.to(ctx.device)
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                with torch.no_grad():
                    for w, m in zip(weights, masks, strict=True):
                        w.grad.mul_(m)
                        accum += float(w.grad.abs().sum())
                opt.step()
        return accum

    def on_epoch_end(self, trainer: Any) -> None:
        """Dissipating gradients on the winner (combination only)."""
        if self.cfg.dissipating:
            super().on_epoch_end(trainer)

    def summary(self) -> dict[str, Any]:
        """Candidates' fitness, the winner, and (combination) the density history."""
        return {**super().summary(), "kstarts_fitness": self.fitness, "kstarts_winner": self.winner}
