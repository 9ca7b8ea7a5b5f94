"""One attempt of a run whose folder is ready: train, then report honestly whatever happened.

``summary.json`` says ``completed``, ``diverged`` (non-finite loss or scores, with where and a hint),
``preempted``/``interrupted`` (the signal and where) or ``failed`` (the error's type, message and
place; the traceback is in ``train.log``). A failure while writing results never hides the error
that caused it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ticketlab.errors import ConfigError, Diverged, NonFiniteError, Preempted, describe
from ticketlab.export import TICKET, ticket_state_dict
from ticketlab.files import UnsafeFileError, atomic_torch_save, atomic_write_json, load_tensors
from ticketlab.runner import hydra_job, rundir
from ticketlab.runner.build import Job
from ticketlab.runner.callbacks import TrackerLog
from ticketlab.runner.identity import RunIdentity
from ticketlab.runner.summary import structure_summary, summarize
from ticketlab.runner.tracking import Tracker
from ticketlab.sparsity.report import mask_dict
from ticketlab.sparsity.selection import density_of
from ticketlab.sparsity.structure import mask_structure, mask_warnings

log = logging.getLogger(__name__)


class RunLog:
    """``<run>/train.log``: the ``ticketlab`` loggers' records for the duration of an attempt (appended)."""

    FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(self.FORMAT))
        self.logger = logging.getLogger("ticketlab")
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)

    def traceback(self, exc: BaseException) -> None:
        """Write ``exc``'s traceback to the file only (the console gets one line)."""
        record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "traceback:", None,
                                   (type(exc), exc, exc.__traceback__))
        self.handler.handle(record)

    def close(self) -> None:
        """Detach and close the file."""
        self.logger.removeHandler(self.handler)
        self.handler.close()


