"""Files from others never run code: a ``last.ckpt`` or ``masks.pt`` whose pickle would call a function is
refused, naming the file, when a run resumes from it, when the plots compare masks and in
``scripts/compare_masks.py``; the files TicketLab writes load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ticketlab.errors import ConfigError
from ticketlab.runner.run import run
from ticketlab.sweeps.experiments import ReportSpec
from ticketlab.sweeps.plots import mask_diversity

from .test_status import crash_at

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling it calls ``open(marker, "w")``: the stand-in for any code a hostile file would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile(path: Path, marker: Path, **extra) -> None:
    torch.save({"masks": {"net.0.weight": torch.ones(3, dtype=torch.bool)}, "payload": _Payload(marker), **extra},
               path)


def _stopped_run(cfg_factory, tmp_path, monkeypatch) -> Path:
    """A run that crashed after 3 steps: it holds last.ckpt and would resume from it."""
    with monkeypatch.context() as m:
        crash_at(m, 4, RuntimeError("power cut"))
        with pytest.raises(RuntimeError, match="power cut"):
            run(cfg_factory("trainer.epochs=2", "trainer.checkpoint_every_min=0"), run_dir=tmp_path / "run")
    return tmp_path / "run"


def test_a_hostile_checkpoint_is_refused_on_resume_without_running_it(cfg_factory, tmp_path, monkeypatch):
    folder = _stopped_run(cfg_factory, tmp_path, monkeypatch)
    ours = torch.load(folder / "last.ckpt", weights_only=True)  # what TicketLab writes needs no unpickler
    assert isinstance(ours["rng"]["numpy"][1], torch.Tensor)  # NumPy's RNG keys as a tensor, not an ndarray
    marker = tmp_path / "pwned"
    _hostile(folder / "last.ckpt", marker)
    before = (folder / "last.ckpt").read_bytes()
    with pytest.raises(ConfigError, match=r"last\.ckpt holds more than tensors and plain values") as e:
        run(cfg_factory("trainer.epochs=2", "trainer.checkpoint_every_min=0"), run_dir=folder)
    assert "trainer.resume=fresh" in str(e.value)
    assert not marker.exists()  # the payload never ran
    assert (folder / "last.ckpt").read_bytes() == before  # and the file is left for the user to inspect


def test_hostile_masks_are_refused_by_compare_masks_and_left_out_of_the_plots(cfg_factory, tmp_path):
    runs = []
    for seed in (1, 2, 3):
        folder = tmp_path / f"s{seed}"
        run(cfg_factory("trainer.epochs=1", f"init.score_seed={seed}"), run_dir=folder)
        runs.append(folder)
    marker = tmp_path / "pwned"
    _hostile(runs[2] / "masks.pt", marker, weight_seed=0, score_seed=3)

    r = subprocess.run([sys.executable, "scripts/compare_masks.py", *map(str, runs)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{runs[2] / 'masks.pt'} holds more than tensors and plain values" in r.stderr
    assert not marker.exists()

    df = pd.DataFrame([{"status": "completed", "run_dir": str(f), "pruner.name": "edge_popup", "seed": 0,
                        "target_density": 0.5, "density": 0.5} for f in runs])
    spec = ReportSpec(name="t/diversity", rows=["pruner.name"], cols=[])
    files = mask_diversity(df, spec, tmp_path / "plots")
    assert files and all(p.exists() for p in files)  # drawn from the two readable mask files
    assert not marker.exists()
