"""Datasets, registered by config name in :data:`~ticketlab.data.registry.DATASETS`.

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

Each dataset is one module of this package that registers its builder in :data:`DATASETS`
(with ``in_memory=True`` when it is held as tensors); every module here is imported below, so
adding a dataset is one module and one ``conf/dataset/<name>.yaml``.
"""

import importlib
import pkgutil

from ticketlab.data.loaders import DataBundle, TensorLoader
from ticketlab.data.registry import DATASETS, build_data

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["DATASETS", "DataBundle", "TensorLoader", "build_data"]
