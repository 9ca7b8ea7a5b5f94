"""Stop anywhere, run the same command again, get the uninterrupted result: every method.

A stop is a real SIGTERM sent to this process after a chosen optimizer step (counted over every
phase: K-starts' candidates, epsilon-perturbation's phase A, IMP's levels). The run checkpoints
mid-epoch, writes ``status: preempted`` and raises; running the same config in the same folder
continues from the checkpoint. Its masks, final weights, metric history and summary must equal a
twin that was never stopped (bit for bit on the CPU).
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import ticketlab.training.loop
from ticketlab.errors import Preempted
from ticketlab.files import read_jsonl
from ticketlab.runner.run import run

from .conftest import method_of

TIMING = ("epoch_s", "images_per_s")


def stop_after(monkeypatch, step: int, signum: int = signal.SIGTERM) -> dict:
    """Send ``signum`` to this process right after the ``step``-th optimizer step (any phase)."""
    seen = {"n": 0}
    real = ticketlab.training.loop.train_step

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        seen["n"] += 1
        if seen["n"] == step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(ticketlab.training.loop, "train_step", counting)
    return seen


@pytest.fixture
def cfg_factory(cfg_factory):
    """These tests compare the whole final training state (weights, scores, optimizer, RNG) of a resumed run
    with an uninterrupted twin's, so they keep last.ckpt after completion (trainer.keep_checkpoint=true)."""
    return lambda *overrides: cfg_factory(*overrides, "trainer.keep_checkpoint=true")


def final_state(run_dir):
    """What must not depend on the interruption: masks, weights, history (minus timings), summary numbers."""
    masks = torch.load(run_dir / "masks.pt", weights_only=False)["masks"]
    model = torch.load(run_dir / "last.ckpt", weights_only=False)["model"]
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(run_dir / "metrics.jsonl")]
    s = json.loads((run_dir / "summary.json").read_text())
    return masks, model, rows, s


def assert_same_run(a, b):
    ma, wa, ra, sa = final_state(a)
    mb, wb, rb, sb = final_state(b)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ra == rb
    for key in ("status", "test_acc", "sparsity", "params_remaining", "effective_sparsity"):
        assert sa.get(key) == sb.get(key), key


IMP = ["pruner=imp", "pruner.levels=2", "init=kaiming_normal", "optimizer.lr=0.05"]
# (overrides, step after which SIGTERM arrives). digits: 23 batches per epoch at batch size 64.
CASES = {
    "edge_popup mid-epoch": (["trainer.epochs=3"], 30),
    "edge_popup at an epoch end": (["trainer.epochs=3"], 23),
    "dense": (["pruner=dense", "pruner.sparsity=0", "optimizer.lr=0.05", "trainer.epochs=3"], 35),
    "biprop annealed scaled": (["pruner=biprop", "pruner.anneal_levels=3", "pruner.scaling=true",
                                "trainer.epochs=4", "init=kaiming_normal", "init.scale_fan=true"], 50),
    "iterand": (["pruner=iterand", "pruner.period=7", "trainer.epochs=3"], 33),
    "weight_recycling": (["pruner=weight_recycling", "pruner.every=1", "trainer.epochs=4"], 40),
    "eps_perturbation in phase A": (["pruner=eps_perturbation", "pruner.phase_a_steps=30"], 12),
    "eps_perturbation in phase B": (["pruner=eps_perturbation", "pruner.phase_a_steps=30"], 45),
    "kstarts during selection": (["pruner=kstarts", "pruner.k=3", "pruner.selection_batches=6",
                                  "init=kaiming_normal", "optimizer.lr=0.05"], 8),
    "kstarts + dissipating in training": (["pruner=kstarts", "pruner.k=2", "pruner.selection_batches=4",
                                           "pruner.dissipating=true", "init=kaiming_normal", "optimizer.lr=0.05",
                                           "trainer.epochs=3"], 30),
    "dissipating_gradients": (["pruner=dissipating_gradients", "pruner.epochs_to_prune=2", "init=kaiming_normal",
                               "optimizer.lr=0.05", "trainer.epochs=3"], 28),
    "random": (["pruner=random", "init=kaiming_normal", "optimizer.lr=0.05"], 30),
    "magnitude": (["pruner=magnitude", "init=kaiming_normal", "optimizer.lr=0.05"], 30),
    "snip": (["pruner=snip", "init=kaiming_normal", "optimizer.lr=0.05"], 30),
    "grasp": (["pruner=grasp", "init=kaiming_normal", "optimizer.lr=0.05"], 30),
    "synflow": (["pruner=synflow", "pruner.iterations=5", "init=kaiming_normal", "optimizer.lr=0.05"], 30),
    "phew": (["pruner=phew", "init=kaiming_normal", "optimizer.lr=0.05"], 30),
    "from_file": (["pruner=from_file", "pruner.path={masks}", "init=kaiming_normal", "optimizer.lr=0.05"], 30),
}
#: Methods whose resume is tested by a test of their own.
OWN_TESTS = {"imp": "test_imp_stopped_mid_level_resumes_that_level"}


def test_every_registered_method_has_a_resume_case():
    from ticketlab.pruners import PRUNERS

    covered = {method_of(overrides) for overrides, _ in CASES.values()} | set(OWN_TESTS)
    assert sorted(set(PRUNERS.names()) - covered) == [], "registered methods without a stop-and-resume case"


