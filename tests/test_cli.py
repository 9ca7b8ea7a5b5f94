"""``train.py`` through Hydra in a subprocess: the default job, a multirun sweep, and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT
from .wandb_reader import read_run

pytestmark = pytest.mark.slow


def train(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def test_default_job_through_hydra_with_wandb_offline(tmp_path):
    out = tmp_path / "run"
    p = train("trainer.epochs=3", f"hydra.run.dir={out}", env={"WANDB_MODE": "offline",
                                                                 "WANDB_DIR": str(tmp_path / "wb")})
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["sparsity"] == pytest.approx(0.5)
    assert (out / ".hydra" / "config.yaml").exists()
    log = p.stdout + p.stderr
    assert "test_acc" in log and "sparsity 0.5000" in log and str(out) in log
    assert not (out / "wandb").exists()  # WANDB_DIR is respected
    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    logged = read_run(run_file)  # the process has exited: the file is final
    assert [row["epoch"] for row in logged["history"] if "epoch" in row] == [1, 2, 3]
    assert logged["summary"]["test_acc"] == pytest.approx(summary["test_acc"])


def test_multirun_sweep_runs_every_job_in_its_own_folder(tmp_path):
    sweep = tmp_path / "sweep"
    p = train("-m", "pruner.sparsity=0.3,0.5,0.7", "seed=0,1", "trainer.epochs=1", "logger=none",
              "trainer.progress=false", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(6)]
    got = sorted((s["target_sparsity"], s["seed"]) for s in summaries)
    assert got == sorted((sp, seed) for sp in (0.3, 0.5, 0.7) for seed in (0, 1))
    assert all(s["sparsity"] == pytest.approx(s["target_sparsity"], abs=1e-4) for s in summaries)


@pytest.mark.parametrize("args,expected", [
    (["pruner.sparsity=1.5"], "pruner.sparsity=1.5 is out of range; allowed: [0.0, 1.0)"),
    (["model=conv8"], "model.name='conv8' does not fit digits"),
])
def test_bad_input_gives_one_paragraph_error_and_exit_code_2(tmp_path, args, expected):
    p = train(*args, "logger=none", f"hydra.run.dir={tmp_path / 'r'}")
    assert p.returncode == 2
    assert expected in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


def test_unknown_pruner_lists_options(tmp_path):
    p = train("pruner=edgepopup", f"hydra.run.dir={tmp_path}")
    assert p.returncode != 0
    assert "Could not find 'pruner/edgepopup'" in p.stderr and "edge_popup" in p.stderr and "dense" in p.stderr


def test_every_strong_ticket_method_through_train_py(tmp_path):
    methods = ["edge_popup", "biprop", "iterand", "weight_recycling", "eps_perturbation"]
    sweep = tmp_path / "sweep"
    p = train("-m", f"pruner={','.join(methods)}", "trainer.epochs=2", "trainer.limit_train_batches=4", "logger=none",
              "trainer.progress=false", f"hydra.sweep.dir={sweep}")  # what it asserts needs no full epoch
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(len(methods))]
    assert sorted(s["pruner"] for s in summaries) == sorted(methods)
    assert all(s["status"] == "completed" and s["sparsity"] == pytest.approx(0.5) for s in summaries)


def test_option_of_another_method_is_rejected_by_train_py(tmp_path):
    p = train("pruner=edge_popup", "pruner.period=3", f"hydra.run.dir={tmp_path}")
    assert p.returncode != 0 and "period" in p.stderr and "EdgePopupConfig" in p.stderr


def test_every_pruning_at_init_method_through_train_py(tmp_path):
    methods = ["random", "magnitude", "snip", "grasp", "synflow", "phew", "kstarts", "dissipating_gradients", "imp"]
    sweep = tmp_path / "sweep"
    p = train("-m", f"pruner={','.join(methods)}", "pruner.sparsity=0.8", "init=kaiming_normal", "trainer.epochs=2",
              "trainer.limit_train_batches=4", "logger=none", "trainer.progress=false", f"hydra.sweep.dir={sweep}",
              timeout=600)  # densities and statuses need no full epoch
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(len(methods))]
    assert sorted(s["pruner"] for s in summaries) == sorted(methods)
    for s in summaries:
        assert s["status"] == "completed"
        if s["pruner"] == "imp":  # the smallest L with 0.8^L <= 0.2 is 8
            assert s["stages_total"] == 9 and s["density"] == pytest.approx(0.8 ** 8, abs=1e-3)
        elif s["pruner"] == "dissipating_gradients":  # 2 epochs, epochs_to_prune=2: one pruning step (warned)
            assert s["density"] == pytest.approx(0.6, abs=2e-3)
        else:
            assert s["density"] == pytest.approx(0.2, abs=2e-3)
        assert "effective_sparsity" in s
