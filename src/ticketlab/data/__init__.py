"""Datasets, registered by config name in :data:`DATASETS`.

=================  ==========================================================  ============
name               source                                                      served by
=================  ==========================================================  ============
``digits``         scikit-learn's bundled 8x8 digits (no download);            in memory
                   stratified 80/20 split with seed 0
``mnist``          torchvision ``MNIST`` under ``root/MNIST/raw``              in memory
``fashion_mnist``  torchvision ``FashionMNIST`` under ``root/FashionMNIST/raw``  in memory
``cifar10``        torchvision ``CIFAR10`` (``root/cifar-10-batches-py``) or an   in memory
                   ImageFolder copy (``root/cifar10-jpeg``, ``root/cifar10``)
``cifar100``       as cifar10 (``cifar-100-python``, ``cifar100-jpeg``, ``cifar100``) in memory
``tiny_imagenet``  ImageFolder ``root/tiny-imagenet-200/{train,val}``            DataLoader
``imagenet``       ImageFolder ``root/imagenet/{train,val}``                    DataLoader
=================  ==========================================================  ============

In-memory sets live on the training device as uint8 and are batched by
:class:`~ticketlab.data.loaders.TensorLoader`; ImageFolder copies of small sets are decoded once into
a cached tensor file (:mod:`ticketlab.data.imagefolder`). A dataset that is missing offline raises
:class:`~ticketlab.errors.ConfigError` naming the root and the expected files, before training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ticketlab.config import DatasetConfig
from ticketlab.data.idx import prepare_raw
from ticketlab.data.imagefolder import load_cached_split
from ticketlab.data.loaders import DataBundle, SeededSamples, StreamLoader, TensorLoader, split_indices
from ticketlab.errors import ConfigError, describe
from ticketlab.registry import Registry

__all__ = ["DATASETS", "DataBundle", "TensorLoader", "build_data"]

DataBuilder = Callable[[DatasetConfig, torch.device, torch.Generator], DataBundle]
DATASETS: Registry[DataBuilder] = Registry("dataset")

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]


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


def _memory_bundle(name: str, cfg: DatasetConfig, device: torch.device, gen: torch.Generator,
                   train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   num_classes: int, mean: list[float], std: list[float], augment_pad: int,
                   info: dict) -> DataBundle:
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


@DATASETS.register("digits")
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
    return _memory_bundle("digits", cfg, device, gen, (x[itr], y[itr]), (x[ite], y[ite]), 10, [mean], [std],
                          0, {"source": "sklearn.datasets.load_digits"})


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


def _mnist_like(name: str, folder: str, cls_name: str, mean: float, std: float):
    def build(cfg: DatasetConfig, device: torch.device, gen: torch.Generator) -> DataBundle:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = Path(cfg.root)
        raw = root / folder / "raw"
        expected = ", ".join(f"{n}.gz" for n in MNIST_FILES)
        missing = prepare_raw(raw, list(cls.resources), name) if raw.is_dir() else list(MNIST_FILES)
        if missing and not cfg.download:
            raise ConfigError(f"dataset.name={name}: no {name} data under dataset.root={str(root)!r}; expected "
                              f"{raw}/ to hold {expected} (missing: {', '.join(missing)}; set DATA_DIR or "
                              "dataset.root, or dataset.download=true where there is a network).")
        try:
            tr = cls(str(root), train=True, download=bool(missing))
            te = cls(str(root), train=False, download=False)
        except Exception as e:  # torchvision raises RuntimeError/URLError/OSError when offline
            raise ConfigError(f"dataset.name={name}: could not load {name} from dataset.root={str(root)!r} "
                              f"({describe(e)}); expected {raw}/ to "
                              f"hold {expected}. Without a network, copy the files there.") from e
        check_labels(tr.targets, 10, len(tr.data), str(raw / "train-labels-idx1-ubyte"), name)
        check_labels(te.targets, 10, len(te.data), str(raw / "t10k-labels-idx1-ubyte"), name)
        return _memory_bundle(name, cfg, device, gen, (tr.data.unsqueeze(1), tr.targets),
                              (te.data.unsqueeze(1), te.targets), 10, [mean], [std], 0, {"source": str(raw)})

    build.__doc__ = (f"torchvision ``{cls_name}`` (28x28 grey, 10 classes) read into memory from "
                     f"``root/{folder}/raw``; archives and extracted files are checked first "
                     "(:func:`ticketlab.data.idx.prepare_raw`).")
    return build


DATASETS.register("mnist")(_mnist_like("mnist", "MNIST", "MNIST", 0.1307, 0.3081))
DATASETS.register("fashion_mnist")(_mnist_like("fashion_mnist", "FashionMNIST", "FashionMNIST", 0.2860, 0.3530))


def _find_imagefolder(root: Path, names: list[str]) -> tuple[Path, str] | None:
    """First of ``root/<name>`` (then ``root``) holding ``train/`` and ``test/`` or ``val/``."""
    for base in [root / n for n in names] + [root]:
        if (base / "train").is_dir():
            for split in ("test", "val"):
                if (base / split).is_dir():
                    return base, split
    return None


def _cifar_like(name: str, cls_name: str, batches: str, folders: list[str], num_classes: int,
                mean: list[float], std: list[float]):
    def build(cfg: DatasetConfig, device: torch.device, gen: torch.Generator) -> DataBundle:
        import torchvision

        root = Path(cfg.root)
        cls = getattr(torchvision.datasets, cls_name)
        found = _find_imagefolder(root, folders)
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
        return _memory_bundle(name, cfg, device, gen, train, test, num_classes, mean, std, 4, info)

    build.__doc__ = (f"``{name}``: 32x32 colour, {num_classes} classes, from torchvision's ``{batches}`` or an "
                     "ImageFolder copy; 4-pixel padded random crop + horizontal flip when ``augment``.")
    return build


DATASETS.register("cifar10")(_cifar_like(
    "cifar10", "CIFAR10", "cifar-10-batches-py", ["cifar10-jpeg", "cifar10"], 10,
    [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]))
DATASETS.register("cifar100")(_cifar_like(
    "cifar100", "CIFAR100", "cifar-100-python", ["cifar100-jpeg", "cifar100"], 100,
    [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]))

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _streamed(name: str, folders: list[str], small: bool):
    def build(cfg: DatasetConfig, device: torch.device, gen: torch.Generator) -> DataBundle:
        import torchvision.transforms as T
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder

        root = Path(cfg.root)
        found = _find_imagefolder(root, folders)
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


DATASETS.register("tiny_imagenet")(_streamed("tiny_imagenet", ["tiny-imagenet-200", "tiny_imagenet"], small=True))
DATASETS.register("imagenet")(_streamed("imagenet", ["imagenet", "ILSVRC2012"], small=False))