@pytest.mark.parametrize("name", list(CASES))
def test_stopped_and_resumed_equals_uninterrupted(cfg_factory, tmp_path, monkeypatch, masks_file, name):
    overrides, step = CASES[name]
    overrides = [o.format(masks=masks_file) for o in overrides]
    twin = run(cfg_factory(*overrides), run_dir=tmp_path / "twin")
    assert twin["status"] == "completed"
    with monkeypatch.context() as m:
        stop_after(m, step)
        with pytest.raises(Preempted) as stopped:
            run(cfg_factory(*overrides), run_dir=tmp_path / "run")
    assert stopped.value.signum == signal.SIGTERM
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "preempted" and s["stopped"]["signal"] == "SIGTERM" and s["stopped"]["checkpoint"]
    assert (tmp_path / "run" / "masks.pt").exists()
    again = run(cfg_factory(*overrides), run_dir=tmp_path / "run")
    assert again["status"] == "completed" and again["attempts"] == 2
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [a["status"] for a in record["attempts"]] == ["preempted", "completed"]
    assert record["attempts"][1]["resumed_from"] is not None
    assert_same_run(tmp_path / "twin", tmp_path / "run")


def test_imp_stopped_mid_level_resumes_that_level(cfg_factory, tmp_path, monkeypatch):
    twin = run(cfg_factory(*IMP), run_dir=tmp_path / "twin")
    with monkeypatch.context() as m:
        stop_after(m, 46 + 14)  # level 1, step 14 (each level: 2 epochs x 23 batches)
        with pytest.raises(Preempted):
            run(cfg_factory(*IMP), run_dir=tmp_path / "run")
    parent = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert parent["status"] == "preempted" and parent["stages_completed"] == 1
    level0_mtime = (tmp_path / "run" / "level_00" / "summary.json").stat().st_mtime_ns
    again = run(cfg_factory(*IMP), run_dir=tmp_path / "run")
    assert again["status"] == "completed" and again["stages_completed"] == 3
    assert (tmp_path / "run" / "level_00" / "summary.json").stat().st_mtime_ns == level0_mtime  # not re-run
    for level in ("level_00", "level_01", "level_02"):
        assert_same_run(tmp_path / "twin" / level, tmp_path / "run" / level)
    assert twin["test_acc"] == again["test_acc"]


def test_sigint_writes_interrupted_and_continues(cfg_factory, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        stop_after(m, 10, signal.SIGINT)
        with pytest.raises(Preempted) as stopped:
            run(cfg_factory("trainer.epochs=2"), run_dir=tmp_path / "run")
    assert stopped.value.status == "interrupted" and stopped.value.exit_code == 130
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"
    run(cfg_factory("trainer.epochs=2"), run_dir=tmp_path / "twin")
    assert run(cfg_factory("trainer.epochs=2"), run_dir=tmp_path / "run")["status"] == "completed"
    assert_same_run(tmp_path / "twin", tmp_path / "run")


def test_checkpoint_every_few_minutes_inside_an_epoch(cfg_factory, tmp_path, monkeypatch):
    """A timed checkpoint mid-epoch, then a crash: the rerun continues from the mid-epoch checkpoint."""
    overrides = ["trainer.epochs=2", "trainer.checkpoint_every_min=1e-9"]  # a checkpoint after every step
    run(cfg_factory(*overrides), run_dir=tmp_path / "twin")
    real = ticketlab.training.loop.train_step
    calls = {"n": 0}

    def crash_at_17(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 17:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ticketlab.training.loop, "train_step", crash_at_17)
        with pytest.raises(RuntimeError, match="power cut"):
            run(cfg_factory(*overrides), run_dir=tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert ckpt["position"]["batch"] == 16 and ckpt["epoch"] == 0  # inside epoch 1, after 16 steps
    assert run(cfg_factory(*overrides), run_dir=tmp_path / "run")["status"] == "completed"
    assert_same_run(tmp_path / "twin", tmp_path / "run")


def test_streamed_imagefolder_resumes_mid_epoch_with_the_same_batches(tmp_path):
    """Folder datasets: per-sample augmentation seeds make a resumed epoch identical, whatever the workers."""
    from ticketlab.config import DatasetConfig
    from ticketlab.data import build_data

    from .test_data import _fake_imagefolder

    _fake_imagefolder(tmp_path / "tiny-imagenet-200", ("train", "val"), ("n01", "n02"), 6, 20)

    def bundle(workers):
        cfg = DatasetConfig(name="tiny_imagenet", root=str(tmp_path), batch_size=4, num_workers=workers,
                            image_size=16, cache_dir=str(tmp_path / "cache"))
        return build_data(cfg, torch.device("cpu"), 0).train

    full = bundle(0)
    order = full.new_order()
    batches = [x for x, _ in full.batches(order)]
    resumed = [x for x, _ in bundle(2).batches(order, start=1)]  # other workers, from batch 1
    assert len(resumed) == len(batches) - 1
    assert all(torch.equal(a, b) for a, b in zip(batches[1:], resumed, strict=True))
    assert not torch.equal(batches[0], [x for x, _ in full.batches(full.new_order())][0])  # epochs differ
