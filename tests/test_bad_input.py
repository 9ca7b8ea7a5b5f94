"""Bad input: one clear paragraph naming the key (or file), the value and what is allowed, before
anything is written; legal but degenerate settings warn; corrupt files are named, corrupt caches rebuilt."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch

from ticketlab.config import DatasetConfig
from ticketlab.data import build_data
from ticketlab.errors import ConfigError
from ticketlab.runner.run import run

from .conftest import require

CASES = [
    (["+pruner.sparsty=0.9"], r"pruner.sparsty is not a key of pruner=edge_popup; did you mean pruner.sparsity\?"),
    (["+trainer.epoch=3"], r"trainer.epoch is not a key of trainer=.*did you mean trainer.epochs\?"),
    (["+sede=3"], r"sede is not a TicketLab config key; did you mean seed\?"),
    (["init.weight_seed=-1"], r"init.weight_seed=-1 is not a valid seed; allowed: an integer in \[0, 2\^63 - 1\]"),
    (["init.score_seed=-2"], r"init.score_seed=-2 is not a valid seed"),
    (["seed=9223372036854775808"], r"seed=9223372036854775808 is not a valid seed"),
    (["dataset.val_seed=-1"], r"dataset.val_seed=-1 is not a valid seed"),
    (["scheduler.min_lr=0.5"], r"scheduler.min_lr=0.5 is above optimizer.lr=0.1: the cosine schedule would raise"),
    (["pruner=iterand", "pruner.mix_lambda=-3"], r"pruner.mix_lambda=-3.0 is out of range; allowed: \[0.0, 1.0\]"),
    (["pruner=synflow", "pruner.compression=20"], r"pruner.compression=20.0 is out of range; allowed: \[0.0, 15.0\]"),
    (["pruner=grasp", "pruner.temperature=0"], r"pruner.temperature=0.0 is out of range; allowed: \(0.0, inf\]"),
    (["pruner=weight_recycling", "pruner.rate=0.7"], r"pruner.rate=0.7 exceeds the density 0.5"),
    (["pruner=imp", "trainer.epochs=0"], r"pruner=imp trains every level, so trainer.epochs must be >= 1"),
    (["pruner=imp", "pruner.rewind_step=1000"], r"pruner.rewind_step=1000 is never reached: level 0 takes 46 "
                                                r"optimizer steps"),
    (["dataset.root=${oc.env:TICKETLAB_TEST_UNSET}"], r"dataset.root=\$\{oc.env:TICKETLAB_TEST_UNSET\} cannot be "
                                                      r"resolved .*TICKETLAB_TEST_UNSET"),
    (["trainer.resume=sometimes"], r"trainer.resume='sometimes' is not allowed; choose one of: auto, never, fresh"),
    (["pruner=from_file"], r"pruner.path is mandatory here and has no value"),
    (["trainer.checkpoint_every_min=-1"], r"trainer.checkpoint_every_min=-1.0 is out of range"),
    (["dataset.val_fraction=0.9999"], r"dataset.val_fraction=0.9999 holds out 1437 of the 1437 training images of "
                                      r"digits, which leaves none to train on"),
    (["dataset.val_fraction=0.0001"], r"dataset.val_fraction=0.0001 of 1437 training images of digits holds out no "
                                      r"image"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_named_before_anything_is_written(cfg_factory, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(cfg_factory(*overrides), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_rejected_config_leaves_an_existing_run_untouched(cfg_factory, tmp_path):
    run(cfg_factory(), run_dir=tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    for overrides in (["pruner.sparsity=1.5"], ["pruner.sparsity=0.7"], ["trainer.resume=never"]):
        with pytest.raises(ConfigError) as e:
            run(cfg_factory(*overrides), run_dir=tmp_path / "run")
        if overrides == ["pruner.sparsity=0.7"]:  # valid, but another run: never mixed into this folder
            assert "holds a different run" in str(e.value) and "pruner.sparsity: (default) (there) vs 0.7 (here)" in \
                str(e.value)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    assert after == before


# --------------------------------------------------------------------------- warnings
@pytest.mark.parametrize("overrides,warning", [
    (["pruner.sparsity=0.999999", "trainer.epochs=1"], "leave no path from the input to the output"),
    (["model=resnet50", "model.width_mult=0.125", "trainer.epochs=1", "trainer.limit_train_batches=1",
      "trainer.limit_eval_batches=1"],
     "downsamples its 1x8x8 input below the size of"),
    (["pruner=biprop"], "alpha * sign(W) = W and biprop is edge-popup"),
    (["pruner=weight_recycling", "trainer.epochs=2"], "never recycles in this run"),
    (["pruner=iterand", "pruner.mode=mix", "pruner.mix_lambda=1.0", "pruner.mix_mu=0.5"],
     "multiply the variance of a redrawn weight by 1.25"),
    (["scheduler.warmup_epochs=5", "trainer.epochs=2"], "covers all trainer.epochs=2"),
    (["dataset.val_fraction=0.9995", "trainer.epochs=1"], "the training split holds 1 images, fewer than one batch"),
    (["dataset.val_fraction=0.001", "trainer.epochs=1"], "the validation split holds 1 images"),
    (["trainer.limit_train_batches=1000", "trainer.epochs=1"], "trainer.limit_train_batches=1000 is more than the"),
])
def test_degenerate_but_legal_settings_warn(cfg_factory, tmp_path, caplog, overrides, warning):
    s = run(cfg_factory(*overrides), run_dir=tmp_path)
    assert s["status"] == "completed"
    assert any(warning in w for w in s["warnings"]), s["warnings"]
    assert warning in caplog.text


def test_no_warning_for_an_ordinary_run(cfg_factory, tmp_path):
    assert run(cfg_factory(), run_dir=tmp_path)["warnings"] == []


# --------------------------------------------------------------------------- pruner=from_file
def _from_file(cfg_factory, tmp_path, path):
    return run(cfg_factory("pruner=from_file", f"pruner.path={path}", "init=kaiming_normal"), run_dir=tmp_path / "r")


@pytest.mark.parametrize("content,message", [
    ("truncated", r"cannot be read as a masks file written by a TicketLab run"),
    ([1, 2, 3], r"holds a list; expected a masks file"),
    ({}, r"holds a dict without a masks entry"),
    ({"masks": {}}, r"holds no mask at all \(an empty dict would train dense\)"),
    ({"masks": {"net.1.weight": torch.full((256, 64), 0.5)}}, r"holds values other than 0 and 1"),
    ({"masks": {"net.1.weight": "x"}}, r"is a str, not a tensor"),
    ({"masks": {"nope.weight": torch.ones(3, dtype=torch.bool)}}, r"does not name a Conv/Linear weight or bias"),
])
def test_from_file_rejects_anything_but_a_masks_file(cfg_factory, tmp_path, content, message):
    path = tmp_path / "masks.pt"
    if content == "truncated":
        run(cfg_factory(), run_dir=tmp_path / "src")
        data = (tmp_path / "src" / "masks.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message) as e:
        _from_file(cfg_factory, tmp_path, path)
    assert str(path) in str(e.value)
    assert not (tmp_path / "r").exists()


def test_from_file_rejects_a_checkpoint(cfg_factory, tmp_path):
    run(cfg_factory("trainer.keep_checkpoint=true"), run_dir=tmp_path / "src")
    with pytest.raises(ConfigError, match=r"last.ckpt.*(training checkpoint|It looks like a training checkpoint)"):
        _from_file(cfg_factory, tmp_path, tmp_path / "src" / "last.ckpt")


def test_from_file_warns_about_layers_it_leaves_dense(cfg_factory, tmp_path):
    run(cfg_factory("pruner.first_layer_dense=true"), run_dir=tmp_path / "src")
    s = _from_file(cfg_factory, tmp_path, tmp_path / "src")
    assert any("net.1.weight; those layers stay dense" in w for w in s["warnings"])


# --------------------------------------------------------------------------- corrupt data files
@pytest.fixture
def mnist_copy(data_dir, tmp_path):
    """A private copy of the MNIST archives (no extracted files)."""
    require(data_dir / "MNIST" / "raw", "MNIST")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (data_dir / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    return raw


def _mnist(raw, download=False):
    return build_data(DatasetConfig(name="mnist", root=str(raw.parents[1]), download=download), torch.device("cpu"), 0)


@pytest.mark.realdata
def test_gz_only_mnist_folder_loads_without_download(mnist_copy):
    d = _mnist(mnist_copy, download=False)
    assert (d.num_train, d.num_test) == (60000, 10000)
    assert (mnist_copy / "train-images-idx3-ubyte").stat().st_size == 47_040_016  # extracted beside the archive


@pytest.mark.realdata
def test_truncated_mnist_archive_is_named_with_its_checksum(mnist_copy):
    gz = mnist_copy / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"train-labels-idx1-ubyte.gz is corrupt or truncated: MD5 \w+ "
                                          r"\(1000 bytes\), expected d53e105ee54ea40749a09fcbcd1e9432"):
        _mnist(mnist_copy)


@pytest.mark.realdata
def test_truncated_extracted_file_is_rebuilt_from_its_archive_or_named(mnist_copy):
    _mnist(mnist_copy)
    plain = mnist_copy / "t10k-images-idx3-ubyte"
    plain.write_bytes(plain.read_bytes()[:5000])
    assert _mnist(mnist_copy).num_test == 10000  # rebuilt from t10k-images-idx3-ubyte.gz
    plain.write_bytes(plain.read_bytes()[:5000])
    (mnist_copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match=r"t10k-images-idx3-ubyte is damaged \(it has 5000 bytes, but its header "
                                          r"\(10000 x 28 x 28\) announces 7840016\)"):
        _mnist(mnist_copy)


@pytest.mark.realdata
def test_corrupt_labels_fail_before_training_and_keep_the_earlier_summary(mnist_copy, cfg_factory, tmp_path):
    common = ("dataset=mnist", f"dataset.root={mnist_copy.parents[1]}", "model=lenet300_100",
              "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1", "trainer.epochs=1")
    run(cfg_factory(*common, "trainer.resume=never"), run_dir=tmp_path / "run")
    summary = (tmp_path / "run" / "summary.json").read_bytes()
    labels = mnist_copy / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[8 + 5] = 200  # sample 5's label
    labels.write_bytes(bytes(data))
    (mnist_copy / "train-labels-idx1-ubyte.gz").unlink()  # no archive to rebuild from
    with gzip.open(mnist_copy / "train-labels-idx1-ubyte.gz", "wb") as f:  # a consistent but corrupt archive
        f.write(bytes(data))
    with pytest.raises(ConfigError, match=r"train-labels-idx1-ubyte holds 1 label\(s\) outside 0..9 \(e.g. 200\)"):
        run(cfg_factory(*common, "trainer.resume=fresh"), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").read_bytes() == summary


def test_truncated_decoded_image_cache_is_rebuilt(tmp_path, caplog):
    from ticketlab.data.imagefolder import load_cached_split

    from .test_data import _fake_imagefolder

    _fake_imagefolder(tmp_path / "set", ("train",), ("a", "b"), 3, 4)
    x, y, _ = load_cached_split(tmp_path / "set" / "train", tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    x2, y2, _ = load_cached_split(tmp_path / "set" / "train", tmp_path / "cache")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert "is unusable" in caplog.text and str(cache) in caplog.text
    assert len(torch.load(cache, weights_only=True)["labels"]) == 6  # rewritten whole


def test_undecodable_image_is_named(tmp_path):
    from ticketlab.data.imagefolder import load_cached_split

    from .test_data import _fake_imagefolder

    _fake_imagefolder(tmp_path / "set", ("train",), ("a", "b"), 2, 4)
    bad = tmp_path / "set" / "train" / "b" / "1.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=rf"{bad} cannot be decoded as an image"):
        load_cached_split(tmp_path / "set" / "train", tmp_path / "cache")


def test_datasetconfig_refuses_an_unresolved_path():
    with pytest.raises(ConfigError, match=r"dataset.cache_dir='\$\{oc.env:X,.cache\}' is not a usable path"):
        DatasetConfig(name="digits", cache_dir="${oc.env:X,.cache}")


def test_json_files_are_strict_json(cfg_factory, tmp_path):
    run(cfg_factory("trainer.epochs=0"), run_dir=tmp_path)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    row = strict((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["epoch"] == 0 and row["train_loss"] is None and row["train_acc"] is None
    strict((tmp_path / "summary.json").read_text())
    strict((tmp_path / "run.json").read_text())


def test_mask_warnings_name_a_layer_cut_off_every_path():
    from ticketlab.sparsity.structure import MaskStructure, mask_warnings

    st = MaskStructure(effective_density=0.4, effective_sparsity=0.6, disconnected_fraction=0.2, log_paths=5.0,
                       layers={"layer1.0.conv2": {"density": 0.5, "effective_density": 0.0},
                               "fc": {"density": 0.5, "effective_density": 0.5}})
    (w,) = mask_warnings(st, 0.5)
    assert "layer1.0.conv2 keep weights of which none lies on an input-output path" in w
    assert mask_warnings(MaskStructure(0.5, 0.5, 0.0, 5.0, {"fc": {"density": 0.5, "effective_density": 0.5}}),
                         0.5) == []
