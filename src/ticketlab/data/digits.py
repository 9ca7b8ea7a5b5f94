"""scikit-learn's bundled 8x8 digits: the dataset that needs no download (the default)."""

from __future__ import annotations

import torch

from ticketlab.config import DatasetConfig
from ticketlab.data.loaders import DataBundle
from ticketlab.data.registry import DATASETS, memory_bundle


@DATASETS.register("digits", in_memory=True)
def digits(cfg: DatasetConfig, device: torch.device, gen: torch.Generator) -> DataBundle:
    """scikit-learn's 1,797 8x8 digit images (values 0..16), 10 classes, split 80/20 (seed 0).

    Normalized with the training split's mean and std. No augmentation.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    itr, ite = train_test_split(range(len(y)), test_size=cfg.test_fraction, random_state=0, stratify=d.target)
    itr, ite = torch.tensor(itr), torch.tensor(ite)
    mean, std = x[itr].mean().item(), x[itr].std().item()
    return memory_bundle("digits", cfg, device, gen, (x[itr], y[itr]), (x[ite], y[ite]), 10, [mean], [std],
                          0, {"source": "sklearn.datasets.load_digits"})


