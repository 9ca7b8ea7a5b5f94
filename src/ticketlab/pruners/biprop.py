"""``pruner=biprop``: multi-prize tickets (Diffenderfer & Kailkhura, ICLR 2021).

Edge-popup whose kept weights are binarised: ``W_eff = alpha * sign(W) * m`` with ``alpha`` the
mean ``|W|`` of the layer's kept weights (MPT-1/32; :class:`BipropMask`). With
``binary_activations`` every ReLU but the last becomes ``sign(x)`` with the Bi-Real-Net surrogate
gradient ``2 - 2|x|`` on ``|x| < 1`` (MPT-1/1; chrundle/biprop ``models/frankle.py`` ``BiRealAct``).
TicketLab keeps each model's layer order (conv -> ReLU -> pool); the reference MPT-1/1 models put
the sign after pool and BN, so use a model with ``batch_norm=true`` for MPT-1/1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ticketlab.errors import check_range
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.edge_popup import EdgePopup, EdgePopupConfig
from ticketlab.pruners.phases import TrainState
from ticketlab.sparsity.masks import ScoreMask, score_groups
from ticketlab.sparsity.straight_through import score_gradient


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


class _BipropSTE(torch.autograd.Function):
    """Binarised masked weight ``alpha * sign(W) * m`` with the biprop straight-through gradient.

    ``alpha`` is the mean ``|W|`` over the kept entries (a scalar per tensor, no gradient).
    Backward (Diffenderfer & Kailkhura 2021, Sec. 3; chrundle/biprop ``GetQuantnet_binary``): the
    gradient reaching the mask, ``dL/dW_eff * sign(W)``, is multiplied by ``|W|``, so
    ``dL/dS = dL/dW_eff * W`` (times ``sign(S)`` for the ``|S|`` key) -- the same form as
    edge-popup. The weights receive no gradient (biprop never trains them).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, mask: Tensor, signed: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(weight, scores)
        ctx.signed = signed
        kept = mask.sum().clamp(min=1)
        alpha = (weight.abs() * mask).sum() / kept
        return alpha * torch.sign(weight) * mask

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        weight, scores = ctx.saved_tensors
        grad_s = score_gradient(grad, weight, scores, ctx.signed) if ctx.needs_input_grad[1] else None
        return None, grad_s, None, None


class BipropMask(ScoreMask):
    """Biprop (multi-prize tickets, MPT-1/32): kept weights become ``alpha * sign(W)``.

    ``W_eff = alpha * sign(W) * TopK(key(S))`` with ``alpha`` = mean ``|W|`` of the kept weights of
    this tensor, so ``W_eff`` takes values in ``{-alpha, 0, alpha}``. Gradient:
    :class:`_BipropSTE`. Source: Diffenderfer & Kailkhura, "Multi-Prize Lottery Ticket
    Hypothesis", ICLR 2021, Sec. 3 (Algorithm 1); chrundle/biprop ``utils/conv_type.py``. The
    reference divides by ``int(k * n)`` instead of the kept count; they differ by at most one.
    """

    def forward(self, weight: Tensor) -> Tensor:
        """Binarised masked weight (shape of ``weight``)."""
        mask = self.current_mask()
        return _BipropSTE.apply(weight, self.scores, mask.to(weight.dtype), self.rank == "abs")



@dataclass
class BipropConfig(EdgePopupConfig):
    """``pruner=biprop``: every edge-popup option, plus:

    Attributes:
        binary_activations: sign activations with the Bi-Real surrogate gradient (MPT-1/1).
        ramp_epochs: with ``scope=global`` and a target density <= 0.5, the density starts at 0.5 and
            falls to the target over the first ``ramp_epochs`` epochs on a cubic schedule,
            ``d_e = d + (0.5 - d) (1 - e / ramp_epochs)^3`` for 0-based epoch ``e < ramp_epochs``
            (chrundle/biprop ``main.py``, against layer collapse); 0 turns it off. Layerwise scope: unused.
    """

    name: str = "biprop"
    binary_activations: bool = False
    ramp_epochs: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.ramp_epochs", self.ramp_epochs, 0, float("inf"))


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

    @property
    def ramps(self) -> bool:
        """Whether the global density ramp applies (global scope, target density <= 0.5, no annealing)."""
        return (self.cfg.scope == "global" and self.cfg.ramp_epochs > 0 and self.cfg.density <= 0.5
                and not self.cfg.anneal_levels)

    def ramp_density(self, epoch: int) -> float:
        """Density during 0-based epoch ``epoch`` (the target from ``ramp_epochs`` on)."""
        target = self.cfg.density
        if not self.ramps or epoch >= self.cfg.ramp_epochs:
            return target
        return target + (0.5 - target) * (1.0 - epoch / self.cfg.ramp_epochs) ** 3

    def _apply_ramp(self, epoch: int) -> None:
        if self.ramps:
            for unit in score_groups(self.masks):
                unit.set_sparsity(1.0 - self.ramp_density(epoch))

    def begin_epoch(self, state: TrainState) -> None:
        """Edge-popup's epoch-start hook, then the ramp's density for 0-based epoch ``state.epoch``: the epoch
        trains and is evaluated with it (chrundle/biprop ``main.py``, density set at the top of each epoch)."""
        super().begin_epoch(state)
        self._apply_ramp(state.epoch)

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Warn when constant-magnitude weights make biprop identical to edge-popup, and when the density
        ramp does not reach the target within the run."""
        warnings = super().check(model, ctx)
        if self.ramps and ctx.epochs < self.cfg.ramp_epochs:
            warnings.append(f"pruner=biprop ramps the global density from 0.5 to {self.cfg.density:g} over "
                            f"pruner.ramp_epochs={self.cfg.ramp_epochs} epochs, longer than trainer.epochs="
                            f"{ctx.epochs}: the run ends at density {self.ramp_density(ctx.epochs - 1):.4g}; "
                            "set pruner.ramp_epochs=0 or train longer.")
        if ctx.init.name in ("signed_constant", "unsigned_constant"):
            warnings.append(f"pruner=biprop with init={ctx.init.name}: every kept weight of a layer already has the "
                            "same magnitude, so alpha * sign(W) = W and biprop is edge-popup; the paper uses "
                            "init=kaiming_normal init.scale_fan=true.")
        return warnings
