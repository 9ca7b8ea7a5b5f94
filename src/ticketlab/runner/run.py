"""One run: validate the config, find the run's folder, skip, continue or start it, train, report.

:func:`run` is what ``train.py`` calls for every Hydra job (through :mod:`ticketlab.cli`), and what
scripts and tests call directly. In order:

1. **Validate** once (:func:`ticketlab.runner.validate.resolve`); then, in
   :func:`ticketlab.runner.build.setup`, the data, the model and the method's own checks. A problem
   raises :class:`~ticketlab.errors.ConfigError` before anything is written.
2. **Place** once (:func:`ticketlab.runner.devices.place`): device, DDP membership, threads.
3. **Find the run** (:mod:`ticketlab.runner.identity`, :mod:`ticketlab.runner.rundir`): the run folder
   is named by a hash of the result-affecting config, or given (``hydra.run.dir``, ``run_dir=``). A
   completed (or diverged) run is skipped; a stopped one continues from ``last.ckpt``;
   ``trainer.resume`` chooses otherwise. A folder holding a different run is never touched.
4. **Train and report** (:mod:`ticketlab.runner.attempt`) under a stop flag (:mod:`ticketlab.signals`):
   SIGTERM, SIGUSR1 and SIGINT finish the step, write the checkpoint and stop; ``summary.json`` says
   how the run ended, whatever happened.

Multi-stage methods (IMP) run each stage this way (:mod:`ticketlab.runner.stages`).

Files in the run folder: ``run.json`` (identity and attempts), ``metrics.jsonl``,
``summary.json``, ``last.ckpt``, ``masks.pt``, ``train.log``, ``.hydra/`` (the composed config and
overrides of the first attempt), ``wandb/`` (unless ``$WANDB_DIR``), ``attempts/<n>/`` (earlier
attempts' summaries).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ticketlab import distributed
from ticketlab.errors import ConfigError, RunBusy
from ticketlab.runner import devices, hydra_job, rundir, stages, validate
from ticketlab.runner import identity as identity_mod
from ticketlab.runner.attempt import load_checkpoint, record_setup_crash, run_attempt
from ticketlab.runner.build import setup
from ticketlab.runner.identity import RunIdentity
from ticketlab.runner.stages import StageContext
from ticketlab.runner.validate import RunConfig
from ticketlab.signals import StopRequest
from ticketlab.training.placement import Placement

log = logging.getLogger(__name__)


def skipped(state: rundir.FolderState) -> dict[str, Any]:
    """The summary of a run that is already done (marked ``skipped``), with a log line saying so."""
    summary = dict(state.summary or {})
    summary["skipped"] = True
    acc = summary.get("test_acc")
    log.info("already %s: %s (test_acc %s, sparsity %s); not run again. trainer.resume=fresh starts it afresh.",
             summary.get("status"), state.path / rundir.SUMMARY, f"{acc:.4f}" if isinstance(acc, float) else acc,
             f"{summary['sparsity']:.4f}" if isinstance(summary.get("sparsity"), float) else summary.get("sparsity"))
    return summary


def _folder_plan(run_dir: Path, ident: RunIdentity, resume: str, min_generation: int
                 ) -> tuple[rundir.Decision, rundir.FolderState, rundir.RunLock | None]:
    """Decide what to do with ``run_dir`` (rank 0); take its lock unless the run is skipped.

    Raises:
        ConfigError: the folder holds another run, or ``resume=never`` with a run in it.
        RunBusy: another live process holds the folder.
    """
    state = rundir.inspect(run_dir)
    decision = rundir.decide(state, ident, resume)
    if decision.action == "skip":
        return decision, state, None
    lock = rundir.RunLock(run_dir).acquire()
    try:
        state = rundir.inspect(run_dir)  # under the lock: another process may have finished it meanwhile
        decision = rundir.decide(state, ident, resume)
    except BaseException:
        lock.release(remove_if_empty=True)
        raise
    if decision.action == "skip":
        lock.release()
        return decision, state, None
    decision.generation = max(decision.generation, min_generation)
    return decision, state, lock


def _agree_on_plan(run_dir: Path, ident: RunIdentity, resume: str, min_generation: int, dist: distributed.Dist
                   ) -> tuple[dict[str, Any], rundir.RunLock | None]:
    """Rank 0 decides (and locks the folder); every rank follows its decision, or its refusal.

    Raises:
        ConfigError, RunBusy: rank 0 refused the folder (on every rank, with its message).
    """
    lock: rundir.RunLock | None = None
    plan: dict[str, Any] = {}
    if dist.main:
        try:
            decision, state, lock = _folder_plan(run_dir, ident, resume, min_generation)
            plan = {"decision": decision, "has_checkpoint": state.has_checkpoint,
                    "attempts": len((state.record or {}).get("attempts", [])),
                    "skipped": skipped(state) if decision.action == "skip" else None}
        except (ConfigError, RunBusy) as e:
            distributed.broadcast_object(dist, {"error": (type(e).__name__, str(e))})
            raise
    plan = distributed.broadcast_object(dist, plan)
    if "error" in plan:  # rank 0 refused: so do the others, with its message
        kind, message = plan["error"]
        raise (RunBusy(str(run_dir), "") if kind == "RunBusy" else ConfigError(message))
    return plan, lock


def _open_attempt(run_dir: Path, cfg: DictConfig, ident: RunIdentity, plan: dict[str, Any],
                  ckpt: dict[str, Any] | None, lock: rundir.RunLock | None) -> rundir.RunLock | None:
    """Rank 0, once the run is built: move an earlier run aside (``fresh``) or archive the last attempt
    (``resume``), record the new attempt and, for a new run, the Hydra record. Returns the folder's lock."""
    decision = plan["decision"]
    if decision.action == "fresh":
        moved = rundir.move_aside(run_dir)
        lock.release()
        log.info("moved the earlier content of %s to %s", run_dir, moved)
        lock = rundir.RunLock(run_dir).acquire()
    elif decision.action == "resume":
        rundir.archive_attempt(run_dir, plan["attempts"], restart=ckpt is None)
    resumed_from = {"phase": ckpt["phase"], "epoch": ckpt["epoch"], "step": ckpt["step"]} if ckpt else None
    rundir.start_attempt(run_dir, ident, decision.generation, hydra_job.overrides(), resumed_from)
    if decision.action in ("new", "fresh"):
        hydra_job.write_record(run_dir, cfg)
    return lock


