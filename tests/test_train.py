"""Training end to end on digits: results files, frozen weights, determinism, resume, W&B."""

from __future__ import annotations

import json

import pytest
import torch

from ticketlab.files import read_jsonl
from ticketlab.runner.build import setup
from ticketlab.runner.run import run
from ticketlab.sparsity.masks import masked_tensors
from ticketlab.sparsity.report import mask_dict

from .wandb_reader import read_run, wait_until_final

METRIC_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "sparsity", "epoch_s",
               "images_per_s"}
SUMMARY_KEYS = {"status", "test_acc", "best_test_acc", "sparsity", "params_total", "params_remaining", "epochs",
                "wall_s", "model", "dataset", "pruner", "init", "seed", "layer_densities"}


def test_edge_popup_run_writes_results_and_learns(cfg_factory, tmp_path):
    summary = run(cfg_factory("trainer.epochs=4"), run_dir=tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert all(set(r) >= METRIC_KEYS for r in rows)
    assert all(r["sparsity"] == pytest.approx(0.5, abs=1e-4) for r in rows)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk) >= SUMMARY_KEYS and on_disk["status"] == "completed"
    assert on_disk == json.loads(json.dumps(summary))
    assert 0.0 <= summary["test_acc"] <= summary["best_test_acc"] <= 1.0
    assert summary["test_acc"] > 0.8  # far above chance (0.1) with only scores trained
    assert summary["params_remaining"] == summary["params_total"] // 2
    assert summary["sparsity"] == pytest.approx(0.5)
    assert all(d == pytest.approx(0.5) for d in summary["layer_densities"].values())
    # a completed run keeps its ticket, not the resume state (trainer.keep_checkpoint=false by default)
    assert not (tmp_path / "last.ckpt").exists()
    ticket = torch.load(tmp_path / "ticket.pt", weights_only=True)
    assert not any(".parametrizations." in k for k in ticket["state_dict"])
    kept = run(cfg_factory("trainer.epochs=4", "trainer.keep_checkpoint=true"), run_dir=tmp_path / "kept")
    ckpt = torch.load(tmp_path / "kept" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 4 and set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "pruner", "history"}
    assert kept["test_acc"] == summary["test_acc"]  # keeping the checkpoint changes nothing else
    saved = torch.load(tmp_path / "masks.pt", weights_only=False)
    assert all(torch.equal(saved["masks"][k], ticket["masks"][k]) for k in saved["masks"])
    assert saved["weight_seed"] == 0 and saved["score_seed"] == 0
    assert sum(int(m.sum()) for m in saved["masks"].values()) == summary["params_remaining"]


def test_edge_popup_trains_scores_never_weights(cfg_factory, tmp_path):
    job = setup(cfg_factory("trainer.epochs=2"), run_dir=tmp_path)
    model = job.trainer.model
    weights0 = {mt.name: mt.original.detach().clone() for mt in masked_tensors(model)}
    scores0 = {mt.name: mt.mask.scores.detach().clone() for mt in masked_tensors(model)}
    masks0 = mask_dict(model)
    job.trainer.fit()
    trainable = {id(p) for g in job.trainer.optimizer.param_groups for p in g["params"]}
    assert trainable == {id(mt.mask.scores) for mt in masked_tensors(model)}
    for mt in masked_tensors(model):
        assert torch.equal(mt.original, weights0[mt.name])  # bit-identical frozen weights
        assert mt.original.grad is None
        assert not torch.equal(mt.mask.scores, scores0[mt.name])
    assert any(not torch.equal(m, masks0[k]) for k, m in mask_dict(model).items())  # edges popped up


def test_dense_trains_weights(cfg_factory, tmp_path):
    job = setup(cfg_factory("pruner=dense", "optimizer.lr=0.05"), run_dir=tmp_path)
    w0 = [p.detach().clone() for p in job.trainer.model.parameters()]
    job.trainer.fit()
    assert all(not torch.equal(p, q) for p, q in zip(job.trainer.model.parameters(), w0, strict=True))
    assert job.trainer.history[-1]["sparsity"] == 0.0


def test_same_seed_same_mask_and_accuracy(cfg_factory, tmp_path):
    a = run(cfg_factory("seed=7"), run_dir=tmp_path / "a")
    b = run(cfg_factory("seed=7"), run_dir=tmp_path / "b")
    run(cfg_factory("seed=8"), run_dir=tmp_path / "c")
    ma, mb, mc = (torch.load(tmp_path / x / "masks.pt", weights_only=False)["masks"] for x in "abc")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert not all(torch.equal(ma[k], mc[k]) for k in ma)
    strip = ("epoch_s", "images_per_s")
    rows_a = [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(tmp_path / "a/metrics.jsonl")]
    rows_b = [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(tmp_path / "b/metrics.jsonl")]
    assert rows_a == rows_b
    assert a["test_acc"] == b["test_acc"]


def test_global_scope_and_bias_pruning_run(cfg_factory, tmp_path):
    s = run(cfg_factory("pruner.scope=global", "pruner.sparsity=0.8", "model.bias=true", "pruner.prune_bias=true",
                        "init=kaiming_normal", "init.bias_init=default"), run_dir=tmp_path)
    masks = torch.load(tmp_path / "masks.pt", weights_only=False)["masks"]
    assert any(name.endswith(".bias") for name in masks)
    n = sum(m.numel() for m in masks.values())  # weights and biases ranked together
    assert sum(int(m.sum()) for m in masks.values()) == n - int(0.8 * n)
    densities = [d for name, d in s["layer_densities"].items() if name.endswith(".weight")]
    assert len(set(densities)) > 1  # global allocation is not uniform


