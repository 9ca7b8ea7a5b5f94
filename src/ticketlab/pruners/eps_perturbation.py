"""``pruner=eps_perturbation``: strong lottery tickets with epsilon-perturbation (Xiong, Liao &
Kyrillidis, AISTATS 2023, arXiv 2210.16589).

Phase A trains the dense weights of every prunable layer with projected SGD inside an
epsilon-ball around their initialization ``W0``; phase B runs edge-popup (all of its options) on
the perturbed weights, which are then frozen. No public code exists; the protocol follows
the paper's abstract (Xiong et al., projected SGD inside an epsilon-ball, then edge-popup):

* ``norm=linf``: elementwise box ``|W - W0| <= eps * c`` with ``c`` = 1 (``eps_scale=absolute``),
  the layer's init std (``init_std``) or ``|W0|`` elementwise (``relative``);
* ``norm=l2``: per-layer ball ``||W - W0||_2 <= r`` with ``r`` = ``eps`` (absolute),
  ``eps * std * sqrt(n)`` (init_std: the same per-entry size as the box) or ``eps * ||W0||``
  (relative); projection ``W0 + (W - W0) * min(1, r / ||W - W0||)``.

Phase A lasts ``phase_a_epochs`` epochs, or ``phase_a_steps`` optimizer steps when that is > 0,
before (and in addition to) ``trainer.epochs`` of phase B, with its own SGD (``phase_a_lr``,
momentum 0.9, no weight decay). It is a :class:`~ticketlab.pruners.phases.Phase` named ``perturb``, run by
the training loop like any training (checkpoints, signals, the non-finite check), through the
score masks held at density 1 (an exact identity: ``W * 1``). ``perturbation=random`` is the
control: the same per-layer perturbation size (l2 norm of the projected-SGD result) in a
uniformly random direction, projected onto the same set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import check_choice, check_range
from ticketlab.init.weights import layer_generator, weight_std
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.edge_popup import EdgePopup, EdgePopupConfig
from ticketlab.pruners.phases import Phase, TrainState
from ticketlab.sparsity.masks import prunable_layers, score_groups, underlying


@dataclass
class EpsPerturbationConfig(EdgePopupConfig):
    """``pruner=eps_perturbation``.

    Attributes:
        eps: perturbation size (>= 0; 0 reproduces edge-popup after a wasted phase A).
        norm: ``linf`` or ``l2``.
        eps_scale: ``absolute``, ``init_std`` or ``relative`` (see the module docstring).
        phase_a_epochs: epochs of projected SGD (used when ``phase_a_steps`` is 0).
        phase_a_steps: optimizer steps of projected SGD (> 0 overrides ``phase_a_epochs``).
        phase_a_lr: learning rate of phase A.
        perturbation: ``sgd`` (the method) or ``random`` (the control).
    """

    name: str = "eps_perturbation"
    eps: float = 0.1
    norm: str = "linf"
    eps_scale: str = "init_std"
    phase_a_epochs: int = 1
    phase_a_steps: int = 0
    phase_a_lr: float = 0.01
    perturbation: str = "sgd"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.eps", self.eps, 0.0, float("inf"))
        check_choice("pruner.norm", self.norm, ("linf", "l2"))
        check_choice("pruner.eps_scale", self.eps_scale, ("absolute", "init_std", "relative"))
        check_range("pruner.phase_a_epochs", self.phase_a_epochs, 0, float("inf"))
        check_range("pruner.phase_a_steps", self.phase_a_steps, 0, float("inf"))
        check_range("pruner.phase_a_lr", self.phase_a_lr, 0.0, float("inf"), lo_open=True)
        check_choice("pruner.perturbation", self.perturbation, ("sgd", "random"))


def project(w: torch.Tensor, w0: torch.Tensor, eps: float, norm: str, scale: str, std: float) -> torch.Tensor:
    """Projection of ``w`` onto the epsilon-set around ``w0`` (same shape as ``w``).

    Args:
        w, w0: current and initial weights (same shape).
        eps: size; norm: ``linf``/``l2``; scale: ``absolute``/``init_std``/``relative``.
        std: the layer's init std (for ``init_std``).
    """
    if norm == "linf":
        c = {"absolute": 1.0, "init_std": std}.get(scale)
        bound = eps * (w0.abs() if scale == "relative" else torch.full_like(w0, c))
        return torch.maximum(torch.minimum(w, w0 + bound), w0 - bound)
    radius = {"absolute": eps, "init_std": eps * std * math.sqrt(w0.numel()),
              "relative": eps * float(w0.norm())}[scale]
    delta = w - w0
    n = float(delta.norm())
    return w0 + delta * min(1.0, radius / n) if n > 0 else w.clone()


@register_pruner("eps_perturbation", EpsPerturbationConfig)
class EpsPerturbation(EdgePopup):
    """Projected-SGD perturbation of the random weights (phase A), then edge-popup (phase B)."""

    cfg: EpsPerturbationConfig

    def __init__(self, cfg: EpsPerturbationConfig) -> None:
        super().__init__(cfg)
        self.phase = "A"
        self.perturbation_stats: dict[str, dict[str, float]] = {}
        self.phase_a_steps_done = 0

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Remember ``W0`` and each layer's init std, then set up edge-popup (scores, frozen weights)."""
        layers = prunable_layers(model)
        densities = self.densities(model)
        self.stds = {name: weight_std(tuple(layer.weight.shape), ctx.init, densities.get(name, 1.0))
                     for name, layer in layers}
        self.w0 = {name: layer.weight.detach().clone() for name, layer in layers}
        self.seed = ctx.seed
        super().attach(model, ctx)
        self.layers = prunable_layers(model)

    def phases(self, ctx: PruneContext) -> list[Phase]:
        """Phase A (projected SGD), unless ``eps`` is 0."""
        if self.cfg.eps <= 0:
            return []
        return [_ProjectedSGD(self, ctx)]

    def originals(self) -> list[tuple[str, torch.Tensor]]:
        """``(layer name, unmasked weight)`` of every prunable layer."""
        return [(name, underlying(layer, "weight")) for name, layer in self.layers]

    @torch.no_grad()
    def project_all(self) -> None:
        """Project every prunable weight onto its epsilon-set around ``W0``."""
        for name, w in self.originals():
            w.copy_(project(w, self.w0[name], self.cfg.eps, self.cfg.norm, self.cfg.eps_scale, self.stds[name]))

    def begin_main(self, state: TrainState, resumed: bool) -> None:
        """Phase B: (fresh) the random control and the perturbation record; freeze the weights, train the scores."""
        if not resumed:
            with torch.no_grad():
                if self.cfg.perturbation == "random":
                    for i, (name, w) in enumerate(self.originals()):
                        size = float((w - self.w0[name]).norm())
                        direction = torch.randn(tuple(w.shape), generator=layer_generator(self.seed, i, "eps"))
                        direction = direction.to(w.device) / direction.norm()
                        w.copy_(project(self.w0[name] + size * direction, self.w0[name], self.cfg.eps, self.cfg.norm,
                                        self.cfg.eps_scale, self.stds[name]))
                for name, w in self.originals():
                    delta = w - self.w0[name]
                    self.perturbation_stats[name] = {
                        "linf": float(delta.abs().max()),
                        "l2": float(delta.norm()),
                        "l2_relative": float(delta.norm() / self.w0[name].norm()),
                    }
        self.phase = "B"
        for _, w in self.originals():
            w.requires_grad_(False)
        for m in self.masks:
            m.scores.requires_grad_(True)
        for unit in score_groups(self.masks):
            unit.set_sparsity(self.current_sparsity())

    def state_dict(self) -> dict[str, Any]:
        """Edge-popup state plus the phase and the perturbation record."""
        return {**super().state_dict(), "phase": self.phase, "phase_a_steps": self.phase_a_steps_done,
                "perturbation_stats": self.perturbation_stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.phase, self.phase_a_steps_done = state["phase"], state["phase_a_steps"]
        self.perturbation_stats = state["perturbation_stats"]

    def summary(self) -> dict[str, Any]:
        """Phase-A steps and the per-layer perturbation sizes."""
        return {**super().summary(), "phase_a_steps": self.phase_a_steps_done,
                "perturbation": self.perturbation_stats}


class _ProjectedSGD(Phase):
    """Phase A: SGD (momentum 0.9) on the prunable weights, each step projected onto the epsilon-set."""

    name = "perturb"

    def __init__(self, pruner: EpsPerturbation, ctx: PruneContext) -> None:
        self.pruner = pruner
        steps = pruner.cfg.phase_a_steps
        if steps > 0:
            per_epoch = max(ctx.batches_per_epoch or 1, 1)
            self.epochs, self.max_steps = math.ceil(steps / per_epoch), steps
        else:
            self.epochs = pruner.cfg.phase_a_epochs

    def begin(self, state: TrainState, resumed: bool) -> torch.optim.Optimizer:
        """Score masks at density 1 with frozen scores; the weights train."""
        p = self.pruner
        p.phase = "A"
        for unit in score_groups(p.masks):
            unit.set_sparsity(0.0)
        for m in p.masks:
            m.scores.requires_grad_(False)
        weights = [w for _, w in p.originals()]
        for w in weights:
            w.requires_grad_(True)
        return torch.optim.SGD(weights, lr=p.cfg.phase_a_lr, momentum=0.9)

    def on_step_end(self, state: TrainState) -> None:
        """Project, count the step."""
        self.pruner.project_all()
        self.pruner.phase_a_steps_done += 1
