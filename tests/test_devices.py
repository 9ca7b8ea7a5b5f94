"""Device paths, parametrized over the available devices (``tests.conftest.DEVICES``): every method's
training step, bf16 autocast, channels-last, and a checkpoint written on one device and resumed on another.

On a machine without CUDA these run on the CPU only; ``make test-gpu`` runs their CUDA cases.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ticketlab.runner.build import setup
from ticketlab.runner.run import run
from ticketlab.sparsity.masks import ScoreMask, masked_tensors
from ticketlab.sparsity.report import sparsity_report

from .conftest import DEVICES, method_of

#: One short run per method (digits, a few batches): what each method's step needs to run at all.
METHODS = {
    "edge_popup": [],
    "biprop": ["pruner=biprop", "init=kaiming_normal"],
    "iterand": ["pruner=iterand", "pruner.period=2"],
    "weight_recycling": ["pruner=weight_recycling", "pruner.every=1", "trainer.epochs=3"],
    "eps_perturbation": ["pruner=eps_perturbation", "pruner.phase_a_steps=3"],
    "kstarts": ["pruner=kstarts", "pruner.k=2", "pruner.selection_batches=2", "init=kaiming_normal"],
    "dissipating_gradients": ["pruner=dissipating_gradients", "pruner.epochs_to_prune=1", "init=kaiming_normal"],
    "random": ["pruner=random", "init=kaiming_normal"],
    "magnitude": ["pruner=magnitude", "init=kaiming_normal"],
    "snip": ["pruner=snip", "init=kaiming_normal"],
    "grasp": ["pruner=grasp", "init=kaiming_normal"],
    "synflow": ["pruner=synflow", "pruner.iterations=5", "init=kaiming_normal"],
    "phew": ["pruner=phew", "init=kaiming_normal"],
    "dense": ["pruner=dense", "pruner.sparsity=0"],
    "from_file": ["pruner=from_file", "pruner.path={masks}", "pruner.sparsity=0.5", "init=kaiming_normal"],
    "imp": ["pruner=imp", "init=kaiming_normal"],  # level 0 of IMP: dense training with all-ones masks
}
SHORT = ["trainer.epochs=2", "trainer.limit_train_batches=4", "optimizer.lr=0.05"]


def test_every_registered_method_has_a_device_case():
    from ticketlab.pruners import PRUNERS

    assert sorted(set(PRUNERS.names()) - {method_of(o) for o in METHODS.values()}) == [], \
        "registered methods without a device case"


@pytest.mark.devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_the_device_with_bf16_autocast(cfg_factory, tmp_path, masks_file, device, method):
    overrides = [o.format(masks=masks_file) for o in METHODS[method]]
    job = setup(cfg_factory(*SHORT, *overrides, f"trainer.device={device}", "trainer.amp=true"), run_dir=tmp_path)
    job.trainer.fit()
    model = job.trainer.model
    assert all(p.device.type == device for p in model.parameters())
    assert all(b.device.type == device for b in model.buffers())
    assert all(math.isfinite(r["train_loss"]) for r in job.trainer.history)
    target = 1.0 if method == "imp" else job.rc.pruner.density  # IMP's level 0 trains dense
    rep = sparsity_report(model)
    assert rep.kept == pytest.approx(target * rep.total, abs=len(rep.layers) + 1)


@pytest.mark.devices
@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_convnet(cfg_factory, tmp_path, device):
    s = run(cfg_factory(*SHORT, "model=conv2", "model.width_mult=0.25", f"trainer.device={device}",
                        "trainer.channels_last=true"), run_dir=tmp_path)
    assert s["status"] == "completed" and s["sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.devices
@pytest.mark.parametrize(("src", "dst"), list(itertools.product(DEVICES, DEVICES)))
def test_checkpoint_moves_between_devices(cfg_factory, tmp_path, src, dst):
    """A checkpoint written on ``src`` loads on ``dst``: same masks and scores, training goes on there."""
    common = ["trainer.epochs=2", "trainer.limit_train_batches=5", "model=conv2", "model.width_mult=0.25"]
    a = setup(cfg_factory(*common, f"trainer.device={src}", "trainer.epochs=1"), run_dir=tmp_path / "a")
    a.trainer.fit()
    state = a.trainer.state_dict()
    torch.save(state, tmp_path / "moved.ckpt")
    b = setup(cfg_factory(*common, f"trainer.device={dst}"), run_dir=tmp_path / "b")
    b.trainer.load_state_dict(torch.load(tmp_path / "moved.ckpt", weights_only=False, map_location="cpu"))
    masks_a = {mt.name: mt.mask.current_mask().cpu() for mt in masked_tensors(a.trainer.model)}
    for mt in masked_tensors(b.trainer.model):
        assert mt.mask.mask.device.type == dst
        assert isinstance(mt.mask, ScoreMask) and torch.equal(mt.mask.current_mask().cpu(), masks_a[mt.name])
    b.trainer.fit()
    assert b.trainer.state.epoch == 2 and len(b.trainer.history) == 2
    assert all(p.device.type == dst for p in b.trainer.model.parameters())
