"""``pruner=iterand``: IteRand (Chijiwa et al., NeurIPS 2021, "Pruning Randomly Initialized Neural
Networks with Iterative Randomization", Algorithm 1; code dchiji-ntt/iterand).

Edge-popup (raw-score ranking, Kaiming-uniform ReLU-gain scores, as the reference) plus partial
re-sampling of the pruned weights: before every ``period``-th optimizer step, each weight outside
the current subnetwork (by the live scores) is redrawn from the initialization distribution with
probability ``rate``. Kept weights and scores never change.

* candidates: the weights a mask at sparsity ``sparsity * candidate_rate`` would remove from their layer,
  counted by the masks' ``kept_count`` rule (the reference's ``GetSubnet(score, sparsity * rate)``,
  ``sparse_modules.py``; ``candidate_rate = 1``: exactly the pruned weights);
* ``mode=bernoulli`` (the paper): ``W <- W`` or a fresh draw ``W'`` with probability ``rate``;
* ``mode=mix`` (the reference's ``manual`` mode): ``W <- mix_lambda * W + mix_mu * W'``. The reference
  gives no default; TicketLab's (0.9, 0.436) keep the variance, ``0.9^2 + 0.436^2 = 1``.

Timing (reference ``rerand_callback``): with ``t`` completed steps, the re-sampling happens
before step ``t + 1`` when ``(t + 1) % period == 0``. Fresh draws come from a generator owned by
the pruner (seed ``(score seed, "iterand")``), whose state is checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import check_choice, check_range
from ticketlab.init.weights import WEIGHT_INITS, layer_generator, weight_std
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.edge_popup import EdgePopup, EdgePopupConfig
from ticketlab.pruners.phases import TrainState
from ticketlab.sparsity.masks import masked_tensors
from ticketlab.sparsity.selection import KEPT_COUNTS, topk_mask


@dataclass
class IteRandConfig(EdgePopupConfig):
    """``pruner=iterand``.

    Attributes:
        period: K_per, optimizer steps between re-samplings (> 0; paper: 300 on CIFAR).
        rate: r, probability that a candidate weight is redrawn, in [0, 1] (paper: 0.1).
        candidate_rate: rho, fraction of the pruned weights (lowest keys) eligible, in (0, 1].
        mode: ``bernoulli`` (paper) or ``mix``.
        mix_lambda, mix_mu: the ``mix`` coefficients.
    """

    name: str = "iterand"
    rank: str = "raw"
    score_init: str = "kaiming_uniform"
    period: int = 300
    rate: float = 0.1
    candidate_rate: float = 1.0
    mode: str = "bernoulli"
    mix_lambda: float = 0.9
    mix_mu: float = 0.436

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.period", self.period, 1, float("inf"))
        check_range("pruner.rate", self.rate, 0.0, 1.0)
        check_range("pruner.candidate_rate", self.candidate_rate, 0.0, 1.0, lo_open=True)
        check_choice("pruner.mode", self.mode, ("bernoulli", "mix"))
        check_range("pruner.mix_lambda", self.mix_lambda, 0.0, 1.0)
        check_range("pruner.mix_mu", self.mix_mu, 0.0, 1.0)


@register_pruner("iterand", IteRandConfig)
class IteRand(EdgePopup):
    """IteRand: edge-popup with periodic partial re-randomization of the pruned weights."""

    cfg: IteRandConfig

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Edge-popup set-up; remember each layer's init distribution for the redraws."""
        super().attach(model, ctx)
        self.sample = WEIGHT_INITS.get(ctx.init.name)
        self.stds = {mt.name: weight_std(tuple(mt.original.shape), ctx.init, self.cfg.density)
                     for mt in masked_tensors(model) if mt.tensor_name == "weight"}
        self.gen = layer_generator(ctx.score_seed, -1, "iterand")
        self.count = KEPT_COUNTS[self.cfg.kept_count]  # the candidates' count follows the masks' rule
        self.rerandomizations = 0

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Warn when ``mode=mix`` changes the variance of redrawn weights (it compounds over redraws)."""
        warnings = super().check(model, ctx)
        gain = self.cfg.mix_lambda ** 2 + self.cfg.mix_mu ** 2
        if self.cfg.mode == "mix" and abs(gain - 1.0) > 0.05:
            warnings.append(f"pruner.mix_lambda={self.cfg.mix_lambda} and pruner.mix_mu={self.cfg.mix_mu} multiply "
                            f"the variance of a redrawn weight by {gain:.3g} at every re-randomization, compounding "
                            "over the run; mix_lambda^2 + mix_mu^2 = 1 keeps it.")
        return warnings

    def on_step_end(self, state: TrainState) -> None:
        """Clamp (if asked), then re-randomize when the next step is a multiple of ``period``."""
        super().on_step_end(state)
        if (state.step + 1) % self.cfg.period == 0:
            self.rerandomize(state.model)

    @torch.no_grad()
    def rerandomize(self, model: nn.Module) -> None:
        """Redraw candidate pruned weights of every masked layer (see the module docstring)."""
        for mt in masked_tensors(model):
            if mt.tensor_name != "weight":
                continue
            w = mt.original
            n = w.numel()
            if self.cfg.candidate_rate == 1.0:
                candidates = mt.mask.current_mask() == 0
            else:
                candidates = ~topk_mask(mt.mask.key(), self.count(n, self.cfg.sparsity * self.cfg.candidate_rate))
            fresh = self.sample(tuple(w.shape), self.stds[mt.name], self.gen).to(w.device, w.dtype)
            if self.cfg.mode == "bernoulli":
                redraw = (torch.rand(tuple(w.shape), generator=self.gen) < self.cfg.rate).to(w.device)
                w.copy_(torch.where(candidates & redraw, fresh, w))
            else:
                w.copy_(torch.where(candidates, self.cfg.mix_lambda * w + self.cfg.mix_mu * fresh, w))
        self.rerandomizations += 1

    def state_dict(self) -> dict[str, Any]:
        """Edge-popup state plus the redraw generator and counter."""
        return {**super().state_dict(), "gen": self.gen.get_state(), "rerandomizations": self.rerandomizations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.gen.set_state(state["gen"])
        self.rerandomizations = state["rerandomizations"]

    def summary(self) -> dict[str, Any]:
        """How many re-randomizations happened."""
        return {**super().summary(), "rerandomizations": self.rerandomizations}
