"""Batch iterators that a checkpoint can stop and restart anywhere inside an epoch.

Both training loaders split an epoch into two calls, so that the training loop can save where it
is and continue exactly there (:mod:`ticketlab.training.loop`):

* :meth:`new_order` draws the epoch's :class:`EpochOrder` (the permutation, and a seed for
  per-sample augmentation) from the loader's CPU ``torch.Generator``;
* :meth:`batches` yields the batches of that order from a given batch index on.

Iterating a loader (``for x, y in loader``) does both. With ``shard=(rank, world)``, :meth:`batches`
yields only this rank's slice of each *global* batch (DistributedDataParallel,
:mod:`ticketlab.distributed`): every rank draws the same order and augmentation, so N ranks see
exactly the batches of one process, split N ways. :class:`TensorLoader` serves datasets that
fit in memory: the whole uint8 image tensor lives on the training device and each batch is an
index into it, normalized and (optionally) augmented on the device, with no per-sample Python
work; augmentation draws from the same generator, whose state the checkpoint saves.
:class:`StreamLoader` serves folder datasets through a ``DataLoader`` with workers; each sample is
augmented under its own seed (epoch seed + position), so the batches do not depend on the number
of workers and a resumed epoch sees the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


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


@dataclass
class EpochOrder:
    """The random choices of one training epoch, enough to replay it from any batch.

    Attributes:
        perm: ``(N,)`` int64 permutation of the training examples (CPU), or ``None`` (no shuffle).
        seed: per-epoch seed of sample-wise augmentation (:class:`StreamLoader`; 0 otherwise).
    """

    perm: Tensor | None
    seed: int = 0

    def state_dict(self) -> dict[str, Any]:
        """For the checkpoint."""
        return {"perm": self.perm, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochOrder:
        """Inverse of :meth:`state_dict`."""
        return cls(state["perm"], int(state["seed"]))


def shard_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of a batch of ``n`` among ``world`` ranks (sizes differ by at most 1)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return slice(lo, lo + base + (1 if rank < extra else 0))


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

    def new_order(self) -> EpochOrder:
        """Draw the next epoch's permutation (from the generator) when shuffling."""
        return EpochOrder(torch.randperm(len(self.labels), generator=self.generator) if self.shuffle else None)

    def batches(self, order: EpochOrder, start: int = 0,
                shard: tuple[int, int] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``order`` from batch index ``start`` on (augmentation draws from the generator).

        Args:
            order: from :meth:`new_order` (``EpochOrder(None)``: dataset order).
            start: first batch index.
            shard: ``(rank, world)``: yield only this rank's part of each global batch
                (:func:`shard_slice`); the whole batch is augmented, so the parts are those of one process.
        """
        n = len(self.labels)
        perm = order.perm.to(self.images.device) if order.perm is not None else None
        for first in range(start * self.batch_size, n, self.batch_size):
            idx = perm[first:first + self.batch_size] if perm is not None else \
                torch.arange(first, min(first + self.batch_size, n), device=self.images.device)
            part = shard_slice(len(idx), *shard) if shard is not None else slice(None)
            if self.augment_pad:  # the whole global batch draws its augmentation, as in one process
                x = random_crop_flip(self.images[idx], self.augment_pad, self.generator)[part]
            else:
                x = self.images[idx[part]]
            y = self.labels[idx[part]]
            x = (x.float() * self.scale - self.mean) / self.std
            yield x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield from self.batches(self.new_order())


class SeededSamples(Dataset):
    """Samples of a map-style dataset, each transformed under its own seed.

    ``dataset[(j, seed)]`` loads sample ``indices[j]`` of ``base`` (an ``(image, label)`` dataset
    without transform, e.g. torchvision's ``ImageFolder``) and applies ``transform`` with torch's
    global RNG seeded by ``seed`` inside :func:`torch.random.fork_rng`, so torchvision's random
    transforms give the same result in any worker process, with any number of workers, before and
    after a resume. ``dataset[j]`` applies the transform without seeding (evaluation).

    Args:
        base: the dataset; ``base[i]`` is ``(PIL image, label)``.
        indices: which of ``base``'s samples this dataset holds (a subset), in order.
        transform: image transform (PIL -> ``(C, H, W)`` float tensor).
    """

    def __init__(self, base: Dataset, indices: list[int], transform: Callable) -> None:
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        j, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.base[self.indices[j]]
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class _BatchKeys(Sampler):
    """Yields the batches of keys set for the current epoch (the training loop sets them before iterating)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader:
    """Training batches from a folder dataset through a ``DataLoader`` with workers, resumable.

    Each epoch's permutation and augmentation seed come from ``generator``
    (:meth:`new_order`); sample ``j`` of the epoch is transformed under seed ``order.seed + j``
    (:class:`SeededSamples`), so the batch contents depend neither on the number of workers nor
    on where the epoch was resumed.

    Args:
        dataset: a :class:`SeededSamples`.
        batch_size: images per batch (the last batch may be smaller).
        generator: CPU generator of the permutations and seeds (checkpointed).
        num_workers, pin_memory: passed to the ``DataLoader`` (workers persist across epochs).

    Yields:
        ``(x: float32 (B, C, H, W), y: int64 (B,))`` on the CPU.
    """

    def __init__(self, dataset: SeededSamples, batch_size: int, generator: torch.Generator, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset, self.batch_size, self.generator = dataset, batch_size, generator
        self.sampler = _BatchKeys()
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0)

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def new_order(self) -> EpochOrder:
        """Draw the next epoch's permutation and augmentation seed from the generator."""
        perm = torch.randperm(len(self.dataset), generator=self.generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return EpochOrder(perm, seed)

    def batches(self, order: EpochOrder, start: int = 0,
                shard: tuple[int, int] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``order`` from batch index ``start`` on (``shard``: as :meth:`TensorLoader.batches`)."""
        keys = [(int(i), order.seed + j) for j, i in enumerate(order.perm.tolist())]
        batches = [keys[b:b + self.batch_size] for b in range(start * self.batch_size, len(keys), self.batch_size)]
        self.sampler.batches = [b[shard_slice(len(b), *shard)] for b in batches] if shard is not None else batches
        yield from self.loader

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield from self.batches(self.new_order())


def eval_batches(loader: Any, shard: tuple[int, int] | None) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of an evaluation loader, or this rank's part of them (``shard=(rank, world)``).

    A :class:`TensorLoader` splits each batch (:func:`shard_slice`); a ``DataLoader`` is read through
    a sharded copy over every ``world``-th sample, made once per loader.
    """
    if shard is None or shard[1] == 1:
        yield from loader
        return
    if isinstance(loader, TensorLoader):
        yield from loader.batches(EpochOrder(None), 0, shard)
        return
    cached = getattr(loader, "_ticketlab_shards", None)
    if cached is None:
        cached = loader._ticketlab_shards = {}
    if shard not in cached:
        from torch.utils.data import Subset

        rank, world = shard
        cached[shard] = DataLoader(Subset(loader.dataset, list(range(rank, len(loader.dataset), world))),
                                   batch_size=loader.batch_size, num_workers=loader.num_workers,
                                   pin_memory=loader.pin_memory)
    yield from cached[shard]
