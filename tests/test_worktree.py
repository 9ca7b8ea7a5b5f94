"""The working tree is unchanged by runs and by the suite (the session hook in conftest.py checks the
whole suite; this test checks a real run from the repository root with the default paths)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT, _git_status


@pytest.mark.slow
def test_a_default_run_writes_only_ignored_paths(tmp_path, monkeypatch):
    before = _git_status()
    if before is None:
        pytest.skip("not a git checkout")
    monkeypatch.delenv("TICKETLAB_OUTPUTS")  # the real default: <repo>/outputs (git-ignored)
    p = subprocess.run([sys.executable, "train.py", "trainer.epochs=1", "logger=none", "trainer.progress=false",
                        "seed=918273"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    runs = list((ROOT / "outputs" / "runs").glob("edge_popup-mlp-digits-s0.5-seed918273-*"))
    try:
        assert len(runs) == 1 and (runs[0] / "summary.json").exists()
        assert _git_status() == before
    finally:
        for r in runs:
            shutil.rmtree(r)


def test_gitignore_covers_outputs_caches_and_data():
    ignored = (ROOT / ".gitignore").read_text().split()
    for path in ("/outputs/", "/.cache/", "/data/", "/.venv/", "/wandb/"):
        assert path in ignored
