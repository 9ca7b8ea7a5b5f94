"""``pruner=kstarts``: K random starts, keep the fittest (Haroon 2022, "What to Prune and What Not to
Prune at Initialization", arXiv 2209.02201), optionally combined with dissipating gradients.

**No public code exists and only the abstract is known**; this implements a specification written from
the abstract, every open question a named option:

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

The selection epochs come before, and in addition to, ``trainer.epochs``. Each candidate is a
:class:`~ticketlab.pruners.phases.Phase` (``candidate_0`` ...) run by the training loop, so a run stopped
during selection continues inside the candidate it was training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import check_choice, check_range
from ticketlab.init.weights import layer_generator
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.dissipating_gradients import Dissipating, DissipatingConfig
from ticketlab.pruners.phases import Phase, TrainState
from ticketlab.pruners.score_based import allocate
from ticketlab.sparsity.selection import sparsity_of


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
            check_range("pruner.start_density", self.start_density, self.density, 1.0)


@register_pruner("kstarts", KStartsConfig)
class KStarts(Dissipating):
    """K-starts (and, with ``dissipating``, K-starts + dissipating gradients)."""

    cfg: KStartsConfig

    def candidate_density(self) -> float:
        """Density of the candidate masks."""
        target = self.cfg.density
        if not self.cfg.dissipating:
            return target
        return self.cfg.start_density if self.cfg.start_density is not None else min(1.0, 2 * target)

    def __init__(self, cfg: KStartsConfig) -> None:
        super().__init__(cfg)
        self.theta0_init: dict[str, torch.Tensor] | None = None  # the shared initialization
        self.order: torch.Tensor | None = None  # data-generator state every candidate starts from
        self.results: list[dict[str, Any]] = []
        self.grad_accum: torch.Tensor | None = None
        self.fitness: list[dict[str, float]] = []
        self.winner: int | None = None

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """All-ones masks (as dissipating gradients); remember the seed for the candidate masks."""
        super().attach(model, ctx)
        self.model, self.seed, self.data = model, ctx.seed, ctx.data

    def initialize(self, model: nn.Module, ctx: PruneContext) -> None:
        """Remember the shared initialization and the data order the candidates start from."""
        self.theta0_init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        gen = ctx.data.generator if ctx.data is not None else None
        self.order = gen.get_state() if gen is not None else None

    def phases(self, ctx: PruneContext) -> list[Phase]:
        """One training phase per candidate."""
        return [_Candidate(self, j) for j in range(self.cfg.k)]

    def candidate_masks(self, j: int) -> list[torch.Tensor]:
        """Candidate ``j``'s random mask at :meth:`candidate_density` (bool, shapes of the layers' weights)."""
        scores = [torch.rand(tuple(layer.weight.shape), generator=layer_generator(self.seed, i, f"kstart{j}"))
                  for i, (_, layer) in enumerate(self.layers)]
        scope = "layerwise" if self.cfg.mask_sampler == "layerwise_uniform" else "global"
        masks = allocate(scores, sparsity_of(self.candidate_density()), scope)
        return [m.to(w.device) for m, w in zip(masks, self.weights, strict=True)]

    def restore_order(self) -> None:
        """Put the data generator back where every candidate (and the main training) starts."""
        if self.order is not None and self.data is not None and self.data.generator is not None:
            self.data.generator.set_state(self.order)

    def begin_main(self, state: TrainState, resumed: bool) -> None:
        """(Fresh) pick the fittest candidate, load its mask and weights (or the initialization); train all."""
        if not resumed:
            self.fitness = [{"magnitude": r["magnitude"], "grad_accum": r["grad_accum"]} for r in self.results]
            best = self._select(self.results)
            self.winner = best
            winner_masks = [m.clone() for m in self.results[best]["masks"]]
            state.model.load_state_dict(self.theta0_init if self.cfg.rewind else self.results[best]["state"])
            with torch.no_grad():
                for fm, m in zip(self.masks, winner_masks, strict=True):
                    fm.mask.copy_(m)
            self.restore_order()
            self.theta0_init, self.results = None, []  # keep checkpoints small from here on
        for p in state.model.parameters():
            p.requires_grad_(True)
        super().begin_main(state, resumed)

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

    def state_dict(self) -> dict[str, Any]:
        """Dissipating state plus the selection's progress (initialization, order, candidates so far)."""
        return {**super().state_dict(), "theta0_init": self.theta0_init, "order": self.order,
                "results": self.results, "grad_accum": self.grad_accum, "fitness": self.fitness,
                "winner": self.winner}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.theta0_init, self.order, self.results = state["theta0_init"], state["order"], state["results"]
        self.grad_accum, self.fitness, self.winner = state["grad_accum"], state["fitness"], state["winner"]

    def begin_epoch(self, state: TrainState) -> None:
        """Dissipating gradients on the winner (combination only)."""
        if self.cfg.dissipating:
            super().begin_epoch(state)

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Dissipating's warning, for the combination only."""
        return super().check(model, ctx) if self.cfg.dissipating else []

    def summary(self) -> dict[str, Any]:
        """Candidates' fitness, the winner, and (combination) the density history."""
        return {**super().summary(), "kstarts_fitness": self.fitness, "kstarts_winner": self.winner}


class _Candidate(Phase):
    """Candidate ``j``: the shared initialization under its random mask, trained briefly (SGD, momentum 0.9)."""

    def __init__(self, pruner: KStarts, j: int) -> None:
        self.pruner, self.j = pruner, j
        self.name = f"candidate_{j}"
        self.epochs = pruner.cfg.selection_epochs
        self.batches_per_epoch = pruner.cfg.selection_batches

    def begin(self, state: TrainState, resumed: bool) -> torch.optim.Optimizer:
        """(Fresh) reset weights, mask and data order; everything trains."""
        p = self.pruner
        if not resumed:
            state.model.load_state_dict(p.theta0_init)
            with torch.no_grad():
                for fm, m in zip(p.masks, p.candidate_masks(self.j), strict=True):
                    fm.mask.copy_(m)
            p.restore_order()
            p.grad_accum = torch.zeros((), dtype=torch.float64, device=state.device)
        p.grad_accum = p.grad_accum.to(state.device)
        params = list(state.model.parameters())
        for q in params:
            q.requires_grad_(True)
        return torch.optim.SGD(params, lr=p.cfg.selection_lr, momentum=0.9)

    def after_backward(self, state: TrainState) -> None:
        """``G += sum |grad * m|`` (the masked weights' gradients are already ``grad * m``)."""
        with torch.no_grad():
            for w in self.pruner.weights:
                if w.grad is not None:
                    self.pruner.grad_accum += w.grad.abs().sum()

    def end(self, state: TrainState) -> None:
        """Record the candidate's mask, fitness and trained state."""
        p = self.pruner
        with torch.no_grad():
            magnitude = sum(float((w * fm.mask).abs().sum()) for w, fm in zip(p.weights, p.masks, strict=True))
        p.results.append({"masks": [fm.mask.bool().clone() for fm in p.masks], "magnitude": magnitude,
                          "grad_accum": float(p.grad_accum),
                          "state": {k: v.detach().clone() for k, v in state.model.state_dict().items()}})
