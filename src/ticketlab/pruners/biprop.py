"""``pruner=biprop``: multi-prize tickets (Diffenderfer & Kailkhura, ICLR 2021).

Edge-popup whose kept weights are binarised: ``W_eff = alpha * sign(W) * m`` with ``alpha`` the
mean ``|W|`` of the layer's kept weights (MPT-1/32; :class:`ticketlab.masks.BipropMask`). With
``binary_activations`` every ReLU but the last becomes ``sign(x)`` with the Bi-Real-Net surrogate
gradient ``2 - 2|x|`` on ``|x| < 1`` (MPT-1/1; chrundle/biprop ``models/frankle.py`` ``BiRealAct``).
TicketLab keeps each model's layer order (conv -> ReLU -> pool); the reference MPT-1/1 models put
the sign after pool and BN, so use a model with ``batch_norm=true`` for MPT-1/1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..masks import BipropMask
from .base import PruneContext, register_pruner
from .edge_popup import EdgePopup, EdgePopupConfig


class _BiRealSign(torch.autograd.Function):
    """``sign(x)`` forward; Bi-Real-Net surrogate ``(2 - 2|x|) 1[|x| < 1]`` backward (Liu et al. 2018, Eq. 6)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp(min=0)


class BinaryActivation(nn.Module):
    """Binary activation ``sign(x)`` (any shape) with the Bi-Real-Net surrogate gradient."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return _BiRealSign.apply(x)


def binarize_activations(model: nn.Module) -> int:
    """Replace every ``nn.ReLU`` of ``model`` except the last one by :class:`BinaryActivation`.

    The last ReLU (before the classifier) stays, as in biprop's models. Returns how many were
    replaced.
    """
    relus = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    for name, _ in relus[:-1]:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, BinaryActivation())
    return max(len(relus) - 1, 0)


@dataclass
class BipropConfig(EdgePopupConfig):
    """``pruner=biprop``: every edge-popup option, plus ``binary_activations`` (MPT-1/1)."""

    name: str = "biprop"
    binary_activations: bool = False


@register_pruner("biprop", BipropConfig)
class Biprop(EdgePopup):
    """Biprop: edge-popup with binarised kept weights (and optionally binary activations)."""

    cfg: BipropConfig
    mask_class = BipropMask

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Edge-popup set-up with :class:`BipropMask`; binarise activations for MPT-1/1."""
        super().attach(model, ctx)
        if self.cfg.binary_activations:
            binarize_activations(model)

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Warn when constant-magnitude weights make biprop identical to edge-popup."""
        warnings = super().check(model, ctx)
        if ctx.init.name in ("signed_constant", "unsigned_constant"):
            warnings.append(f"pruner=biprop with init={ctx.init.name}: every kept weight of a layer already has the "
                            "same magnitude, so alpha * sign(W) = W and biprop is edge-popup; the paper uses "
                            "init=kaiming_normal init.scale_fan=true.")
        return warnings
