"""Data layer: in-memory loader, augmentation, digits split, ImageFolder cache (synthetic files)."""

from __future__ import annotations

import pytest
import torch

from ticketlab.config import DatasetConfig
from ticketlab.data import build_data
from ticketlab.data.imagefolder import load_cached_split
from ticketlab.data.loaders import TensorLoader, random_crop_flip


def test_digits_split_and_normalization():
    d = build_data(DatasetConfig(name="digits"), torch.device("cpu"), seed=0)
    assert (d.num_train, d.num_test, d.num_classes, d.input_shape) == (1437, 360, 10, (1, 8, 8))
    xs = torch.cat([x for x, _ in d.train])
    assert abs(float(xs.mean())) < 1e-4 and float(xs.std()) == pytest.approx(1.0, abs=1e-3)
    ys = torch.cat([y for _, y in d.test])
    assert torch.bincount(ys).min() >= 35  # stratified


def test_loader_shuffles_deterministically_and_covers_everything():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)

    def epoch(seed):
        loader = TensorLoader(x, y, 3, [0.0], [1 / 255], torch.device("cpu"), shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
        return torch.cat([b for _, b in loader])

    assert len(TensorLoader(x, y, 3, [0.0], [1.0], torch.device("cpu"))) == 4
    assert sorted(epoch(0).tolist()) == list(range(10))
    assert torch.equal(epoch(0), epoch(0)) and not torch.equal(epoch(0), epoch(1))
    loader = TensorLoader(x, y, 10, [0.0], [1 / 255], torch.device("cpu"))
    xb, yb = next(iter(loader))
    assert torch.allclose(xb[:, 0, 0, 0], yb.float())  # uint8 / 255, normalized with std 1/255


def test_random_crop_flip_is_a_crop_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), generator=g, dtype=torch.int32).to(torch.uint8)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(16):
        candidates = [padded[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
        plain = any(torch.equal(out[i], c) for c in candidates)
        flipped = any(torch.equal(out[i], c.flip(2)) for c in candidates)
        assert plain or flipped
        flips += flipped and not plain
    assert 0 < flips < 16


def test_imagefolder_cache_roundtrip(tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("b_cat", "a_dog"):
            (tmp_path / "set" / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = torch.randint(0, 256, (4, 4, 3), generator=rng, dtype=torch.int32).to(torch.uint8).numpy()
                Image.fromarray(arr).save(tmp_path / "set" / split / cls / f"{i}.png")
    x, y, classes = load_cached_split(tmp_path / "set" / "train", tmp_path / "cache")
    assert classes == ["a_dog", "b_cat"] and x.shape == (6, 3, 4, 4) and y.tolist() == [0, 0, 0, 1, 1, 1]
    first = Image.open(tmp_path / "set" / "train" / "a_dog" / "0.png")
    assert torch.equal(x[0].permute(1, 2, 0), torch.from_numpy(__import__("numpy").array(first)))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    x2, y2, _ = load_cached_split(tmp_path / "set" / "train", tmp_path / "cache")  # served from the cache
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    from ticketlab.files import atomic_path, atomic_write_json

    target = tmp_path / "summary.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def _fake_imagefolder(base, splits, classes, n, size):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split in splits:
        for cls in classes:
            (base / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = torch.randint(0, 256, (size, size, 3), generator=rng, dtype=torch.int32).to(torch.uint8)
                Image.fromarray(arr.numpy()).save(base / split / cls / f"{i}.png")


@pytest.mark.parametrize("name,folder", [("tiny_imagenet", "tiny-imagenet-200"), ("imagenet", "imagenet")])
def test_streamed_imagefolder_datasets(tmp_path, name, folder):
    _fake_imagefolder(tmp_path / folder, ("train", "val"), ("n01", "n02", "n03"), 4, 20)
    cfg = DatasetConfig(name=name, root=str(tmp_path), batch_size=5, eval_batch_size=6, num_workers=0, image_size=16)
    d = build_data(cfg, torch.device("cpu"), 0)
    assert (d.num_train, d.num_test, d.num_classes, d.input_shape) == (12, 12, 3, (3, 16, 16))
    x, y = next(iter(d.train))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and y.max() < 3
    assert sum(len(b) for _, b in d.test) == 12


def test_torchvision_cifar10_batches_are_used_when_present(tmp_path, monkeypatch):
    import pickle

    import numpy as np
    import torchvision

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9],
                         "batch_label": name, "filenames": [f"{i}.png" for i in range(4)]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    d = build_data(DatasetConfig(name="cifar10", root=str(tmp_path), download=False), torch.device("cpu"), 0)
    assert (d.num_train, d.num_test, d.input_shape, d.info["source"]) == (20, 4, (3, 32, 32), str(base))
    first = torch.from_numpy(pickle.load(open(base / "data_batch_1", "rb"))["data"][0].reshape(3, 32, 32))
    assert torch.equal(d.train.images[0], first)  # CHW layout preserved


def test_validation_split_is_disjoint_fixed_and_seeded():
    from ticketlab.data.loaders import split_indices

    tr, va = split_indices(100, 0.2, seed=0)
    assert len(va) == 20 and len(tr) == 80 and not set(tr.tolist()) & set(va.tolist())
    assert torch.equal(va, split_indices(100, 0.2, seed=0)[1])
    assert not torch.equal(va, split_indices(100, 0.2, seed=1)[1])
    d = build_data(DatasetConfig(name="digits", val_fraction=0.1), torch.device("cpu"), seed=5)
    assert (d.num_train, d.num_val, d.num_test) == (1293, 144, 360)
