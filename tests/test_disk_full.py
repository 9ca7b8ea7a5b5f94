"""A full disk while a checkpoint is written: the write fails atomically (the previous checkpoint is kept, no
partial file is left), the run says why with the path and the space needed, its status is `failed`, and the
same command resumes once there is space, ending where an uninterrupted run ends.

The file system is a real tmpfs, sized so that the first checkpoint fits and the second does not (an atomic
write needs the old and the new file at once); mounting needs root, so the test skips without it outside CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import IN_CI, ROOT

ARGS = ["logger=none", "trainer.progress=false", "trainer.epochs=3", "trainer.threads=1"]


def _train(*args):
    r = subprocess.run([sys.executable, "train.py", *ARGS, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    return r.returncode, r.stdout + r.stderr


@pytest.fixture
def small_fs(tmp_path):
    """``mount(size)``: a tmpfs of that many bytes at ``tmp_path / "small"``; resized by calling it again."""
    d = tmp_path / "small"
    d.mkdir()
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the full-disk test needs root in CI (it mounts a small tmpfs)")
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    def mount(size: int):
        opts = f"size={size}" if not mounted else f"remount,size={size}"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr[-200:]}")
        mounted.append(size)
        return d

    yield mount
    if mounted:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_a_full_disk_at_a_checkpoint_fails_cleanly_and_the_same_command_resumes(tmp_path, small_fs):
    code, out = _train(f"hydra.run.dir={tmp_path / 'twin'}", "trainer.keep_checkpoint=true")
    assert code == 0, out[-2000:]
    size = (tmp_path / "twin" / "last.ckpt").stat().st_size
    folder = small_fs(int(size * 1.5) + 256 * 1024) / "run"  # one checkpoint fits, two at once do not

    code, out = _train(f"hydra.run.dir={folder}")
    assert code == 1 and "Traceback" not in out, out[-3000:]
    assert f"no space left on the device holding {folder}: last.ckpt needs more than" in out
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]["type"] == "DiskFullError"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".last.ckpt.")]  # no partial file left
    kept = torch.load(folder / "last.ckpt", weights_only=True)  # the last good checkpoint, whole
    assert kept["epoch"] < 3

    small_fs(64 * 2 ** 20)  # space freed
    code, out = _train(f"hydra.run.dir={folder}")
    assert code == 0 and "continuing from last.ckpt (last status: failed)" in out, out[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (folder, tmp_path / "twin"))
    assert a["status"] == "completed" and (a["test_acc"], a["sparsity"]) == (b["test_acc"], b["sparsity"])
    ma, mb = (torch.load(d / "masks.pt", weights_only=True)["masks"] for d in (folder, tmp_path / "twin"))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
