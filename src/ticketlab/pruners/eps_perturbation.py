"""``pruner=eps_perturbation``: strong lottery tickets with epsilon-perturbation (Xiong, Liao &
Kyrillidis, AISTATS 2023, arXiv 2210.16589).

Phase A trains the dense weights of every prunable layer with projected SGD inside an
epsilon-ball around their initialization ``W0``; phase B runs edge-popup (all of its options) on
the perturbed weights, which are then frozen. No public code exists; the protocol follows
``shared/docs/strong-tickets.md`` Sec. 6 (the paper's projected-SGD claim, abstract):

* ``norm=linf``: elementwise box ``|W - W0| <= eps * c`` with ``c`` = 1 (``eps_scale=absolute``),
  the layer's init std (``init_std``) or ``|W0|`` elementwise (``relative``);
* ``norm=l2``: per-layer ball ``||W - W0||_2 <= r`` with ``r`` = ``eps`` (absolute),
  ``eps * std * sqrt(n)`` (init_std: the same per-entry size as the box) or ``eps * ||W0||``
  (relative); projection ``W0 + (W - W0) * min(1, r / ||W - W0||)``.

Phase A lasts ``phase_a_epochs`` epochs, or ``phase_a_steps`` optimizer steps when that is > 0,
before (and in addition to) ``trainer.epochs`` of phase B, with its own SGD (``phase_a_lr``,
momentum 0.9, no weight decay). ``perturbation=random`` is the control: the same per-layer
perturbation size (l2 norm of the projected-SGD result) in a uniformly random direction,
projected onto the same set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, check_choice, check_range
from ..init import layer_generator, weight_std
from ..masks import prunable_layers
from .base import PruneContext, register_pruner
from .edge_popup import EdgePopup, EdgePopupConfig


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

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Run phase A on the prunable weights, then set up edge-popup on the perturbed weights.

        Raises:
            ConfigError: phase A needs training data.
        """
        if ctx.data is None:
            raise ConfigError("pruner=eps_perturbation needs training data for its projected-SGD phase.")
        layers = prunable_layers(model)
        densities = self.densities(model)
        stds = {name: weight_std(tuple(layer.weight.shape), ctx.init, densities.get(name, 1.0))
                for name, layer in layers}
        w0 = {name: layer.weight.detach().clone() for name, layer in layers}
        for p in model.parameters():
            p.requires_grad_(False)
        weights = [layer.weight for _, layer in layers]
        for w in weights:
            w.requires_grad_(True)
        if self.cfg.eps > 0:
            self._projected_sgd(model, ctx, layers, w0, stds, weights)
        with torch.no_grad():
            if self.cfg.perturbation == "random":
                for i, (name, layer) in enumerate(layers):
                    size = float((layer.weight - w0[name]).norm())
                    direction = torch.randn(tuple(w0[name].shape), generator=layer_generator(ctx.seed, i, "eps"))
                    direction = direction.to(w0[name].device) / direction.norm()
                    layer.weight.copy_(project(w0[name] + size * direction, w0[name], self.cfg.eps, self.cfg.norm,
                                               self.cfg.eps_scale, stds[name]))
            for name, layer in layers:
                delta = layer.weight - w0[name]
                self.perturbation_stats[name] = {
                    "linf": float(delta.abs().max()),
                    "l2": float(delta.norm()),
                    "l2_relative": float(delta.norm() / w0[name].norm()),
                }
        self.phase = "B"
        super().prepare(model, ctx)  # freezes everything, attaches score masks

    def _projected_sgd(self, model, ctx, layers, w0, stds, weights) -> None:
        opt = torch.optim.SGD(weights, lr=self.cfg.phase_a_lr, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        limit = self.cfg.phase_a_steps
        epochs = self.cfg.phase_a_epochs if limit == 0 else math.inf
        epoch = 0
        while epoch < epochs and (limit == 0 or self.phase_a_steps_done < limit):
            for x, y in ctx.data.train:
                x, y = x.to(ctx.device), y.to(ctx.device)
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
                with torch.no_grad():
                    for name, layer in layers:
                        layer.weight.copy_(project(layer.weight, w0[name], self.cfg.eps, self.cfg.norm,
                                                   self.cfg.eps_scale, stds[name]))
                self.phase_a_steps_done += 1
                if limit and self.phase_a_steps_done >= limit:
                    break
            epoch += 1

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
