"""MNIST and Fashion-MNIST from torchvision's raw IDX files (``root/<MNIST|FashionMNIST>/raw``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ticketlab.config import DatasetConfig
from ticketlab.data.idx import prepare_raw
from ticketlab.data.loaders import DataBundle
from ticketlab.data.registry import DATASETS, check_labels, memory_bundle
from ticketlab.errors import ConfigError, describe

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]


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
        return memory_bundle(name, cfg, device, gen, (tr.data.unsqueeze(1), tr.targets),
                              (te.data.unsqueeze(1), te.targets), 10, [mean], [std], 0, {"source": str(raw)})

    build.__doc__ = (f"torchvision ``{cls_name}`` (28x28 grey, 10 classes) read into memory from "
                     f"``root/{folder}/raw``; archives and extracted files are checked first "
                     "(:func:`ticketlab.data.idx.prepare_raw`).")
    return build


DATASETS.register("mnist", in_memory=True)(_mnist_like("mnist", "MNIST", "MNIST", 0.1307, 0.3081))
DATASETS.register("fashion_mnist", in_memory=True)(
    _mnist_like("fashion_mnist", "FashionMNIST", "FashionMNIST", 0.2860, 0.3530))
