"""``pruner=snip``: connection sensitivity (Lee, Ajanthan & Torr, ICLR 2019, Eq. 6).

Score ``|dL/dm|``, the gradient with respect to the mask of the mean cross-entropy, summed over
``data_batches`` training batches (Synaptic-Flow ``Pruners/pruners.py::SNIP``, which sets
``mask.requires_grad`` and scores ``|mask.grad|``; its normalisation by the global sum does not change the
ranking and is skipped). With ``W_eff = W * m``, ``dL/dm = dL/dW_eff * W``: at ``m = 1`` (one-shot SNIP)
this is ``|g * W|`` with ``g = dL/dW``; in later rounds of iterative SNIP the pruned weights keep non-zero
scores (``W`` is their unmasked value), so they can come back, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ticketlab.pruners.base import PruneContext, register_pruner
from ticketlab.pruners.score_based import ScorePruner, ScorePrunerConfig
from ticketlab.sparsity.masks import masked_tensors


@dataclass
class SnipConfig(ScorePrunerConfig):
    """``pruner=snip`` (needs ``data_batches`` >= 1)."""

    name: str = "snip"
    data_batches: int = 1


@register_pruner("snip", SnipConfig)
class Snip(ScorePruner):
    """SNIP."""

    needs_data = True

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """``|sum_batches dL/dm|`` at the current masks (shape of each weight)."""
        by_tensor = {id(mt.original): mt.mask.mask for mt in masked_tensors(model)}
        masks = [by_tensor[id(w)] for w in weights]
        try:
            for m in masks:
                m.requires_grad_(True)
                m.grad = None
            for x, y in self.batches(ctx):
                nn.functional.cross_entropy(model(x), y).backward()
            return [m.grad.detach().abs().to(w.dtype) for m, w in zip(masks, weights, strict=True)]
        finally:
            for m in masks:
                m.requires_grad_(False)
                m.grad = None
