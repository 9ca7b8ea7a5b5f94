"""scripts/compare_masks.py on real run folders."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ticketlab.run import run

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
