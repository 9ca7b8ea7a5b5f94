"""`ticketlab runs`: every run under an output folder with its readable name, status, method, density, test
accuracy and folder, filtered by config keys or summary fields; on a folder with completed, failed and
preempted runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ticketlab.errors import Preempted
from ticketlab.runner.identity import compute, runs_root
from ticketlab.runner.run import run
from ticketlab.runs import list_runs, parse_filters

from .conftest import ROOT
from .test_resume import stop_after
from .test_status import crash_at


@pytest.fixture
def outputs(cfg_factory, tmp_path, monkeypatch):
    """An output folder with a completed edge-popup run, a completed SNIP run, a failed and a preempted run."""
    out = tmp_path / "outputs"

    def start(*overrides):
        cfg = cfg_factory(*overrides, f"paths.output_dir={out}")
        return run(cfg, run_dir=runs_root(cfg) / compute(cfg).folder)

    start("pruner.sparsity=0.5")
    start("pruner=snip", "init=kaiming_normal", "pruner.sparsity=0.8")
    with monkeypatch.context() as m:
        crash_at(m, 5)
        with pytest.raises(RuntimeError):
            start("pruner=random", "pruner.sparsity=0.7", "init=kaiming_normal")
    with monkeypatch.context() as m:
        stop_after(m, 3)
        with pytest.raises(Preempted):
            start("pruner.sparsity=0.9", "seed=1")
    return out


def test_the_listing_shows_every_run_with_its_status_and_numbers(outputs):
    rows = {r["status"]: r for r in list_runs(outputs / "runs")}
    every = list_runs(outputs / "runs")
    assert sorted(r["status"] for r in every) == ["completed", "completed", "failed", "preempted"]
    by_method = {(r["method"], r["status"]) for r in every}
    assert by_method == {("edge_popup", "completed"), ("snip", "completed"), ("random", "failed"),
                         ("edge_popup", "preempted")}
    snip = next(r for r in every if r["method"] == "snip")
    assert snip["name"] == "snip-mlp-digits-s0.8-seed0" and snip["density"] == pytest.approx(0.2, abs=1e-3)
    assert 0 < snip["test_acc"] <= 1 and snip["folder"].endswith(snip["name"] + "-" + snip["folder"][-10:])
    assert rows["failed"]["test_acc"] is None


def test_filters_select_by_config_key_and_summary_field(outputs):
    names = lambda *f: sorted(r["name"] for r in list_runs(outputs / "runs", parse_filters(list(f))))  # noqa: E731
    assert names("pruner.name=snip") == ["snip-mlp-digits-s0.8-seed0"]
    assert names("status=failed") == ["random-mlp-digits-s0.7-seed0"]
    assert names("pruner.name=edge_popup", "seed=1") == ["edge_popup-mlp-digits-s0.9-seed1"]
    assert names("pruner.sparsity=0.5") == ["edge_popup-mlp-digits-s0.5-seed0"]
    assert names("pruner.name=grasp") == []


@pytest.mark.slow
def test_the_command_prints_the_table_and_exits_by_what_it_found(outputs):
    env = {**os.environ, "TICKETLAB_OUTPUTS": str(outputs)}
    cmd = [sys.executable, "-m", "ticketlab.commands", "runs"]
    r = subprocess.run([*cmd, "pruner.name=snip"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    header, line = r.stdout.strip().splitlines()
    assert header.split()[:4] == ["name", "status", "method", "model"]
    assert line.split()[:4] == ["snip-mlp-digits-s0.8-seed0", "completed", "snip", "mlp"]
    assert "1 run(s)" in r.stderr
    none = subprocess.run([*cmd, "pruner.name=grasp"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert none.returncode == 1 and "no run" in none.stderr
    bad = subprocess.run([*cmd, "pruner.name"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "not KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr


def test_a_damaged_summary_is_listed_as_damaged(outputs):
    snip = next(r for r in list_runs(outputs / "runs") if r["method"] == "snip")
    summary = os.path.join(snip["folder"], "summary.json")
    with open(summary) as f:
        text = f.read()
    with open(summary, "w") as f:
        f.write(text[:30])  # truncated mid-write by a full disk, say
    again = {r["folder"]: r for r in list_runs(outputs / "runs")}
    assert again[snip["folder"]]["status"] == "damaged summary.json" and again[snip["folder"]]["test_acc"] is None
