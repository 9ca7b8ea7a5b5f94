"""Similarity of two binary masks, and its value for independent random masks.

Percent-same is ``1 - normalized Hamming distance`` (the fraction of positions where two masks
agree); Jaccard is ``|A and B| / |A or B|`` over kept positions. For independent random masks of
densities ``k1`` and ``k2`` the expected values are ``k1 k2 + (1 - k1)(1 - k2)`` and
``k1 k2 / (k1 + k2 - k1 k2)``, i.e. ``k^2 + (1 - k)^2`` and ``k / (2 - k)`` at equal density
(Gorbett & Whitley 2023, "Randomly Initialized Subnetworks with Iterative Weight Recycling", Sec. 5,
"mask diversity").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Similarity:
    """Similarity of two masks and its chance value.

    Attributes:
        percent_same, jaccard: measured (fractions in [0, 1]).
        chance_percent_same, chance_jaccard: expected for independent masks of the same densities.
        density_a, density_b: the two densities.
        numel: positions compared.
    """

    percent_same: float
    jaccard: float
    chance_percent_same: float
    chance_jaccard: float
    density_a: float
    density_b: float
    numel: int


def chance(k1: float, k2: float) -> tuple[float, float]:
    """Expected ``(percent-same, Jaccard)`` of independent random masks of densities ``k1``, ``k2``."""
    same = k1 * k2 + (1 - k1) * (1 - k2)
    union = k1 + k2 - k1 * k2
    return same, (k1 * k2 / union if union > 0 else 1.0)


def similarity(a: Tensor, b: Tensor) -> Similarity:
    """Compare two masks of the same shape (any dtype; nonzero = kept).

    Raises:
        ValueError: if the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.reshape(-1).bool(), b.reshape(-1).bool()
    n = a.numel()
    inter = int((a & b).sum())
    union = int((a | b).sum())
    ka, kb = int(a.sum()) / n, int(b.sum()) / n
    cs, cj = chance(ka, kb)
    return Similarity(int((a == b).sum()) / n, inter / union if union else 1.0, cs, cj, ka, kb, n)


def compare_mask_sets(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Similarity]:
    """Per-tensor similarities of two ``{name: mask}`` dicts, plus ``"all"`` (every tensor concatenated).

    Raises:
        ValueError: if the two sets name different tensors.
    """
    if a.keys() != b.keys():
        raise ValueError(f"the runs mask different tensors: {sorted(set(a) ^ set(b))}")
    out = {name: similarity(a[name], b[name]) for name in a}
    out["all"] = similarity(torch.cat([a[n].reshape(-1) for n in a]), torch.cat([b[n].reshape(-1) for n in a]))
    return out
