"""The dataset registry and what every dataset module shares: building a run's data, in-memory bundles."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ticketlab.config import DatasetConfig
from ticketlab.data.loaders import DataBundle, TensorLoader, split_indices
from ticketlab.errors import ConfigError
from ticketlab.registry import Registry

#: ``builder(cfg, device, generator) -> DataBundle`` of each dataset (:func:`build_data`).
DataBuilder = Callable[[DatasetConfig, torch.device, torch.Generator], DataBundle]
#: Every dataset by config name; trait ``in_memory``: held as tensors (no DataLoader workers).
DATASETS: Registry[DataBuilder] = Registry("dataset")


def build_data(cfg: DatasetConfig, device: torch.device, seed: int) -> DataBundle:
    """Load the dataset named ``cfg.name`` onto ``device``.

    Args:
        cfg: dataset config.
        device: training device (in-memory sets are moved there).
        seed: seeds the CPU generator of shuffling and augmentation.

    Returns:
        A :class:`DataBundle`.

    Raises:
        ConfigError: unknown name, or data missing under ``cfg.root`` (message names the root and
            the expected files).
    """
    gen = torch.Generator().manual_seed(seed)
    return DATASETS.get(cfg.name)(cfg, device, gen)


def memory_bundle(name: str, cfg: DatasetConfig, device: torch.device, gen: torch.Generator,
                   train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   num_classes: int, mean: list[float], std: list[float], augment_pad: int,
                   info: dict) -> DataBundle:
    """A :class:`DataBundle` of tensors on ``device``, with the validation split of ``cfg.val_fraction``."""
    xtr, ytr = train
    xte, yte = test
    val = None
    if cfg.val_fraction > 0:
        itr, iva = split_indices(len(ytr), cfg.val_fraction, cfg.val_seed)
        val = TensorLoader(xtr[iva], ytr[iva], cfg.eval_batch_size, mean, std, device)
        xtr, ytr = xtr[itr], ytr[itr]
    return DataBundle(
        name=name,
        train=TensorLoader(xtr, ytr, cfg.batch_size, mean, std, device, shuffle=True,
                           augment_pad=augment_pad if cfg.augment else 0, generator=gen),
        test=TensorLoader(xte, yte, cfg.eval_batch_size, mean, std, device),
        input_shape=tuple(xtr.shape[1:]), num_classes=num_classes, num_train=len(ytr), num_test=len(yte),
        generator=gen, info=info, val=val, num_val=len(val.labels) if val is not None else 0,
    )


def check_labels(labels: torch.Tensor, num_classes: int, n_images: int, source: str, dataset: str) -> None:
    """Labels must be integers in ``[0, num_classes)``, one per image.

    Raises:
        ConfigError: naming the source file or folder, before any training.
    """
    if len(labels) != n_images:
        raise ConfigError(f"dataset.name={dataset}: {source} has {len(labels)} labels for {n_images} images.")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ConfigError(f"dataset.name={dataset}: {source} holds {len(bad)} label(s) outside 0..{num_classes - 1} "
                          f"(e.g. {int(bad[0])}); the file is corrupt, copy it again.")


