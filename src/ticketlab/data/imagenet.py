"""Tiny-ImageNet and ImageNet: ImageFolder trees streamed through a DataLoader with workers."""

from __future__ import annotations

from pathlib import Path

import torch

from ticketlab.config import DatasetConfig
from ticketlab.data.imagefolder import find_imagefolder
from ticketlab.data.loaders import DataBundle, SeededSamples, StreamLoader, split_indices
from ticketlab.data.registry import DATASETS
from ticketlab.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _streamed(name: str, folders: list[str], small: bool):
    def build(cfg: DatasetConfig, device: torch.device, gen: torch.Generator) -> DataBundle:
        import torchvision.transforms as T
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder

        root = Path(cfg.root)
        found = find_imagefolder(root, folders)
        if found is None:
            raise ConfigError(f"dataset.name={name}: no ImageFolder copy under dataset.root={str(root)!r}; expected "
                              f"{root}/{{{','.join(folders)}}}/train/<class>/ and .../val/<class>/ (or test/).")
        base, split = found
        size = cfg.image_size
        norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if small:  # Tiny-ImageNet: CIFAR-style augmentation at the native size
            train_tf = T.Compose(([T.RandomCrop(size, padding=size // 16), T.RandomHorizontalFlip()]
                                  if cfg.augment else [T.Resize(size)]) + norm)
            test_tf = T.Compose([T.Resize(size)] + norm)
        else:
            train_tf = T.Compose(([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if cfg.augment
                                  else [T.Resize(int(size / 0.875)), T.CenterCrop(size)]) + norm)
            test_tf = T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size)] + norm)
        images = ImageFolder(str(base / "train"))  # PIL images; the transforms run in SeededSamples
        te = ImageFolder(str(base / split), test_tf)
        classes = len(images.classes)
        pin = device.type == "cuda"
        kw = dict(num_workers=cfg.num_workers, pin_memory=pin, persistent_workers=cfg.num_workers > 0)
        itr, val = torch.arange(len(images)), None
        if cfg.val_fraction > 0:  # the held-out images are read with the test transform
            itr, iva = split_indices(len(images), cfg.val_fraction, cfg.val_seed)
            val = DataLoader(SeededSamples(images, iva.tolist(), test_tf), cfg.eval_batch_size, shuffle=False, **kw)
        train = StreamLoader(SeededSamples(images, itr.tolist(), train_tf), cfg.batch_size, gen, cfg.num_workers, pin)
        return DataBundle(
            name=name,
            train=train,
            test=DataLoader(te, cfg.eval_batch_size, shuffle=False, **kw),
            input_shape=(3, size, size), num_classes=classes, num_train=len(itr), num_test=len(te),
            generator=gen, info={"source": str(base), "format": "imagefolder", "test_split": split},
            val=val, num_val=len(val.dataset) if val is not None else 0,
        )

    build.__doc__ = f"``{name}``: ImageFolder copy streamed through a DataLoader with workers."
    return build


DATASETS.register("tiny_imagenet", in_memory=False)(
    _streamed("tiny_imagenet", ["tiny-imagenet-200", "tiny_imagenet"], small=True))
DATASETS.register("imagenet", in_memory=False)(_streamed("imagenet", ["imagenet", "ILSVRC2012"], small=False))
