"""A run never lies about itself: diverged and failed runs say so; the same command skips, continues,
or (asked to) starts afresh without deleting anything; W&B follows the run's identity."""

from __future__ import annotations

import errno
import json

import pytest
import torch

import ticketlab.runner.attempt
import ticketlab.runner.build
import ticketlab.training.loop
from ticketlab.errors import ConfigError
from ticketlab.runner.identity import compute
from ticketlab.runner.run import run

from .wandb_reader import read_run, wait_until_final


def summary_of(path):
    return json.loads((path / "summary.json").read_text())


# --------------------------------------------------------------------------- diverged
def test_nonfinite_loss_stops_the_run_as_diverged(cfg_factory, tmp_path):
    s = run(cfg_factory("pruner=dense", "pruner.sparsity=0", "optimizer.lr=1e4", "trainer.epochs=3"), run_dir=tmp_path)
    assert s["status"] == "diverged"
    d = s["diverged"]
    assert d["what"] == "loss" and d["epoch"] == 1 and 1 <= d["step"] < 23 and d["lr"] == 1e4
    assert "lower optimizer.lr" in d["message"]
    assert summary_of(tmp_path) == json.loads(json.dumps(s))  # the file says the same, as strict JSON
    assert not (tmp_path / "masks.pt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["attempts"][-1]["status"] == "diverged"


def test_nonfinite_scores_never_become_an_empty_mask(cfg_factory, tmp_path):
    s = run(cfg_factory("optimizer.lr=1e38", "trainer.epochs=2"), run_dir=tmp_path)
    assert s["status"] == "diverged" and s["diverged"]["what"] == "scores"
    assert s["sparsity"] != 1.0  # never "completed at sparsity 1.0"


def test_topk_returns_exactly_k_or_raises():
    from ticketlab.errors import NonFiniteError
    from ticketlab.sparsity.selection import topk_mask

    key = torch.randn(10000)
    assert int(topk_mask(key, 123).sum()) == 123
    key[[3, 500, 9000]] = float("nan")
    with pytest.raises(NonFiniteError, match="3 of them are NaN"):
        topk_mask(key, 123)
    inf = torch.randn(10000)
    inf[:5] = float("inf")
    assert int(topk_mask(inf, 7).sum()) == 7  # infinity is ordered


def test_a_diverged_run_is_not_run_again(cfg_factory, tmp_path):
    overrides = ("pruner=dense", "pruner.sparsity=0", "optimizer.lr=1e4")
    run(cfg_factory(*overrides), run_dir=tmp_path)
    again = run(cfg_factory(*overrides), run_dir=tmp_path)
    assert again["skipped"] and again["status"] == "diverged"


# --------------------------------------------------------------------------- failed
def crash_at(monkeypatch, n, exc=None):
    exc = exc if exc is not None else RuntimeError("simulated crash")
    real = ticketlab.training.loop.train_step
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(ticketlab.training.loop, "train_step", crashing)


def test_a_crash_is_recorded_and_the_rerun_continues(cfg_factory, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        crash_at(m, 30)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(cfg_factory(), run_dir=tmp_path)
    s = summary_of(tmp_path)
    assert s["status"] == "failed" and s["epochs"] == 1
    assert s["error"]["type"] == "RuntimeError" and s["error"]["message"] == "simulated crash"
    assert "test_status.py" in s["error"]["where"] and "crashing" in s["error"]["where"]
    log = (tmp_path / "train.log").read_text()
    assert "Traceback" in log and "simulated crash" in log
    again = run(cfg_factory(), run_dir=tmp_path)  # continues from the epoch-1 checkpoint
    assert again["status"] == "completed" and again["attempts"] == 2
    assert json.loads((tmp_path / "attempts" / "1" / "summary.json").read_text())["status"] == "failed"


def test_a_full_disk_while_reporting_never_hides_the_error(cfg_factory, tmp_path, monkeypatch, caplog):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        crash_at(m, 5, RuntimeError("the real problem"))
        m.setattr(ticketlab.runner.attempt, "atomic_write_json", no_space)
        m.setattr(ticketlab.runner.attempt, "atomic_torch_save", no_space)
        with pytest.raises(RuntimeError, match="the real problem"):
            run(cfg_factory(), run_dir=tmp_path)
    assert "could not write summary.json (OSError: [Errno 28] No space left on device)" in caplog.text
    assert "failed: RuntimeError: the real problem" in caplog.text


def test_a_crash_while_building_is_recorded(cfg_factory, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("cannot allocate the model")

    monkeypatch.setattr(ticketlab.runner.build, "build_model", broken)
    with pytest.raises(MemoryError):
        run(cfg_factory(), run_dir=tmp_path)
    s = summary_of(tmp_path)
    assert s["status"] == "failed" and s["error"]["type"] == "MemoryError"
    assert "MemoryError" in (tmp_path / "train.log").read_text()


# --------------------------------------------------------------------------- the same command again
def test_completed_run_is_skipped_and_untouched(cfg_factory, tmp_path):
    first = run(cfg_factory(), run_dir=tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = run(cfg_factory("logger=wandb", "trainer.progress=true"), run_dir=tmp_path)  # not result-affecting
    assert again["skipped"] and again["test_acc"] == first["test_acc"]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps


def test_resume_never_refuses_and_fresh_moves_aside(cfg_factory, tmp_path):
    first = run(cfg_factory(), run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"already holds this run \(status completed\) and trainer.resume=never"):
        run(cfg_factory("trainer.resume=never"), run_dir=tmp_path / "run")
    again = run(cfg_factory("trainer.resume=fresh"), run_dir=tmp_path / "run")
    assert not again.get("skipped") and again["test_acc"] == first["test_acc"]  # same config, same result
    (moved,) = tmp_path.glob("run.moved-*")
    assert summary_of(moved)["run_dir"] == str(tmp_path / "run")  # the old run, kept whole
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["generation"] == 2 and len(record["attempts"]) == 1


def test_identity_folder_is_found_again(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = cfg_factory("paths.output_dir=out")
    s = run(cfg)
    expected = tmp_path / "out" / "runs" / compute(cfg).folder
    assert s["run_dir"] == str(expected) and expected.name.startswith("edge_popup-mlp-digits-s0.5-seed0-")
    assert run(cfg_factory("paths.output_dir=out"))["skipped"]


# --------------------------------------------------------------------------- W&B follows the run
def test_wandb_run_id_follows_the_identity_and_continues_on_resume(cfg_factory, tmp_path, monkeypatch):
    from .test_resume import stop_after

    monkeypatch.delenv("WANDB_MODE", raising=False)
    overrides = ("logger=wandb", "trainer.epochs=3")
    ident = compute(cfg_factory(*overrides))
    from ticketlab.errors import Preempted

    with monkeypatch.context() as m:
        stop_after(m, 30)
        with pytest.raises(Preempted):
            run(cfg_factory(*overrides), run_dir=tmp_path / "run")
    run(cfg_factory(*overrides), run_dir=tmp_path / "run")
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{ident.digest[:16]}.wandb" for f in files)  # one W&B run id
    for f in files:
        wait_until_final(f)
    epochs = [[row["epoch"] for row in read_run(f)["history"] if "epoch" in row] for f in files]
    assert epochs[0] == [1] and epochs[1][-2:] == [2, 3]  # the second attempt continues after epoch 1


def test_wandb_online_without_a_server_falls_back_to_offline_quickly(cfg_factory, tmp_path, monkeypatch, caplog):
    import time

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    t = time.perf_counter()
    s = run(cfg_factory("logger=wandb", "logger.mode=online", "trainer.epochs=1"), run_dir=tmp_path / "run")
    assert s["status"] == "completed"
    assert "cannot be reached; logging offline" in caplog.text
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert time.perf_counter() - t < 30  # not W&B's own 90 s wait
