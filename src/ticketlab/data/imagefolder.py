"""Small ImageFolder copies (e.g. the CIFAR-10 JPEG archive) decoded once into a cached tensor file.

Layout: ``<folder>/<split>/<class>/<image>``; classes are the sorted folder names
(torchvision's ``ImageFolder`` convention, which for CIFAR-10 equals the official label order).
The cache file name hashes the folder's absolute path and file listing (names and sizes), so a
changed copy is decoded again. Writes are atomic (temporary file, then rename); a cache file that
cannot be read or does not match the listing (truncated, from another copy) is decoded again and
replaced. An image that cannot be decoded is named in the error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from ticketlab.errors import ConfigError, describe

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def list_images(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and ``(path, label)`` pairs of an ImageFolder split, in a deterministic order.

    Raises:
        FileNotFoundError: if ``split_dir`` has no class folders with images.
    """
    classes = sorted(d.name for d in os.scandir(split_dir) if d.is_dir())
    items = []
    for label, cls in enumerate(classes):
        for f in sorted(os.scandir(split_dir / cls), key=lambda e: e.name):
            if f.name.lower().endswith(IMAGE_EXTENSIONS):
                items.append((f.path, label))
    if not items:
        raise FileNotFoundError(f"no images under {split_dir}")
    return classes, items


def load_cached_split(split_dir: Path, cache_dir: Path) -> tuple[Tensor, Tensor, list[str]]:
    """Decode an ImageFolder split to ``(images uint8 (N, 3, H, W), labels int64 (N,), classes)``.

    All images must share one size (true for CIFAR-style copies). The first call decodes every
    file and writes ``cache_dir/<hash>.pt``;
    later calls load that file (an unusable one is rebuilt).

    Raises:
        FileNotFoundError: if the split has no images.
        ValueError: if images differ in size.
        ConfigError: an image that cannot be decoded (naming it).
    """
    classes, items = list_images(split_dir)
    h = hashlib.sha256(str(split_dir.resolve()).encode())
    for path, label in items:
        h.update(f"{os.path.basename(path)}:{label}:{os.path.getsize(path)};".encode())
    cache = cache_dir / f"imagefolder-{split_dir.name}-{h.hexdigest()[:16]}.pt"
    if cache.exists():
        blob = _read_cache(cache, len(items), len(classes))
        if blob is not None:
            return blob["images"], blob["labels"], classes
    from torchvision.io import ImageReadMode, decode_image, read_file  # here: about a second of start-up

    images = []
    for p, _ in items:
        try:
            images.append(decode_image(read_file(p), mode=ImageReadMode.RGB))
        except Exception as e:
            raise ConfigError(f"{p} cannot be decoded as an image ({describe(e)}); replace or remove it.") from e
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images under {split_dir} differ in size ({sorted(shapes)[:3]}...); "
                         "only same-size folders are cached in memory")
    x = torch.stack(images)
    y = torch.tensor([label for _, label in items], dtype=torch.long)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"images": x, "labels": y, "classes": classes}, tmp)
    os.replace(tmp, cache)
    return x, y, classes


def _read_cache(cache: Path, n: int, n_classes: int) -> dict | None:
    """The cached split, or ``None`` (with a warning) when the file is unreadable or does not match."""
    try:
        blob = torch.load(cache, weights_only=True)
        images, labels = blob["images"], blob["labels"]
        ok = (images.dtype == torch.uint8 and images.dim() == 4 and len(images) == n and len(labels) == n
              and (n == 0 or 0 <= int(labels.min()) <= int(labels.max()) < n_classes))
        problem = None if ok else "its content does not match the folder"
    except Exception as e:
        problem = describe(e)
    if problem is None:
        return blob
    log.warning("decoded-image cache %s is unusable (%s); decoding the images again", cache, problem)
    return None


def find_imagefolder(root: Path, names: list[str]) -> tuple[Path, str] | None:
    """First of ``root/<name>`` (then ``root``) holding ``train/`` and ``test/`` or ``val/``."""
    for base in [root / n for n in names] + [root]:
        if (base / "train").is_dir():
            for split in ("test", "val"):
                if (base / split).is_dir():
                    return base, split
    return None


