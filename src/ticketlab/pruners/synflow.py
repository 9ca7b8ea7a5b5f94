"""``pruner=synflow``: iterative synaptic flow pruning (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020,
Algorithm 1; ganguli-lab/Synaptic-Flow ``Pruners/pruners.py::SynFlow``).

Data-free: every parameter and buffer is replaced by its absolute value, one all-ones input of the
data's shape goes through the (masked) network in eval mode, ``R = sum(output)``, and the score is
``|W * dR/dW|``; signs are restored afterwards. 100 rounds with the exponential schedule by
default; ``double=true`` scores in float64 (deep or very sparse networks under/overflow in
float32, Synaptic-Flow issue #12).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import PruneContext, register_pruner
from .pai import ScorePruner, ScorePrunerConfig


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

    def _set_bn_mode(self, model: nn.Module) -> None:
        model.eval()  # SynFlow always scores in eval mode

    @torch.no_grad()
    def _abs_state(self, model: nn.Module) -> dict[str, Tensor]:
        signs = {}
        for name, t in model.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                signs[name] = torch.sign(t.data)
                t.data.abs_()
        return signs

    @torch.no_grad()
    def _restore(self, model: nn.Module, signs: dict[str, Tensor]) -> None:
        for name, t in model.state_dict(keep_vars=True).items():
            if name in signs:
                t.data.mul_(signs[name])

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """``|W * dR/dW|`` of the absolute-valued network on an all-ones input (shape of each weight)."""
        shape = ctx.data.input_shape if ctx.data is not None else None
        if shape is None:
            raise RuntimeError("synflow needs the input shape (the data bundle)")
        original_dtype = weights[0].dtype
        signs = self._abs_state(model)
        dtype = torch.float64 if self.cfg.double else original_dtype
        model.to(dtype)
        try:
            for w in weights:
                w.requires_grad_(True)
                w.grad = None
            x = torch.ones((1, *shape), dtype=dtype, device=ctx.device)
            model(x).sum().backward()
            scores = [(w.grad * w).detach().abs().to(original_dtype) for w in weights]
        finally:
            model.to(original_dtype)
            self._restore(model, signs)
        return scores
