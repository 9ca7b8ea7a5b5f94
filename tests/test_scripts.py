"""scripts/compare_masks.py on real run folders; scripts/bench.py's mechanics (not its timings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ticketlab.runner.run import run

from .conftest import ROOT


def test_compare_masks_same_weights_different_scores(cfg_factory, tmp_path):
    dirs = []
    for score_seed in (1, 2, 3):
        d = tmp_path / f"s{score_seed}"
        run(cfg_factory("init.weight_seed=0", f"init.score_seed={score_seed}"), run_dir=d)
        dirs.append(str(d))
    csv_path = tmp_path / "pairs.csv"
    p = subprocess.run([sys.executable, "scripts/compare_masks.py", *dirs, "--csv", str(csv_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "same weight seed: yes" in p.stdout
    assert "mean over 3 pairs" in p.stdout
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 1 + 3 * 4  # header + 3 pairs x (3 layers + all)
    chance_line = [r for r in rows if ",all," in r][0].split(",")
    assert float(chance_line[6]) == pytest.approx(0.5) and float(chance_line[8]) == pytest.approx(1 / 3)


def test_compare_masks_needs_two_runs(tmp_path):
    p = subprocess.run([sys.executable, "scripts/compare_masks.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "at least two" in p.stderr


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ticketlab_bench", ROOT / "scripts" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_step_times_take_turns_and_rotate():
    """Every variant steps once per round and goes first in its turn (no variant always after another)."""
    bench = _bench_module()
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = bench.step_times(fns, torch.device("cpu"), steps=5, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5, "c": 5}
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds) and len(rounds) == 6
    assert [r[0] for r in rounds] == ["a", "b", "c", "a", "b", "c"]


def test_bench_step_reports_pooled_instances(tmp_path):
    p = subprocess.run([sys.executable, "scripts/bench.py", "model=mlp", "model.widths=[32]", "dataset=digits",
                        "bench.steps=2", "bench.warmup=1", "bench.instances=2", "trainer.threads=1",
                        f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["instances"] == 2 and res["threads"] == 1
    for name in ("dense", "edge_popup", "same_weights"):
        each = res[f"{name}_instances_s"]
        assert len(each) == 2 and min(each) <= res[f"{name}_s"] <= max(each)  # the median of the pooled steps
    assert res["ratio"] == pytest.approx(res["edge_popup_s"] / res["dense_s"])
    assert "edge-popup / dense" in p.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("bench.what=nope", "bench.what='nope' is not known; allowed: step, pai, suite"),
    ("bench.instances=0", "bench.instances=0 is not allowed; allowed: an integer >= 1"),
])
def test_bench_rejects_bad_settings(tmp_path, override, message):
    p = subprocess.run([sys.executable, "scripts/bench.py", override, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and message in p.stderr
    assert not (tmp_path / "bench.json").exists()
