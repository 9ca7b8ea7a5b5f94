"""``pruner=synflow``: iterative synaptic flow pruning (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020,
Algorithm 1; ganguli-lab/Synaptic-Flow ``Pruners/pruners.py::SynFlow``).

Data-free: every parameter and buffer is replaced by its absolute value, one all-ones input of the
data's shape goes through the (masked) network in eval mode, ``R = sum(output)``, and the score is
``|W * dR/dW|``; signs are restored afterwards. 100 rounds with the exponential schedule by
default; ``double=true`` scores in float64 (deep or very sparse networks under/overflow in
float32, Synaptic-Flow issue #12).

For the rounds the masks are folded into the weights (``W <- |W| * m``, the masks' parametrizations pass
the weight through, :attr:`ticketlab.sparsity.masks.FixedMask.folded`): the forward sees the same values, and at the
kept entries ``dR/dW`` is the same, so the masks are too, without two elementwise products over every masked
weight per round. The weights' values are kept aside and put back at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ticketlab.errors import NonFiniteError
from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.score_based import ScorePruner, ScorePrunerConfig
from ticketlab.sparsity import kernels


@dataclass
class SynflowConfig(ScorePrunerConfig):
    """``pruner=synflow``. ``double``: score in float64."""

    name: str = "synflow"
    iterations: int = 100
    double: bool = False


@register_pruner("synflow", SynflowConfig)
class Synflow(ScorePruner):
    """SynFlow."""

    cfg: SynflowConfig

    zero_outside_mask = True  # dR/dW = dR/dW_eff * m is exactly 0 where m = 0

    #: Score through the weights with the masks folded in (see the module docstring); ``False`` scores through
    #: ``W * m`` as written in the paper (the same masks, slower).
    fold_masks = True

    def _set_bn_mode(self, model: nn.Module) -> None:
        model.eval()  # SynFlow always scores in eval mode

    @staticmethod
    def _state(model: nn.Module) -> dict[str, Tensor]:
        """Floating-point parameters and buffers, mask buffers excepted (they change between rounds)."""
        return {name: t for name, t in model.state_dict(keep_vars=True).items()
                if t.is_floating_point() and not (".parametrizations." in name and name.endswith(".mask"))}

    @torch.no_grad()
    def begin_scoring(self, model: nn.Module, ctx: PruneContext) -> None:
        """Replace every state entry by its absolute value (signs kept), once for all rounds; float64 if asked;
        with :attr:`fold_masks`, keep the masked weights' values aside and let the masks pass them through."""
        if ctx.data is None or ctx.data.input_shape is None:
            raise RuntimeError("synflow needs the input shape (the data bundle)")
        self._signs = {}
        for name, t in self._state(model).items():
            self._signs[name] = torch.signbit(t.data)
            t.data.abs_()
        self._unfolded = [w.detach().clone() for w in self.weights] if self.fold_masks else []
        self._folded_at = [-1] * len(self._unfolded)  # the mask version folded into each weight (-1: none yet)
        for fm in self.masks:
            fm.folded = self.fold_masks
        self._dtype = next(model.parameters()).dtype
        if self.cfg.double:
            model.to(torch.float64)

    @torch.no_grad()
    def end_scoring(self, model: nn.Module) -> None:
        """Restore the masks' products, the dtype, the masked weights' values and the signs."""
        for fm in self.masks:
            fm.folded = False
        model.to(self._dtype)
        for w, kept_aside in zip(self.weights, self._unfolded, strict=False):
            w.copy_(kept_aside)
        self._unfolded = []
        for name, t in self._state(model).items():
            if name in self._signs:
                t.data[self._signs[name]] *= -1
        self._signs = {}

    @torch.no_grad()
    def _fold(self) -> None:
        """``W <- |W| * m`` for every masked weight whose mask changed since it was folded in (the first
        round, or a round that scored every entry); the kernel's and :meth:`_apply_kept`'s rounds keep it."""
        if not self._unfolded:
            return
        for i, (fm, w, kept_aside) in enumerate(zip(self.masks, self.weights, self._unfolded, strict=True)):
            if self._folded_at[i] != fm.mask._version:
                torch.mul(kept_aside, fm.mask, out=w)
                self._folded_at[i] = fm.mask._version

    def _note_folded(self) -> None:
        """The masks and weights were zeroed together: the folded weights are current."""
        if self._unfolded:
            self._folded_at = [fm.mask._version for fm in self.masks]

    def _backward(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> None:
        dtype = torch.float64 if self.cfg.double else self._dtype
        self._fold()
        for w in weights:
            w.requires_grad_(True)
            w.grad = None
        model(torch.ones((1, *ctx.data.input_shape), dtype=dtype, device=ctx.device)).sum().backward()

    def kept_round(self, model: nn.Module, ctx: PruneContext, kept: list[Tensor], total: int) -> list[Tensor] | None:
        """One round among the kept entries; on the CPU the fused kernel
        (:func:`ticketlab.sparsity.kernels.shrink_kept`) scores, selects and zeroes the dropped entries in one
        call, with the same result as the torch path.

        Raises:
            NonFiniteError: NaN scores.
        """
        self._backward(model, self.weights, ctx)
        folded = bool(self._unfolded)
        with torch.no_grad():
            r = kernels.shrink_kept([w.detach() for w in self.weights], [w.grad for w in self.weights], kept,
                                    [fm.mask.view(-1) for fm in self.masks], total, zero_weights=folded)
        if r is not None and r[0] == 0:
            self._note_folded()
            return r[1]
        if r is not None and r[0] == 1:
            return None
        if r is not None and r[0] == 2:
            raise NonFiniteError("scores", "SynFlow scores hold NaN, which has no rank (try pruner.double=true)")
        new = self._apply_kept(self._kept_scores(self.weights, kept), kept, total, zero_weights=folded)  # torch ops
        if new is not None:
            self._note_folded()
        return new

    def score_kept(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext,
                   kept: list[Tensor]) -> list[Tensor]:
        """``|W * dR/dW|`` at the kept entries only (1-D per tensor, in the order of ``kept``)."""
        self._backward(model, weights, ctx)
        return self._kept_scores(weights, kept)

    def _kept_scores(self, weights: list[Tensor], kept: list[Tensor]) -> list[Tensor]:
        """``|W * W.grad|`` at the ``kept`` flat indices (the backward has run), in the scoring dtype."""
        return [(w.grad.reshape(-1)[i] * w.detach().reshape(-1)[i]).abs_().to(self._dtype)
                for w, i in zip(weights, kept, strict=True)]

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """``|W * dR/dW|`` of the absolute-valued network on an all-ones input (shape of each weight).

        Between :meth:`begin_scoring` and :meth:`end_scoring` (as :meth:`initialize` calls it) the network is
        already absolute-valued; a call on its own does both.
        """
        if not getattr(self, "_signs", None):
            self.begin_scoring(model, ctx)
            try:
                return self.score(model, weights, ctx)
            finally:
                self.end_scoring(model)
        self._backward(model, weights, ctx)
        return [(w.grad * w).detach().abs_().to(self._dtype) for w in weights]
