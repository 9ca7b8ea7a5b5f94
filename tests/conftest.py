"""Shared fixtures: Hydra composition of the real ``conf/``, run folders, and the data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ticketlab import resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

resolvers.register()  # every schema and resolver, before any test composes a config

# pytest-xdist runs N workers side by side; each worker, and each train.py it starts, gets cores / N CPU threads
# (torch's own default takes every core in each, and the oversubscribed suite ran several times slower; the
# README's "CPU threads" has the numbers). Tests that set trainer.threads keep their own count.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Fast settings for in-process runs: no W&B, no progress bars, few epochs.
FAST = ["logger=none", "trainer.progress=false", "trainer.epochs=2"]


@pytest.fixture(autouse=True)
def _isolated_outputs(monkeypatch, tmp_path):
    """Every test writes runs, sweeps and W&B files under its own tmp_path (also in subprocesses)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("TICKETLAB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("TICKETLAB_CACHE", str(ROOT / ".cache" / "ticketlab"))


#: Devices the device-parametrized tests (marker ``devices``) run on: the CPU, and CUDA where there is one.
#: ``make test-gpu`` runs just their CUDA cases.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def compose_cfg(*overrides: str, config_name: str = "config") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``, as ``train.py`` would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture
def cfg_factory():
    """``cfg_factory(*overrides)`` -> composed config with the FAST settings first."""
    return lambda *o: compose_cfg(*FAST, *o)


@pytest.fixture(scope="session")
def masks_file(tmp_path_factory) -> Path:
    """A ``masks.pt`` for the default model on digits (random masks at sparsity 0.5), for ``pruner=from_file``."""
    from ticketlab.runner.build import setup
    from ticketlab.sparsity.report import mask_dict

    folder = tmp_path_factory.mktemp("masks")
    job = setup(compose_cfg(*FAST, "pruner=random", "pruner.sparsity=0.5", "init=kaiming_normal"), run_dir=folder)
    path = folder / "masks.pt"
    torch.save({"masks": mask_dict(job.trainer.model)}, path)
    return path


def method_of(overrides: list[str]) -> str:
    """The method a case's overrides select (``edge_popup``, the default, when none does)."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("pruner=")), "edge_popup")


def _data_root() -> Path | None:
    """``$DATA_DIR``, else the default data root ``data/`` of the checkout when `make data` has filled it."""
    d = os.environ.get("DATA_DIR")
    if d:
        return Path(d) if Path(d).is_dir() else None
    default = ROOT / "data"
    return default if default.is_dir() and any(default.iterdir()) else None


@pytest.fixture
def data_dir() -> Path:
    """The real-data root (``DATA_DIR``). Skips outside CI when absent; fails in CI."""
    d = _data_root()
    if d is None:
        msg = "DATA_DIR is not set to a folder with the real datasets (run `make test`, which prepares data/)"
        if IN_CI:
            pytest.fail(f"real-data tests are mandatory in CI: {msg}")
        pytest.skip(msg)
    return d


def require(path: Path, what: str) -> None:
    """Skip (fail in CI) when a real dataset is missing under DATA_DIR."""
    if not path.exists():
        msg = f"{what} not found at {path}"
        if IN_CI:
            pytest.fail(f"real-data tests are mandatory in CI: {msg}")
        pytest.skip(msg)


def _git_status() -> set[str] | None:
    """``git status --porcelain`` lines of the repository (``None`` outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(out.stdout.splitlines()) if out.returncode == 0 else None


def pytest_sessionstart(session):
    """Remember the working tree's state: the suite must leave it as it found it."""
    session.config._git_status_at_start = _git_status()


def pytest_sessionfinish(session, exitstatus):
    """Fail the session if the tests changed the working tree (a stray file, a cache outside .gitignore)."""
    start = getattr(session.config, "_git_status_at_start", None)
    end = _git_status()
    if start is None or end is None:
        return
    new = sorted(end - start)
    if new:
        print("\nthe test suite changed the working tree (git status --porcelain):\n  " + "\n  ".join(new))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
