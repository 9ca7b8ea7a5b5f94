"""Batch iterators.

:class:`TensorLoader` serves datasets that fit in memory: the whole uint8 image tensor lives on the
training device and each batch is an index into it, normalized and (optionally) augmented on the
device, with no per-sample Python work. Its shuffling and augmentation draw from one CPU
``torch.Generator`` whose state is part of the run checkpoint, so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class DataBundle:
    """What the trainer needs from a dataset.

    Attributes:
        name: dataset key.
        train, test: iterables of ``(x: float (B, C, H, W), y: int64 (B,))`` with ``len()`` = batches.
        val: the held-out validation split (``dataset.val_fraction > 0``), else ``None``.
        input_shape: ``(C, H, W)``.
        num_classes: number of labels.
        num_train, num_test: number of examples.
        generator: the CPU generator behind shuffling/augmentation (checkpointed), if any.
        info: free-form provenance (source folder, cache file) written to the summary.
    """

    name: str
    train: Any
    test: Any
    input_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    generator: torch.Generator | None = None
    info: dict[str, Any] = field(default_factory=dict)
    val: Any = None
    num_val: int = 0


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` index tensors: a random ``round(fraction * n)`` of ``range(n)`` held out.

    The permutation depends only on ``(n, seed)``, so the split is fixed across runs and methods.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(fraction * n)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def random_crop_flip(x: Tensor, pad: int, gen: torch.Generator, flip: bool = True) -> Tensor:
    """Random crop after zero padding, then random horizontal flip, for a whole batch at once.

    Equivalent to torchvision's ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()``
    applied per image (the standard CIFAR augmentation, He et al. 2016, Sec. 4.2).

    Args:
        x: ``(B, C, H, W)`` images (any dtype; padding value 0).
        pad: padding in pixels on each side.
        gen: CPU generator for the offsets and flips.
        flip: also flip horizontally with probability 1/2.

    Returns:
        ``(B, C, H, W)`` tensor on ``x``'s device.
    """
    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    if flip:
        flips = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        cols = torch.where(flips[:, None, None], cols.flip(2), cols)
    out = xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class TensorLoader:
    """Mini-batches from tensors held on the training device.

    Args:
        images: ``(N, C, H, W)`` uint8 (scaled by 1/255) or float tensor.
        labels: ``(N,)`` int64.
        batch_size: images per batch (the last batch may be smaller).
        mean, std: per-channel normalization, length C.
        device: where the data lives and batches are produced.
        shuffle: reshuffle every epoch with ``generator``.
        augment_pad: if > 0, random crop with this padding plus horizontal flip.
        generator: CPU generator for shuffling and augmentation.

    Yields:
        ``(x: float32 (B, C, H, W), y: int64 (B,))`` on ``device``.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean: list[float], std: list[float],
                 device: torch.device, shuffle: bool = False, augment_pad: int = 0,
                 generator: torch.Generator | None = None) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device=device, dtype=torch.long)
        self.batch_size = batch_size
        self.scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
        c = images.shape[1]
        self.mean = torch.tensor(mean, device=device).view(1, c, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, c, 1, 1)
        self.shuffle = shuffle
        self.augment_pad = augment_pad
        self.generator = generator if generator is not None else torch.Generator()

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator).to(self.images.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            x = self.images[idx]
            if self.augment_pad:
                x = random_crop_flip(x, self.augment_pad, self.generator)
            x = (x.float() * self.scale - self.mean) / self.std
            yield x, self.labels[idx]