@pytest.mark.parametrize("overrides", [
    ["optimizer=adam", "optimizer.lr=0.01", "scheduler=step"],
    ["optimizer.nesterov=true", "scheduler=constant", "scheduler.warmup_epochs=1"],
    ["model.batch_norm=true", "model.bn_affine=true", "pruner.train_bn=true", "init=kaiming_uniform"],
    ["init.scale_fan=true", "pruner.first_layer_dense=true", "pruner.last_layer_dense=true"],
    ["trainer.epochs=0"],
])
def test_option_combinations_run(cfg_factory, tmp_path, overrides):
    s = run(cfg_factory(*overrides), run_dir=tmp_path)
    assert s["status"] == "completed" and s["test_acc"] is not None


METHOD_RUNS = [
    ["pruner=biprop"], ["pruner=biprop", "pruner.binary_activations=true"],
    ["pruner=iterand", "pruner.period=5"], ["pruner=iterand", "pruner.mode=mix", "pruner.period=5"],
    ["pruner=weight_recycling", "pruner.every=1", "trainer.epochs=3"],
    ["pruner=weight_recycling", "pruner.base=biprop", "pruner.source=next_lowest", "pruner.every=1",
     "trainer.epochs=3"],
    ["pruner=eps_perturbation", "pruner.phase_a_steps=5"],
    ["pruner=eps_perturbation", "pruner.phase_a_steps=5", "pruner.norm=l2", "pruner.perturbation=random"],
    ["pruner.clamp_scores=true", "pruner.score_init=constant", "model.bias=true", "pruner.prune_bias=true",
     "init=kaiming_normal", "init.bias_init=he_product"],
    ["pruner.anneal_levels=2", "scheduler.cycles=2", "pruner.sparsity=0.8"],
    ["pruner.scaling=true"],
    ["init=unsigned_constant"], ["init=xavier_normal"], ["init=ortho_ll"],
    ["init=ortho_ll", "model.bias=true", "init.bias_init=ll_paired"],
    ["init=ortho_ll", "model.bias=true", "init.bias_init=ll_dependent", "init.scale_fan=true"],
    ["dataset.val_fraction=0.2"],
]


@pytest.mark.parametrize("overrides", METHOD_RUNS, ids=[" ".join(o) for o in METHOD_RUNS])
def test_every_method_and_initializer_runs(cfg_factory, tmp_path, overrides):
    s = run(cfg_factory(*overrides), run_dir=tmp_path)
    assert s["status"] == "completed" and 0.0 <= s["test_acc"] <= 1.0
    if "init=unsigned_constant" not in overrides:  # the paper's negative ablation: all weights positive
        assert s["test_acc"] > 0.2  # learns something on digits in 2-3 epochs (chance is 0.1)
    target = s["target_sparsity"]
    if "pruner.prune_bias=true" not in overrides:
        assert s["sparsity"] == pytest.approx(target, abs=1e-3)


def test_validation_split_selects_on_validation(cfg_factory, tmp_path):
    s = run(cfg_factory("dataset.val_fraction=0.2", "trainer.epochs=4"), run_dir=tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    best = max(rows, key=lambda r: r["val_acc"])
    assert s["best_val_epoch"] == best["epoch"] and s["test_acc_at_best_val"] == best["test_acc"]
    assert s["test_acc"] == rows[-1]["test_acc"]


def test_lr_schedule_warmup_and_cosine(cfg_factory, tmp_path):
    run(cfg_factory("trainer.epochs=4", "scheduler.warmup_epochs=2", "optimizer.lr=0.1"), run_dir=tmp_path)
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert lrs[3] == pytest.approx(0.05)  # cosine half-way through the 2 post-warm-up epochs


def test_wandb_offline_run_holds_history(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    summary = run(cfg_factory("logger=wandb", "trainer.epochs=3", "logger.tags=[unit]"), run_dir=tmp_path)
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    wait_until_final(files[0])
    logged = read_run(files[0])
    epochs = [row["epoch"] for row in logged["history"] if "epoch" in row]
    assert epochs == [1, 2, 3]
    last = [row for row in logged["history"] if row.get("epoch") == 3][0]
    assert last["test_acc"] == pytest.approx(summary["test_acc"])
    assert any(k.startswith("density/") for k in last)
    assert logged["summary"]["test_acc"] == pytest.approx(summary["test_acc"])
    assert logged["config"]["pruner"]["sparsity"] == 0.5


def test_wandb_failure_does_not_stop_the_run(cfg_factory, tmp_path, monkeypatch):
    import wandb

    def broken(*a, **k):
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(wandb, "init", broken)
    s = run(cfg_factory("logger=wandb"), run_dir=tmp_path)
    assert s["status"] == "completed" and (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("method", [["trainer.epochs=1"], ["pruner=imp", "pruner.levels=2", "trainer.epochs=1",
                                                         "init=kaiming_normal"]], ids=["edge_popup", "imp"])
def test_a_run_validates_its_config_and_selects_its_device_once(cfg_factory, tmp_path, monkeypatch, method):
    """One real run (an IMP run with its three stages too): one ``resolve``, one device selection."""
    from ticketlab.runner import devices, validate

    calls = {"resolve": 0, "select_device": 0}

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(validate, "resolve", counted("resolve", validate.resolve))
    monkeypatch.setattr(devices, "select_device", counted("select_device", devices.select_device))
    s = run(cfg_factory(*method), run_dir=tmp_path)
    assert s["status"] == "completed" and s.get("stages_completed", 1) == s.get("stages_total", 1)
    assert calls == {"resolve": 1, "select_device": 1}
