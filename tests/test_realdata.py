"""Real datasets from DATA_DIR (prepared by `make test`): mandatory in CI, skipped elsewhere if absent."""

from __future__ import annotations

import json

import pytest
import torch

from ticketlab.config import DatasetConfig
from ticketlab.data import build_data

from .conftest import require
from .test_cli import train

pytestmark = pytest.mark.realdata


def test_mnist_matches_reference_statistics(data_dir):
    require(data_dir / "MNIST" / "raw", "MNIST")
    d = build_data(DatasetConfig(name="mnist", root=str(data_dir), batch_size=60000), torch.device("cpu"), 0)
    loader = d.train
    assert (d.num_train, d.num_test, d.input_shape) == (60000, 10000, (1, 28, 28))
    assert int(loader.images.to(torch.int64).sum()) == 1_567_298_545  # of the byte-exact IDX training images
    assert torch.bincount(loader.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_cifar10_imagefolder_copy_loads_with_standard_labels(data_dir, tmp_path):
    require(data_dir / "cifar10-jpeg" / "train", "CIFAR-10 JPEG copy")
    d = build_data(DatasetConfig(name="cifar10", root=str(data_dir)), torch.device("cpu"), 0)
    assert (d.num_train, d.num_test, d.input_shape, d.num_classes) == (50000, 10000, (3, 32, 32), 10)
    assert torch.bincount(d.train.labels).tolist() == [5000] * 10
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10
    mean = d.train.images.float().mean(dim=(0, 2, 3)) / 255  # every class
    assert torch.allclose(mean, torch.tensor([0.491, 0.481, 0.444]), atol=0.01)  # the data README's sample stats
    x, y = next(iter(d.train))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32


@pytest.mark.slow
def test_train_py_on_mnist(data_dir, tmp_path):
    require(data_dir / "MNIST" / "raw", "MNIST")
    out = tmp_path / "run"
    p = train("dataset=mnist", "model=lenet300_100", "trainer.epochs=1", "trainer.limit_train_batches=100",
              "logger=none", f"hydra.run.dir={out}", env={"DATA_DIR": str(data_dir)})
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"] == "mnist" and s["params_total"] == 266_200 and s["sparsity"] == pytest.approx(0.5)
    assert s["test_acc"] > 0.8  # 100 steps of edge-popup on LeNet-300-100


@pytest.mark.slow
def test_train_py_on_cifar10_few_batches(data_dir, tmp_path):
    require(data_dir / "cifar10-jpeg" / "train", "CIFAR-10 JPEG copy")
    out = tmp_path / "run"
    p = train("dataset=cifar10", "model=conv4", "trainer.epochs=1", "trainer.limit_train_batches=3",
              "trainer.limit_eval_batches=1", "dataset.eval_batch_size=500", "logger=none", f"hydra.run.dir={out}",
              env={"DATA_DIR": str(data_dir)})
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["dataset"] == "cifar10" and s["params_total"] == 2_425_024
    assert s["sparsity"] == pytest.approx(0.5)


VARIANTS = [
    ["pruner=edge_popup"], ["pruner=biprop"], ["pruner=iterand", "pruner.period=2"],
    ["pruner=weight_recycling", "pruner.every=1", "trainer.epochs=3"],
    ["pruner=eps_perturbation", "pruner.phase_a_steps=2"],
    ["pruner=edge_popup", "model.bias=true", "pruner.prune_bias=true", "pruner.clamp_scores=true",
     "init=kaiming_normal", "init.bias_init=he_product", "pruner.scaling=true"],
    ["init=kaiming_uniform"], ["init=unsigned_constant"], ["init=xavier_normal"],
    ["init=ortho_ll", "model.bias=true", "init.bias_init=ll_dependent"],
    # pruning at initialization (weights trained)
    ["pruner=random", "init=kaiming_normal"], ["pruner=magnitude", "init=kaiming_normal"],
    ["pruner=snip", "init=kaiming_normal"], ["pruner=grasp", "init=kaiming_normal", "dataset.batch_size=32"],
    ["pruner=synflow", "init=kaiming_normal", "pruner.iterations=5"], ["pruner=phew", "init=kaiming_normal"],
    ["pruner=kstarts", "pruner.k=2", "pruner.selection_batches=2", "init=kaiming_normal"],
    ["pruner=kstarts", "pruner.k=2", "pruner.selection_batches=2", "pruner.dissipating=true",
     "pruner.epochs_to_prune=1", "init=kaiming_normal"],
    ["pruner=dissipating_gradients", "pruner.epochs_to_prune=1", "init=kaiming_normal"],
    ["pruner=imp", "pruner.levels=1", "init=kaiming_normal"], ["pruner=dense", "pruner.sparsity=0"],
]


@pytest.mark.parametrize("dataset,model", [("mnist", "lenet300_100"), ("cifar10", "conv2")])
@pytest.mark.parametrize("variant", VARIANTS, ids=[" ".join(v) for v in VARIANTS])
def test_every_method_and_init_on_real_data(data_dir, tmp_path, cfg_factory, dataset, model, variant):
    from ticketlab.runner.run import run

    require(data_dir / ("MNIST/raw" if dataset == "mnist" else "cifar10-jpeg/train"), dataset)
    s = run(cfg_factory(f"dataset={dataset}", f"model={model}", f"dataset.root={data_dir}", "trainer.epochs=2",
                        "trainer.limit_train_batches=3", "trainer.limit_eval_batches=1", "dataset.eval_batch_size=500",
                        *variant), run_dir=tmp_path)
    assert s["status"] == "completed" and s["dataset"] == dataset
    assert 0.0 <= s["test_acc"] <= 1.0