def execute(cfg: DictConfig, run_dir: Path, ident: RunIdentity, rc: RunConfig | None = None,
            placement: Placement | None = None, stage: StageContext | None = None, min_generation: int = 1,
            before_write: Callable[[], None] | None = None) -> dict[str, Any]:
    """One (stage of a) run in ``run_dir``: skip it, continue it or start it, then report.

    Under DDP rank 0 decides, locks and writes; the other ranks follow it, train, and write nothing.

    Args:
        cfg: the composed config; ``rc`` its validated form (validated here when not given).
        placement: where the run computes (chosen here when not given).
        run_dir: the run folder; ``ident`` the run's identity.
        stage: the stage of a multi-stage run; ``min_generation`` the W&B generation at least (a stage
            inherits its parent run's).
        before_write: called once the run is validated, before its folder is written.

    Returns:
        The summary (``status`` completed or diverged; ``skipped: True`` when nothing was run).

    Raises:
        ConfigError: bad input, a folder holding another run, an unusable checkpoint (nothing written).
        RunBusy: another process is running this run.
        Preempted: a stop signal (checkpoint and summary written).
        Exception: the crash of a failed run (summary written with ``status: failed``).
    """
    rc = rc if rc is not None else validate.resolve(cfg)
    run_dir = Path(run_dir)
    placement = placement if placement is not None else devices.place(rc)
    plan, lock = _agree_on_plan(run_dir, ident, rc.trainer.resume, min_generation, placement.dist)
    if plan["skipped"] is not None:
        return plan["skipped"]
    decision, main, written = plan["decision"], placement.dist.main, False
    try:
        try:
            job = setup(cfg, run_dir, rc=rc, placement=placement, initialize=False, stage=stage, stop=StopRequest())
            ckpt = load_checkpoint(run_dir / rundir.CHECKPOINT, job) \
                if decision.action == "resume" and plan["has_checkpoint"] else None
        except ConfigError:
            raise
        except Exception as e:  # a crash while building (not a user error): record it in the folder
            written = main
            if main and before_write is not None:
                before_write()
            if main:
                record_setup_crash(run_dir, ident, decision, e)
            raise
        written = True  # from here on, the run folder is written (by rank 0)
        if main:
            if before_write is not None:
                before_write()
            lock = _open_attempt(run_dir, cfg, ident, plan, ckpt, lock)
        distributed.barrier(placement.dist)
        group = hydra_job.sweep_name() or (Path(stage.parent_dir).name if stage is not None else None)
        return run_attempt(job, ident, group, ckpt, plan["attempts"] + 1, decision)
    except ConfigError:
        if lock is not None:
            lock.release(remove_if_empty=not written)
        raise
    finally:
        if lock is not None:
            lock.release()


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one job and return its summary; multi-stage methods (IMP) run their stages.

    The run folder is ``run_dir`` if given, else the Hydra job's output folder (which
    ``conf/config.yaml`` sets to the run's identity folder), else
    ``<paths.output_dir>/runs/<name>-<id>``.

    Returns:
        The summary: ``status`` ``completed`` or ``diverged``; ``skipped: True`` when the run was
        already done and nothing ran.

    Raises:
        ConfigError: any bad input, before anything is written.
        RunBusy: the run is running in another process.
        Preempted: a stop signal (SIGTERM, SIGUSR1, SIGINT); checkpoint and summary are written.
        Exception: a crash; ``summary.json`` says ``failed`` with the error.
    """
    rc = validate.resolve(cfg)
    try:
        ident = identity_mod.compute(cfg)
    except OmegaConfBaseException as e:
        raise validate.translate(e, cfg) from e
    if run_dir is None:
        run_dir = hydra_job.run_dir() if hydra_job.current() is not None else identity_mod.runs_root(cfg) / ident.folder
    run_dir = Path(run_dir)
    plan = stages.plan(rc)
    if plan is not None:
        return _run_staged(cfg, rc, ident, run_dir, plan)
    return execute(cfg, run_dir, ident, rc)


def _run_staged(cfg: DictConfig, rc: RunConfig, ident: RunIdentity, run_dir: Path,
                plan: list[stages.Stage]) -> dict[str, Any]:
    """A multi-stage run: decide for the parent folder, then run the stages (each skipped when done)."""
    state = rundir.inspect(run_dir)
    decision = rundir.decide(state, ident, rc.trainer.resume)
    if decision.action == "skip":
        return skipped(state)
    if decision.action == "fresh" and run_dir.exists():
        log.info("moved the earlier content of %s to %s", run_dir, rundir.move_aside(run_dir))
        state = rundir.inspect(run_dir)
    generation = decision.generation
    placement = devices.place(rc)
    # the parent folder was moved aside (trainer.resume=fresh): every stage starts new in it
    stage_rc = dataclasses.replace(rc, trainer=dataclasses.replace(rc.trainer, resume="auto")) \
        if rc.trainer.resume == "fresh" else rc

    def record(path: Path, parent: RunIdentity) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if state.record is None:
            rundir.start_attempt(path, parent, generation, hydra_job.overrides(), None)
            hydra_job.write_record(path, cfg)

    def run_one(stage_cfg: DictConfig, stage_dir: Path, stage_ident: RunIdentity, ctx: StageContext,
                before_write: Callable[[], None]) -> dict[str, Any]:
        if stage_rc is not rc:
            stage_cfg = stage_cfg.copy()
            OmegaConf.update(stage_cfg, "trainer.resume", "auto", merge=False)
        return execute(stage_cfg, stage_dir, stage_ident, stage_rc, placement, stage=ctx, min_generation=generation,
                       before_write=before_write)

    return stages.run_stages(cfg, ident, run_dir, plan, run_one, record)


__all__ = ["execute", "run", "skipped"]
