"""``pruner=grasp``: gradient signal preservation (Wang, Zhang & Grosse, ICLR 2020, Eq. 8).

``g = sum_batches dL_T/dW`` (no graph) with ``L_T`` the cross-entropy of ``logits / T``, ``T = 200``;
then ``Hg`` by backpropagating ``g . dL_T/dW`` per batch; score ``W * Hg``. The paper removes the
weights with the largest ``-W * Hg``, i.e. keeps the largest ``W * Hg`` -- Synaptic-Flow's
(current) ``GraSP`` rule; its earlier code used ``|W * Hg|`` (Wang et al.'s
alecwangcq/GraSP). ``sign=abs`` reproduces that variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ticketlab.errors import check_choice, check_range
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.score_based import ScorePruner, ScorePrunerConfig


@dataclass
class GraspConfig(ScorePrunerConfig):
    """``pruner=grasp`` (needs ``data_batches`` >= 1).

    Attributes:
        temperature: ``T`` of the softened cross-entropy (200 in the paper and reference).
        sign: ``paper`` (keep the largest ``W * Hg``) or ``abs`` (keep the largest ``|W * Hg|``).
    """

    name: str = "grasp"
    data_batches: int = 1
    temperature: float = 200.0
    sign: str = "paper"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("pruner.sign", self.sign, ("paper", "abs"))
        check_range("pruner.temperature", self.temperature, 0.0, float("inf"), lo_open=True)


@register_pruner("grasp", GraspConfig)
class Grasp(ScorePruner):
    """GraSP."""

    cfg: GraspConfig
    needs_data = True

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """``W * (H g)`` (or its absolute value), shape of each weight."""
        for w in weights:
            w.requires_grad_(True)
        t = self.cfg.temperature
        batches = list(self.batches(ctx))
        g = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            grads = torch.autograd.grad(nn.functional.cross_entropy(model(x) / t, y), weights)
            for acc, gr in zip(g, grads, strict=True):
                acc += gr
        hg = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            grads = torch.autograd.grad(nn.functional.cross_entropy(model(x) / t, y), weights, create_graph=True)
            z = sum((gr * gs).sum() for gr, gs in zip(grads, g, strict=True))
            for acc, h in zip(hg, torch.autograd.grad(z, weights), strict=True):
                acc += h
        scores = [(w * h).detach() for w, h in zip(weights, hg, strict=True)]
        return [s.abs() for s in scores] if self.cfg.sign == "abs" else scores
