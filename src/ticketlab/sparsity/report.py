"""What the masks of a model keep: per-layer kept counts and the overall sparsity and density.

Prunable weights are the weights of every Conv/Linear layer; a layer without a mask counts as fully kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ticketlab.sparsity.masks import masked_tensors, prunable_layers


def mask_dict(model: nn.Module) -> dict[str, Tensor]:
    """Current masks as ``{"<layer>.<weight|bias>": bool tensor on CPU}`` (for saving/comparing)."""
    return {mt.name: mt.mask.current_mask().detach().bool().cpu() for mt in masked_tensors(model)}


@dataclass
class SparsityReport:
    """Measured sparsity of a model's prunable weights.

    Attributes:
        layers: ``{"<layer>.weight": {"numel", "kept", "density"}}`` for every prunable layer's
            weight (unmasked layers have density 1), plus masked biases.
        total: number of prunable weights (Conv/Linear weights; biases excluded).
        kept: how many of them the masks keep.
    """

    layers: dict[str, dict[str, float]]
    total: int
    kept: int

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept."""
        return self.kept / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights removed (1 - density)."""
        return 1.0 - self.density


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Measure per-layer densities and the overall sparsity from the masks in force.

    Prunable weights are the weights of every Conv/Linear layer; a layer without a mask counts as
    fully kept. Biases are reported per layer when masked but are not part of ``total``.
    """
    masks = {mt.name: mt.mask.current_mask() for mt in masked_tensors(model)}
    layers: dict[str, dict[str, float]] = {}
    total = kept = 0
    for lname, layer in prunable_layers(model):
        for tname in ("weight", "bias"):
            t = getattr(layer, tname, None)
            if t is None:
                continue
            name = f"{lname}.{tname}"
            if tname == "bias" and name not in masks:
                continue
            n = t.numel()
            k = int(masks[name].sum().item()) if name in masks else n
            layers[name] = {"numel": n, "kept": k, "density": k / n}
            if tname == "weight":
                total += n
                kept += k
    return SparsityReport(layers, total, kept)


__all__ = ["SparsityReport", "mask_dict", "sparsity_report"]
