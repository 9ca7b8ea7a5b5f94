"""A user's own nn.Module (model=custom, or a YAML of their own) and any torchvision model run through train.py
with edge-popup, SNIP and IMP; the exported ticket loads into the model built with plain PyTorch and gives the
run's test accuracy exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ticketlab.data import build_data
from ticketlab.errors import ConfigError
from ticketlab.models import build_model
from ticketlab.runner.validate import resolve
from ticketlab.sparsity.structure import _AdaptiveSum

from .conftest import ROOT, compose_cfg, require
from .user_models import TinyConvNet

METHODS = [["pruner=edge_popup"], ["pruner=snip"], ["pruner=imp", "pruner.levels=1"]]


def _train(tmp_path: Path, *overrides: str) -> Path:
    env = {**os.environ, "TICKETLAB_OUTPUTS": str(tmp_path / "outputs"), "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "train.py", *overrides, "logger=none", "trainer.progress=false"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    return run


def _export(run: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "scripts/export_ticket.py", str(run), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "ticket.json").read_text())


def _test_accuracy(model: nn.Module, run: Path, limit_batches: int | None = None) -> float:
    """Accuracy of a plain model on the run's test split, with a plain loop (the data pipeline is TicketLab's)."""
    top = run.parent if run.name.startswith("level_") else run
    given = [o for o in OmegaConf.load(top / ".hydra" / "overrides.yaml") if not o.startswith("hydra.")]
    rc = resolve(compose_cfg(*given))
    data = build_data(rc.dataset, torch.device("cpu"), rc.seed)
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(data.test):
            if limit_batches is not None and i >= limit_batches:
                break
            correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return correct / seen


def _final(run: Path) -> tuple[Path, dict]:
    """The folder and summary holding the ticket (an IMP run's last level)."""
    levels = sorted(run.glob("level_*"))
    folder = levels[-1] if levels else run
    return folder, json.loads((folder / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m[0].split("=")[1])
def test_a_users_module_runs_and_its_ticket_loads_into_plain_pytorch(tmp_path, method):
    run = _train(tmp_path, "model=custom", "model.target=tests.user_models.TinyConvNet", "+model.kwargs.width=8",
                 "trainer.epochs=2", *method)
    folder, summary = _final(run)
    assert summary["status"] == "completed" and summary["model"] == "custom"
    assert summary["effective_sparsity"] is not None  # the mask-structure metrics work on this model too
    assert not (folder / "last.ckpt").exists() and (folder / "ticket.pt").exists()
    info = _export(run, tmp_path / "export")
    plain = TinyConvNet(in_channels=1, num_classes=10, width=8)  # built without TicketLab
    plain.load_state_dict(torch.load(tmp_path / "export" / "state_dict.pt", weights_only=True))
    assert _test_accuracy(plain, folder) == summary["test_acc"] == info["test_acc"]
    masks = torch.load(tmp_path / "export" / "masks.pt", weights_only=True)["masks"]
    for name, m in masks.items():  # removed weights are exact zeros in the exported weights
        assert m.dtype == torch.bool and bool((plain.get_parameter(name)[~m] == 0).all())
    assert info["sparsity"] == pytest.approx(summary["sparsity"])


@pytest.mark.slow
def test_biprop_ticket_exports_its_scaled_signed_weights(tmp_path):
    run = _train(tmp_path, "model=custom", "model.target=tests.user_models.TinyConvNet", "pruner=biprop",
                 "trainer.epochs=1")
    _, summary = _final(run)
    _export(run, tmp_path / "export")
    state = torch.load(tmp_path / "export" / "state_dict.pt", weights_only=True)
    plain = TinyConvNet(in_channels=1, num_classes=10)
    plain.load_state_dict(state)
    assert _test_accuracy(plain, run) == summary["test_acc"]
    w = state["features.0.weight"]
    assert len(w[w != 0].abs().unique()) == 1  # alpha * sign(w) * m: one magnitude per layer


@pytest.mark.slow
def test_a_model_yaml_of_ones_own_in_a_config_folder_outside_the_repository(tmp_path):
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "my_net.yaml").write_text("defaults: [custom]\ntarget: tests.user_models.TinyConvNet\n"
                                      "kwargs: {width: 4}\n")
    run = _train(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=my_net", "trainer.epochs=1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["params_total"] == 4 * 9 + 4 * 4 * 9 + 16 * 10
    assert run.name.startswith("edge_popup-TinyConvNet-digits-s0.5-seed0-")


def test_bad_external_models_are_named_before_training(tmp_path):
    with pytest.raises(ConfigError, match="model.target='nowhere.Net' cannot be imported"):
        build_model(resolve(compose_cfg("model=custom", "model.target=nowhere.Net")).model, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="model.arch='resnet7' is not a torchvision model; torchvision has: .*resnet"):
        build_model(resolve(compose_cfg("model=torchvision", "model.arch=resnet7")).model, (3, 32, 32), 10)
    from ticketlab.runner.build import setup

    with pytest.raises(ConfigError, match="pruner=phew: layer b .1 inputs. follows layer a .8 outputs."):
        setup(compose_cfg("model=custom", "model.target=tests.user_models.TwoBranchNet", "pruner=phew"),
              run_dir=tmp_path)


def test_adaptive_pooling_in_the_path_network_sums_each_window():
    x = torch.arange(2 * 3 * 7 * 5, dtype=torch.float64).view(2, 3, 7, 5)
    out = _AdaptiveSum((3, 2))(x)
    rows = [(i * 7 // 3, -(-(i + 1) * 7 // 3)) for i in range(3)]
    cols = [(j * 5 // 2, -(-(j + 1) * 5 // 2)) for j in range(2)]
    expected = torch.stack([torch.stack([x[..., a:b, c:d].sum((-2, -1)) for c, d in cols], -1) for a, b in rows], -2)
    assert out.shape == (2, 3, 3, 2) and torch.allclose(out, expected)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m[0].split("=")[1])
def test_a_torchvision_model_runs_and_its_ticket_loads_into_torchvision(tmp_path, data_dir, method):
    import torchvision

    require(data_dir / "cifar10-jpeg", "CIFAR-10 (JPEG ImageFolder)")
    run = _train(tmp_path, "model=torchvision", "model.arch=resnet18", "dataset=cifar10", f"dataset.root={data_dir}",
                 "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1",
                 "dataset.eval_batch_size=200", *method)
    folder, summary = _final(run)
    assert summary["status"] == "completed" and summary["partial_eval"] is True
    assert run.name.startswith(f"{method[0].split('=')[1]}-tv_resnet18-cifar10-")
    _export(run, tmp_path / "export")
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(torch.load(tmp_path / "export" / "state_dict.pt", weights_only=True))
    assert _test_accuracy(plain, folder, limit_batches=1) == summary["test_acc"]