def error_record(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", "where"}`` of an exception (``where``: the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = None
    if frames:
        f = frames[-1]
        where = f"{os.path.relpath(f.filename) if f.filename.startswith(os.getcwd()) else f.filename}:{f.lineno} " \
                f"in {f.name}"
    return {"type": type(exc).__name__, "message": str(exc).strip(), "where": where}


def record_setup_crash(run_dir: Path, ident: RunIdentity, decision: rundir.Decision, exc: BaseException) -> None:
    """A crash before training (out of memory while building, an I/O error): summary, log and attempt record."""
    try:
        if decision.action == "fresh":
            rundir.move_aside(run_dir)
            run_dir.mkdir(parents=True)
        rundir.start_attempt(run_dir, ident, decision.generation, hydra_job.overrides(), None)
        runlog = RunLog(run_dir / "train.log")
        try:
            runlog.traceback(exc)
        finally:
            runlog.close()
        summary = {"status": "failed", "error": error_record(exc), "run_id": ident.digest, "run_name": ident.name,
                   "run_dir": str(run_dir), "epochs": 0}
        atomic_write_json(run_dir / rundir.SUMMARY, summary)
        rundir.end_attempt(run_dir, "failed")
        report(summary, run_dir)
    except Exception as e:  # never hide the crash behind a failure to record it
        log.error("could not record the failure in %s (%s: %s)", run_dir, type(e).__name__, e)


def load_checkpoint(path: Path, job: Job) -> dict[str, Any]:
    """Read ``last.ckpt`` and load it into the job.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain values only, so a run folder
    received from someone else cannot run code when it is resumed.

    Raises:
        ConfigError: the file is unreadable, holds anything but tensors and plain values, or does not fit
            this run (naming the file).
    """
    try:
        ckpt = load_tensors(path)
        job.trainer.load_state_dict(ckpt)
    except UnsafeFileError as e:
        raise ConfigError(f"{e}; move it aside to start the run again in place, or use trainer.resume=fresh.") \
            from None
    except Exception as e:
        raise ConfigError(f"{path} cannot be used to continue this run ({describe(e)}); move it aside "
                          "to start the run again in place, or use trainer.resume=fresh.") from e
    return ckpt


def _announce(job: Job, ident: RunIdentity, attempt: int, reason: str) -> None:
    """Log what runs, where, and the warnings found so far."""
    rc, trainer = job.rc, job.trainer
    log.info("run %s (id %s, attempt %d): %s | %s on %s, %s init, pruner %s at sparsity %.4f (density %.4f), "
             "device %s%s, %d train / %d test images", job.run_dir, ident.short, attempt, reason, rc.model.name,
             rc.dataset.name, rc.init.name, rc.pruner.name, job.pruner.target_sparsity,
             density_of(job.pruner.target_sparsity), trainer.device,
             f" ({torch.get_num_threads()} CPU threads)" if trainer.device.type == "cpu" else "",
             trainer.data.num_train, trainer.data.num_test)
    for w in job.warnings:
        log.warning("%s", w)


def _start(job: Job) -> list[str]:
    """A fresh run: compute the starting mask and checkpoint it. Returns the mask-structure warnings."""
    trainer = job.trainer
    data = trainer.data
    try:
        job.pruner.initialize(trainer.model, job.ctx)
    except NonFiniteError as e:
        raise Diverged(e.what, "initialize", 0, 0, None) from e
    new: list[str] = []
    target = job.pruner.target_sparsity
    if target > 0:
        try:
            new = mask_warnings(mask_structure(trainer.model, data.input_shape), target)
        except Exception:  # a metric must never cost the run
            new = []
        for w in new:
            log.warning("%s", w)
    trainer.checkpoint()  # the initialized state: a resume never recomputes the mask
    job.stop.check("initialization")
    return new


def _stopped(signal_name: str, where: str, run_dir: Path) -> dict[str, Any]:
    return {"stopped": {"signal": signal_name, "where": where, "checkpoint": (run_dir / rundir.CHECKPOINT).exists()}}


def run_attempt(job: Job, ident: RunIdentity, group: str | None, ckpt: dict[str, Any] | None, attempt: int,
                decision: rundir.Decision) -> dict[str, Any]:
    """Train one attempt of a run whose folder is ready; write its summary whatever happens (rank 0).

    Args:
        job: the built run.
        ident: its identity.
        group: the W&B group (the sweep, or the multi-stage parent).
        ckpt: the checkpoint the attempt continues from (already loaded into ``job``), or ``None``.
        attempt: the attempt's number (from 1).
        decision: what the folder's state asked for (its W&B generation, the reason to log).

    Returns:
        The summary (``status`` completed or diverged).

    Raises:
        Preempted, KeyboardInterrupt: a stop (summary written first).
        Exception: the crash of a failed run (summary written first).
    """
    trainer, run_dir, main = job.trainer, job.run_dir, job.placement.dist.main
    runlog = RunLog(run_dir / "train.log") if main else None
    t0 = time.perf_counter()
    previous_wall = ((rundir.inspect(run_dir).summary or {}).get("wall_s") or 0.0) if ckpt is not None else 0.0
    wandb_id = ident.digest[:16] + (f"-g{decision.generation}" if decision.generation > 1 else "")
    logger_cfg = job.rc.logger if main else dataclasses.replace(job.rc.logger, name="none")
    tracker = Tracker(logger_cfg, run_dir, job.resolved, run_id=wandb_id,
                      name=hydra_job.display_name(ident, hydra_job.overrides()), group=group,
                      job_type=job.rc.pruner.name)
    trainer.callbacks.append(TrackerLog(tracker))
    status, outcome, to_raise, warnings = "failed", {}, None, list(job.warnings)
    try:
        with job.stop:
            _announce(job, ident, attempt, decision.reason)
            if ckpt is not None:
                trainer.notify_resume()
            else:
                warnings += _start(job)
            trainer.fit()
            status = "completed"
    except Diverged as d:
        status, outcome = "diverged", {"diverged": d.record()}
    except Preempted as p:
        status, to_raise, outcome = p.status, p, _stopped(p.signal_name, p.where or trainer.where(), run_dir)
    except KeyboardInterrupt as k:  # a second Ctrl-C: no checkpoint of this step
        status, to_raise, outcome = "interrupted", k, _stopped("SIGINT", trainer.where(), run_dir)
    except BaseException as e:
        status, to_raise, outcome = "failed", e, {"error": error_record(e)}
        if runlog is not None:
            runlog.traceback(e)
    summary = finish(job, ident, status, outcome, warnings, previous_wall + time.perf_counter() - t0, attempt,
                     tracker, runlog)
    if to_raise is not None:
        raise to_raise
    return summary


def ticket_record(job: Job, summary: dict[str, Any]) -> dict[str, Any]:
    """What ``ticket.pt`` holds: ``state_dict`` (:func:`~ticketlab.sparsity.masks.ticket_state_dict`: loads into
    the plain architecture), ``masks`` (``{"<layer>.weight": bool tensor}``, as ``masks.pt``), the ``model``
    config, ``input_shape`` ``(C, H, W)``, ``num_classes``, the run's ``test_acc`` and ``run_id``. Only
    tensors, numbers, strings, lists and dicts: ``torch.load(..., weights_only=True)`` reads it."""
    from dataclasses import asdict

    data = job.trainer.data
    return {"state_dict": ticket_state_dict(job.trainer.model), "masks": mask_dict(job.trainer.model),
            "model": asdict(job.rc.model), "input_shape": list(data.input_shape), "num_classes": int(data.num_classes),
            "dataset": job.rc.dataset.name, "test_acc": summary.get("test_acc"), "run_id": summary.get("run_id")}


def _drop_checkpoint(run_dir: Path) -> None:
    (run_dir / rundir.CHECKPOINT).unlink(missing_ok=True)


def evaluated_share(job: Job) -> dict[str, Any]:
    """``{"test_images_evaluated", "partial_eval"}``: how many test images the reported accuracies are on, and
    whether that is part of the test set (``trainer.limit_eval_batches`` below the test set's batches)."""
    data, limit = job.trainer.data, job.rc.trainer.limit_eval_batches
    n = int(data.num_test)
    batches = len(data.test) if hasattr(data.test, "__len__") else None
    if not limit or batches is None or limit >= batches:
        return {"test_images_evaluated": n, "partial_eval": False}
    size = getattr(data.test, "batch_size", None) or -(-n // batches)
    return {"test_images_evaluated": min(n, limit * size), "partial_eval": True}


def finish(job: Job, ident: RunIdentity, status: str, outcome: dict[str, Any], warnings: list[str], wall_s: float,
           attempt: int, tracker: Tracker, runlog: RunLog | None) -> dict[str, Any]:
    """Write the summary, the masks and the attempt record (rank 0); report; never raise over the run's
    own outcome. Returns the summary (every rank computes it)."""
    rc, trainer, run_dir = job.rc, job.trainer, job.run_dir
    model = trainer.model
    summary: dict[str, Any] = {"status": status, **outcome}
    problems: list[str] = []

    def attempt_to(what: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # never hide the run's own outcome behind a failure to report it
            problems.append(f"{what}: {type(e).__name__}: {e}")
            log.error("could not %s (%s: %s)", what, type(e).__name__, e)
            return None

    extra = {"run_id": ident.digest, "run_name": ident.name, "attempts": attempt, "warnings": warnings, **outcome,
             **evaluated_share(job)}
    extra.update(attempt_to("collect the method's facts", job.pruner.summary) or {})
    if status != "diverged":
        extra.update(attempt_to("compute mask-structure metrics", structure_summary, model,
                                trainer.data.input_shape) or {})
    built = attempt_to("build the summary", summarize, rc, model, trainer.history, status, wall_s, run_dir, extra,
                       job.pruner.target_sparsity)
    if built is not None:
        summary = built.to_dict()
    if problems:
        summary["reporting_problems"] = list(problems)
    if not job.placement.dist.main:
        return summary
    attempt_to("write summary.json", atomic_write_json, run_dir / rundir.SUMMARY, summary)
    if status in ("completed", "preempted", "interrupted"):
        attempt_to("write masks.pt", atomic_torch_save, run_dir / "masks.pt", {
            "masks": mask_dict(model), "status": status,
            "weight_seed": rc.seed if rc.init.weight_seed is None else rc.init.weight_seed,
            "score_seed": job.ctx.score_seed, "config": job.resolved})
    if status == "completed":
        attempt_to("write ticket.pt", atomic_torch_save, run_dir / TICKET, ticket_record(job, summary))
        if not rc.trainer.keep_checkpoint and (run_dir / TICKET).exists():
            attempt_to("remove last.ckpt (trainer.keep_checkpoint=false)", _drop_checkpoint, run_dir)
    attempt_to("record the attempt in run.json", rundir.end_attempt, run_dir, status)
    flat = {k: v for k, v in summary.items() if k not in ("layer_densities", "structure", "stages")}
    flat |= {f"density/{k}": v for k, v in (summary.get("layer_densities") or {}).items()}
    tracker.summary(flat)
    tracker.finish(0 if status == "completed" else 1)
    report(summary, run_dir)
    if runlog is not None:
        runlog.close()
    return summary


def report(summary: dict[str, Any], run_dir: Path) -> None:
    """One log line saying how the run ended and where its results are."""
    status = summary.get("status")
    if status == "completed":
        partial = (f" (partial evaluation: {summary.get('test_images_evaluated')} test images, "
                   "trainer.limit_eval_batches)") if summary.get("partial_eval") else ""
        log.info("done: test_acc %s%s | sparsity %s (density %s, %s of %s prunable weights kept) | %.1f s | "
                 "run folder %s",
                 _fmt(summary.get("test_acc")), partial, _fmt(summary.get("sparsity")), _fmt(summary.get("density")),
                 summary.get("params_remaining"), summary.get("params_total"), summary.get("wall_s") or 0.0, run_dir)
    elif status == "diverged":
        log.error("diverged: %s Summary: %s", summary["diverged"]["message"], run_dir / rundir.SUMMARY)
    elif status in ("preempted", "interrupted"):
        s = summary["stopped"]
        saved = "checkpoint saved" if s["checkpoint"] else "no checkpoint (trainer.checkpoint=false or nothing trained)"
        log.warning("%s by %s at %s: %s in %s; run the same command to continue.", status, s["signal"], s["where"],
                    saved, run_dir)
    else:
        err = summary.get("error", {})
        log.error("failed: %s: %s (at %s); traceback in %s", err.get("type"), err.get("message"), err.get("where"),
                  run_dir / "train.log")


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


__all__ = ["RunLog", "error_record", "finish", "load_checkpoint", "record_setup_crash", "report", "run_attempt"]
