"""CIFAR-10 and CIFAR-100: torchvision's pickled batches or an ImageFolder copy (JPEG/PNG), held in memory."""

from __future__ import annotations

from pathlib import Path

import torch

from ticketlab.config import DatasetConfig
from ticketlab.data.imagefolder import find_imagefolder, load_cached_split
from ticketlab.data.loaders import DataBundle
from ticketlab.data.registry import DATASETS, check_labels, memory_bundle
from ticketlab.errors import ConfigError, describe


def _cifar_like(name: str, cls_name: str, batches: str, folders: list[str], num_classes: int,
                mean: list[float], std: list[float]):
    def build(cfg: DatasetConfig, device: torch.device, gen: torch.Generator) -> DataBundle:
        import torchvision

        root = Path(cfg.root)
        cls = getattr(torchvision.datasets, cls_name)
        found = find_imagefolder(root, folders)
        if (root / batches).is_dir() or (found is None and cfg.download):
            try:
                tr = cls(str(root), train=True, download=cfg.download)
                te = cls(str(root), train=False, download=cfg.download)
            except Exception as e:
                raise ConfigError(
                    f"dataset.name={name}: could not load {name} from dataset.root={str(root)!r} "
                    f"({describe(e)}); expected torchvision's "
                    f"{root / batches}/ or an ImageFolder copy {root}/{{{','.join(folders)}}}/{{train,test}}/<class>/."
                ) from e
            x_tr = torch.from_numpy(tr.data).permute(0, 3, 1, 2).contiguous()
            x_te = torch.from_numpy(te.data).permute(0, 3, 1, 2).contiguous()
            train, test = (x_tr, torch.tensor(tr.targets)), (x_te, torch.tensor(te.targets))
            check_labels(train[1], num_classes, len(x_tr), str(root / batches), name)
            check_labels(test[1], num_classes, len(x_te), str(root / batches), name)
            info = {"source": str(root / batches)}
        elif found is not None:
            base, split = found
            cache = Path(cfg.cache_dir)
            xtr, ytr, classes = load_cached_split(base / "train", cache)
            xte, yte, classes_te = load_cached_split(base / split, cache)
            if classes != classes_te or len(classes) != num_classes:
                raise ConfigError(f"dataset.name={name}: the ImageFolder copy at {base} has {len(classes)} train "
                                  f"classes and {len(classes_te)} {split} classes; expected {num_classes} in both.")
            # ImageFolder order is class-sorted: fix one permutation (seed 0) so that any prefix of the
            # test set (trainer.limit_eval_batches) is a fair sample of every class.
            perm = torch.randperm(len(yte), generator=torch.Generator().manual_seed(0))
            train, test = (xtr, ytr), (xte[perm], yte[perm])
            info = {"source": str(base), "format": "imagefolder", "cache_dir": str(cache)}
        else:
            raise ConfigError(
                f"dataset.name={name}: no {name} data under dataset.root={str(root)!r}; expected torchvision's "
                f"{root / batches}/ or an ImageFolder copy {root}/{{{','.join(folders)}}}/{{train,test}}/<class>/ "
                "(set DATA_DIR or dataset.root, or dataset.download=true where there is a network)."
            )
        return memory_bundle(name, cfg, device, gen, train, test, num_classes, mean, std, 4, info)

    build.__doc__ = (f"``{name}``: 32x32 colour, {num_classes} classes, from torchvision's ``{batches}`` or an "
                     "ImageFolder copy; 4-pixel padded random crop + horizontal flip when ``augment``.")
    return build


DATASETS.register("cifar10", in_memory=True)(_cifar_like(
    "cifar10", "CIFAR10", "cifar-10-batches-py", ["cifar10-jpeg", "cifar10"], 10,
    [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]))
DATASETS.register("cifar100", in_memory=True)(_cifar_like(
    "cifar100", "CIFAR100", "cifar-100-python", ["cifar100-jpeg", "cifar100"], 100,
    [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]))
