"""``train.py`` in a subprocess: sweeps that isolate failures and resume, signals, kill -9, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import ROOT
from .wandb_reader import read_run

pytestmark = pytest.mark.slow

FAST = ["logger=none", "trainer.progress=false"]

# Runs train.py with one job made to crash mid-training (pruner.sparsity=0.7), as a real bug would.
CRASHY = """
import runpy, sys
import ticketlab.pruners.base as base
real = base.MainPhase.on_epoch_end
def on_epoch_end(self, state):
    if abs(self.pruner.cfg.sparsity - 0.7) < 1e-9:
        raise RuntimeError("injected crash for sparsity 0.7")
    return real(self, state)
base.MainPhase.on_epoch_end = on_epoch_end
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def launch(*args, env=None, script=None):
    cmd = [sys.executable, *(["-c", script] if script else ["train.py"]), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WANDB_SILENT": "true", **(env or {})})


def finish(p, timeout=300):
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def train(*args, **kw):
    return finish(launch(*args, **kw))


def test_sweep_isolates_bad_values_and_crashes_and_relaunch_runs_nothing_twice(tmp_path):
    sparsities = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.5,-0.1,0.95"  # 12 jobs: 2 invalid, 1 crashes
    args = ["-m", f"pruner.sparsity={sparsities}", "trainer.epochs=1", *FAST, f"hydra.sweep.dir={tmp_path / 'sw'}"]
    code, out = train(*args, script=CRASHY)
    assert code != 0, out[-3000:]
    assert "Traceback" not in out
    jobs = {r["num"]: r for r in map(json.loads, ((tmp_path / "sw" / "jobs" / f"{i}.json").read_text()
                                                  for i in range(12)))}
    status = {j: r["status"] for j, r in jobs.items()}
    assert sorted(status.values()) == ["completed"] * 9 + ["failed"] + ["invalid"] * 2
    assert "pruner.sparsity=1.5 is out of range" in jobs[9]["reason"]
    assert "pruner.sparsity=-0.1 is out of range" in jobs[10]["reason"]
    assert "injected crash for sparsity 0.7" in jobs[6]["reason"]
    assert "12 job(s): 9 completed, 1 failed, 2 invalid" in out
    for j in range(12):  # one line per job in the report
        assert f"#{j} " in out
    for j in (9, 10):  # an invalid job has no run folder and no link (not one to the project root)
        assert jobs[j]["run_dir"] is None and not (tmp_path / "sw" / str(j)).is_symlink()
    crashed = json.loads((tmp_path / "sw" / "6" / "summary.json").read_text())  # the link to its run folder
    assert crashed["status"] == "failed" and "injected crash" in crashed["error"]["message"]
    stamps = {j: (tmp_path / "sw" / str(j) / "summary.json").stat().st_mtime_ns for j in range(9) if j != 6}
    # the same sweep again: completed runs are skipped, only the failed and invalid ones run
    code, out = train(*args, script=CRASHY)
    assert code != 0
    again = {r["num"]: r["status"] for r in (json.loads((tmp_path / "sw" / "jobs" / f"{i}.json").read_text())
                                             for i in range(12))}
    assert sorted(again.values()) == ["failed"] + ["invalid"] * 2 + ["skipped"] * 9
    assert all((tmp_path / "sw" / str(j) / "summary.json").stat().st_mtime_ns == t for j, t in stamps.items())


def test_sweep_names_its_folder_and_wandb_runs_after_the_command(tmp_path):
    args = ["-m", "init.weight_seed=0", "init.score_seed=1,2,3", "trainer.epochs=1", "logger=wandb",
            "trainer.progress=false"]
    code, out = train(*args, env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb")})
    assert code == 0, out[-3000:]
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert sweep.name.startswith("score_seed-")
    names, groups, types, ids = set(), set(), set(), set()
    for f in (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"):
        r = read_run(f)["run"]
        names.add(r["display_name"])
        groups.add(r["run_group"])
        types.add(r["job_type"])
        ids.add(r["run_id"])
    assert len(names) == 3 and all("init.score_seed=" in n for n in names)  # unique, readable
    assert groups == {sweep.name} and types == {"edge_popup"} and len(ids) == 3
    code, out = train(*args, env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb")})
    assert code == 0 and "3 skipped" in out  # relaunched: nothing runs, no new W&B run
    assert len(list((tmp_path / "wb" / "wandb").glob("offline-run-*"))) == 3


def wait_for(path: Path, timeout: float = 120) -> None:
    t = time.time()
    while not path.exists():
        assert time.time() - t < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted_masks(tmp_path_factory):
    """The masks of the uninterrupted 40-epoch run the signal tests are compared with (computed once per worker)."""
    d = tmp_path_factory.mktemp("twin")
    rc, out = train("trainer.epochs=40", *FAST, f"hydra.run.dir={d / 'run'}",
                    env={"TICKETLAB_OUTPUTS": str(d / "outputs"), "WANDB_DIR": str(d)})
    assert rc == 0, out[-3000:]
    return torch.load(d / "run" / "masks.pt", weights_only=False)["masks"]


@pytest.mark.xdist_group("signal_twin")  # one worker runs the three, so the twin run is made once
@pytest.mark.parametrize("sig,code,status", [(signal.SIGTERM, 143, "preempted"), (signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGUSR1, 138, "preempted")])
def test_signal_checkpoints_and_the_same_command_finishes_the_run(tmp_path, sig, code, status, uninterrupted_masks):
    args = ["trainer.epochs=40", *FAST, f"hydra.run.dir={tmp_path / 'run'}"]
    p = launch(*args)
    wait_for(tmp_path / "run" / "metrics.jsonl")  # a few epochs in
    p.send_signal(sig)
    rc, out = finish(p)
    assert rc == code, out[-3000:]
    assert "Traceback" not in out and "run the same command to continue" in out
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == status and s["stopped"]["checkpoint"] and s["epochs"] < 40
    assert (tmp_path / "run" / "masks.pt").exists()
    rc, out = train(*args)
    assert rc == 0 and json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    a = torch.load(tmp_path / "run" / "masks.pt", weights_only=False)["masks"]
    assert a.keys() == uninterrupted_masks.keys()
    assert all(torch.equal(a[k], uninterrupted_masks[k]) for k in a)


def test_kill_9_mid_epoch_then_the_same_command_equals_an_uninterrupted_run(tmp_path):
    args = ["trainer.epochs=100", "trainer.checkpoint_every_min=0.0005", "trainer.threads=1", *FAST]  # ~every 30 ms
    p = launch(*args, f"hydra.run.dir={tmp_path / 'run'}")
    wait_for(tmp_path / "run" / "metrics.jsonl")  # epoch 1 done; about 99 epochs (seconds) to go
    time.sleep(0.1)
    p.kill()
    finish(p)
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert not (tmp_path / "run" / "summary.json").exists()  # SIGKILL: no chance to write one
    rc, out = train(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert rc == 0, out[-3000:]
    assert "continuing from last.ckpt (last status: killed)" in out
    rc, _ = train(*args, f"hydra.run.dir={tmp_path / 'twin'}")
    a = torch.load(tmp_path / "run" / "masks.pt", weights_only=False)["masks"]
    b = torch.load(tmp_path / "twin" / "masks.pt", weights_only=False)["masks"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("run", "twin"))
    assert sa["test_acc"] == sb["test_acc"] and sa["attempts"] == 2
    assert ckpt["step"] > 0


def test_a_signal_stops_the_whole_sweep_and_the_relaunch_continues(tmp_path):
    args = ["-m", "seed=0,1,2", "trainer.epochs=60", *FAST, f"hydra.sweep.dir={tmp_path / 'sw'}"]
    p = launch(*args)
    wait_for(tmp_path / "sw" / "jobs" / "0.json")  # job 0 done
    t = time.time()
    while not list((tmp_path / "outputs" / "runs").glob("*-seed1-*/metrics.jsonl")):  # job 1 training
        assert time.time() - t < 120
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    rc, out = finish(p)
    assert rc == 143, out[-3000:]
    assert "Traceback" not in out
    statuses = {r["num"]: r["status"] for r in map(json.loads, (f.read_text() for f in
                                                                  (tmp_path / "sw" / "jobs").glob("*.json")))}
    assert statuses[0] == "completed" and statuses[1] == "preempted" and 2 not in statuses
    rc, out = train(*args)
    assert rc == 0 and "2 completed, 1 skipped" in out  # job 0 skipped, job 1 continued, job 2 ran
    s1 = json.loads((tmp_path / "sw" / "1" / "summary.json").read_text())
    assert s1["status"] == "completed" and s1["attempts"] == 2


def test_config_rejected_in_an_existing_folder_leaves_it_untouched(tmp_path):
    run_dir = tmp_path / "run"
    rc, _ = train("trainer.epochs=1", *FAST, f"hydra.run.dir={run_dir}")
    assert rc == 0
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for bad in (["pruner.sparsity=1.5"], ["pruner.sparsity=0.8"], ["+pruner.sparsty=0.9"]):
        rc, out = train("trainer.epochs=1", *FAST, f"hydra.run.dir={run_dir}", *bad)
        assert rc == 2 and "Traceback" not in out, out[-2000:]
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_local_parallel_launcher_runs_jobs_in_worker_processes(tmp_path):
    import joblib

    p = launch("-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "seed=0,1", "trainer.epochs=1", *FAST)
    code, out = finish(p)
    assert code == 0, out[-3000:]
    assert "2 job(s): 2 completed" in out
    # trainer.threads=0: each of the 2 parallel jobs gets its share of the cores (joblib's loky workers), not all
    assert out.count(f"({max(joblib.cpu_count() // 2, 1)} CPU threads)") == 2, out[-3000:]
    assert "over seeds" in out and "(n=2)" in out  # the mean ± std table of a sweep over seeds
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()  # the workers found the launcher's sweep folder
    assert {r.name for r in (sweep / "jobs").iterdir()} == {"0.json", "1.json"}
    pids = {json.loads((sweep / str(j) / "run.json").read_text())["attempts"][0]["pid"] for j in (0, 1)}
    assert p.pid not in pids  # the jobs ran in joblib's worker processes, not in train.py's


def test_the_slurm_launcher_on_a_machine_without_slurm_says_so(tmp_path):
    # PATH holds only the interpreter's folder: no srun or sbatch, whatever this machine has installed
    p = launch("-m", "hydra/launcher=slurm", "seed=0,1", "trainer.epochs=1", *FAST,
               env={"PATH": str(Path(sys.executable).parent), "TICKETLAB_OUTPUTS": str(tmp_path / "out")})
    code, out = finish(p)
    assert code == 2 and "Traceback" not in out, out[-3000:]
    assert "Slurm is not installed on this machine" in out and "hydra/launcher=local" in out
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written in: a read-only tmpfs as root, else a folder without write permission."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.decode()[-200:]}")
        yield d
        subprocess.run(["umount", str(d)], capture_output=True)
    else:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_a_run_or_sweep_folder_that_cannot_be_used_is_named_without_a_traceback(tmp_path, readonly_dir):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    cases = [([f"hydra.run.dir={a_file}"], "hydra.run.dir=", "is an existing file, not a folder"),
             ([f"hydra.run.dir={readonly_dir / 'run'}"], "hydra.run.dir=", "cannot be written"),
             (["-m", "seed=0,1", f"hydra.sweep.dir={readonly_dir / 'sw'}"], "hydra.sweep.dir=", "cannot be written"),
             (["-m", "seed=0,1", f"hydra.sweep.dir={a_file}"], "hydra.sweep.dir=", "is an existing file")]
    for args, key, why in cases:
        code, out = train(*args, "trainer.epochs=1", *FAST, env={"TICKETLAB_OUTPUTS": str(tmp_path / "out")})
        assert code == 2 and "Traceback" not in out, out[-3000:]
        assert key in out and why in out, out[-3000:]
    assert a_file.read_text() == "mine" and not (tmp_path / "out" / "runs").exists()
