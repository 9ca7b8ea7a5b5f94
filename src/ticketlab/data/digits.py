"""scikit-learn's bundled 8x8 digits: the dataset that needs no download (the default)."""

from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path

import torch
from torch import Tensor

from ticketlab.config import DatasetConfig
from ticketlab.data.loaders import DataBundle
from ticketlab.data.registry import DATASETS, memory_bundle
from ticketlab.errors import describe
from ticketlab.files import atomic_torch_save

log = logging.getLogger(__name__)


def _split(test_fraction: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, y, train_idx, test_idx)``: the images ``(1797, 1, 8, 8)`` in [0, 1], labels ``(1797,)``, and the
    stratified split of ``sklearn.model_selection.train_test_split`` (seed 0) as index tensors."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    itr, ite = train_test_split(range(len(y)), test_size=test_fraction, random_state=0, stratify=d.target)
    return x, y, torch.tensor(itr), torch.tensor(ite)


def cached_split(test_fraction: float, cache_dir: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_split`, kept in ``cache_dir`` as a tensor file keyed by scikit-learn's version and the fraction.

    Importing scikit-learn costs about a second, more than a one-epoch digits run trains; the cache makes
    every later run read four tensors instead. An unreadable cache is rebuilt (with a warning); a cache
    folder that cannot be written only costs the import each time.
    """
    path = cache_dir / f"digits-sklearn{version('scikit-learn')}-test{test_fraction!r}.pt"
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            return blob["x"], blob["y"], blob["train"], blob["test"]
        except Exception as e:  # noqa: BLE001 -- any damage: rebuild it
            log.warning("digits cache %s is unusable (%s); building it again", path, describe(e))
    x, y, itr, ite = _split(test_fraction)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, {"x": x, "y": y, "train": itr, "test": ite})
    except OSError as e:
        log.warning("digits cache not written to %s (%s); scikit-learn is imported on every run", path,
                    describe(e))
    return x, y, itr, ite


@DATASETS.register("digits", in_memory=True)
def digits(cfg: DatasetConfig, device: torch.device, gen: torch.Generator) -> DataBundle:
    """scikit-learn's 1,797 8x8 digit images (values 0..16), 10 classes, split 80/20 (seed 0).

    Normalized with the training split's mean and std. No augmentation. The split is cached under
    ``dataset.cache_dir`` (:func:`cached_split`).
    """
    x, y, itr, ite = cached_split(cfg.test_fraction, Path(cfg.cache_dir))
    mean, std = x[itr].mean().item(), x[itr].std().item()
    return memory_bundle("digits", cfg, device, gen, (x[itr], y[itr]), (x[ite], y[ite]), 10, [mean], [std],
                          0, {"source": "sklearn.datasets.load_digits"})
