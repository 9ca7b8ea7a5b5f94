"""A run folder: what it holds, who may write to it, and what the same command does with it.

Every run folder carries ``run.json`` (the run's identity, :mod:`ticketlab.runner.identity`, and one
record per attempt: start and end time, host, process, Slurm job, overrides, where it resumed
from and how it ended). :func:`decide` turns the folder's state and ``trainer.resume`` into one of
four actions:

===========  =================================================================================
``new``      the folder is new (or empty): start the run
``skip``     the run is ``completed`` (or ``diverged``: rerunning it would diverge again)
``resume``   the run stopped early (preempted, interrupted, failed, killed): continue from
             ``last.ckpt``, or start again in place when there is none
``fresh``    ``trainer.resume=fresh``: move the folder aside (:func:`move_aside`, never deleted)
             and start again
===========  =================================================================================

A folder holding a *different* run (another identity, or files without ``run.json``) is never
touched: :func:`decide` raises :class:`~ticketlab.errors.ConfigError` naming the differences.
:class:`RunLock` (an ``fcntl`` lock on ``<run>/.lock``, released by the operating system when its
process dies) keeps two processes from writing one run folder at once.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketlab.errors import ConfigError, RunBusy
from ticketlab.files import atomic_write_json, read_json
from ticketlab.runner.identity import RunIdentity, describe_difference

RUN_RECORD = "run.json"
SUMMARY = "summary.json"
CHECKPOINT = "last.ckpt"
LOCK = ".lock"
#: Statuses that end a run for good: the same command skips it.
FINAL_STATUSES = ("completed", "diverged")


def now() -> str:
    """The local time as ISO 8601 with seconds."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class FolderState:
    """What a run folder holds.

    Attributes:
        path: the folder.
        record: its ``run.json`` (``None`` when absent or unreadable).
        summary: its ``summary.json`` (``None`` when absent or unreadable).
        has_checkpoint: whether ``last.ckpt`` exists.
        other_files: names of entries that are neither TicketLab files nor hidden.
    """

    path: Path
    record: dict[str, Any] | None
    summary: dict[str, Any] | None
    has_checkpoint: bool
    other_files: list[str]

    @property
    def status(self) -> str | None:
        """The last attempt's ``status`` from ``summary.json`` (``None``: no summary, e.g. killed)."""
        return self.summary.get("status") if self.summary else None

    @property
    def empty(self) -> bool:
        """Nothing but hidden files (a lock) in it, or it does not exist."""
        return self.record is None and self.summary is None and not self.has_checkpoint and not self.other_files

    @property
    def generation(self) -> int:
        """How many times this run was started afresh in this folder's lineage (1 for the first)."""
        return int(self.record.get("generation", 1)) if self.record else 1


def inspect(path: Path) -> FolderState:
    """Read a run folder's state (a missing folder is an empty one)."""
    path = Path(path)
    if not path.is_dir():
        return FolderState(path, None, None, False, [])
    record = read_json(path / RUN_RECORD)
    summary = read_json(path / SUMMARY)
    names = [p.name for p in path.iterdir() if not p.name.startswith(".")]
    return FolderState(path, record if isinstance(record, dict) else None,
                       summary if isinstance(summary, dict) else None, (path / CHECKPOINT).exists(),
                       [n for n in names if n not in (RUN_RECORD, SUMMARY, CHECKPOINT)])


@dataclass
class Decision:
    """What to do with a run folder.

    Attributes:
        action: ``new``, ``skip``, ``resume`` or ``fresh``.
        reason: one line for the log.
        generation: the generation the run will have (``fresh`` adds one).
    """

    action: str
    reason: str
    generation: int = 1


def decide(state: FolderState, ident: RunIdentity, resume: str) -> Decision:
    """What the same command does with this folder (see the module docstring).

    Args:
        state: :func:`inspect` of the folder.
        ident: the identity of the run about to start.
        resume: ``trainer.resume`` (``auto``, ``never`` or ``fresh``).

    Raises:
        ConfigError: the folder holds another run or unknown files (unless ``fresh``), or holds this
            run and ``resume=never``.
    """
    where = str(state.path)
    if state.empty:
        return Decision("new", "new run")
    if state.record is None or state.record.get("id") != ident.digest:
        if resume == "fresh":
            return Decision("fresh", "trainer.resume=fresh: the folder's earlier content is moved aside",
                            state.generation + 1)
        if state.record is None:
            files = ", ".join(sorted(state.other_files)[:5]) or "a summary"
            raise ConfigError(f"{where} already holds files ({files}) but no run.json, so it is not known to be "
                              "this run; choose another folder, or trainer.resume=fresh to move it aside.")
        diff = describe_difference(state.record.get("identity", {}), ident.values)
        raise ConfigError(f"{where} holds a different run (id {str(state.record.get('id'))[:10]}, this one is "
                          f"{ident.short}): {'; '.join(diff[:6]) or 'its identity differs'}. Choose another folder "
                          "(or drop hydra.run.dir to use this run's own), or trainer.resume=fresh to move it aside.")
    status = state.status
    if resume == "never":
        raise ConfigError(f"{where} already holds this run (status {status or 'unfinished'}) and "
                          "trainer.resume=never; use trainer.resume=auto to skip or continue it, or "
                          "trainer.resume=fresh to move it aside and start again.")
    if resume == "fresh":
        return Decision("fresh", "trainer.resume=fresh: the earlier run is moved aside", state.generation + 1)
    if status in FINAL_STATUSES:
        return Decision("skip", f"already {status}", state.generation)
    if state.has_checkpoint:
        return Decision("resume", f"continuing from {CHECKPOINT} (last status: {status or 'killed'})",
                        state.generation)
    return Decision("resume", f"starting again in place (last status: {status or 'killed'}, no checkpoint)",
                    state.generation)


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<path>.moved-<YYYYmmdd-HHMMSS>`` (a suffix ``-2``, ``-3``... if taken).

    Returns:
        The new location. Nothing is deleted.
    """
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.moved-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.moved-{stamp}-{n}")
    path.rename(target)
    return target


def archive_attempt(path: Path, attempt: int, restart: bool) -> None:
    """Keep the previous attempt's ``summary.json`` (and, on a restart without checkpoint, its
    ``metrics.jsonl``) under ``<run>/attempts/<attempt>/`` before a new attempt replaces them."""
    dest = path / "attempts" / str(attempt)
    names = ["summary.json"] + (["metrics.jsonl"] if restart else [])
    for name in names:
        src = path / name
        if src.exists():
            dest.mkdir(parents=True, exist_ok=True)
            (shutil.move if restart else shutil.copy2)(str(src), str(dest / name))


def environment() -> dict[str, Any]:
    """Where this attempt runs: host, pid, and the Slurm job/array ids and restart count when present."""
    env = {"host": socket.gethostname(), "pid": os.getpid()}
    for key, var in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_array_job_id", "SLURM_ARRAY_JOB_ID"),
                     ("slurm_array_task_id", "SLURM_ARRAY_TASK_ID"), ("slurm_restart_count", "SLURM_RESTART_COUNT")):
        if os.environ.get(var):
            env[key] = os.environ[var]
    return env


def start_attempt(path: Path, ident: RunIdentity, generation: int, overrides: list[str],
                  resumed_from: dict[str, Any] | None) -> dict[str, Any]:
    """Append an attempt to ``run.json`` (creating it) and return the record.

    Args:
        path: the run folder.
        ident: the run's identity.
        generation: 1, plus one per ``trainer.resume=fresh``.
        overrides: the command-line overrides of this attempt.
        resumed_from: ``{"phase", "epoch", "step"}`` of the checkpoint continued from, or ``None``.
    """
    record = read_json(path / RUN_RECORD)
    if not isinstance(record, dict) or record.get("id") != ident.digest:
        record = {"id": ident.digest, "name": ident.name, "folder": path.name, "stage": ident.stage,
                  "generation": generation, "identity": ident.values, "attempts": []}
    attempt = {"attempt": len(record["attempts"]) + 1, "started": now(), **environment(),
               "overrides": list(overrides), "resumed_from": resumed_from, "ended": None, "status": "running"}
    record["attempts"].append(attempt)
    atomic_write_json(path / RUN_RECORD, record)
    return record


def end_attempt(path: Path, status: str) -> None:
    """Record how the current (last) attempt ended in ``run.json``."""
    record = read_json(path / RUN_RECORD)
    if isinstance(record, dict) and record.get("attempts"):
        record["attempts"][-1].update({"ended": now(), "status": status})
        atomic_write_json(path / RUN_RECORD, record)


class RunLock:
    """An exclusive, non-blocking ``fcntl`` lock on ``<run>/.lock`` (released when the process dies).

    Args:
        path: the run folder (created if missing).

    Raises:
        RunBusy: on entering, when another process holds the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock (see the class docstring)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise RunBusy(str(self.path), holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {now()}".encode())
        self.fd = fd
        return self

    def release(self, remove_if_empty: bool = False) -> None:
        """Release the lock; with ``remove_if_empty``, delete the folder when nothing but the lock file is
        in it (a run rejected before writing anything leaves no trace)."""
        if self.fd is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None
        if remove_if_empty and self.path.is_dir():
            rest = [p for p in self.path.iterdir() if p.name != LOCK]
            if not rest:
                (self.path / LOCK).unlink(missing_ok=True)
                try:
                    self.path.rmdir()
                except OSError:
                    pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["CHECKPOINT", "Decision", "FINAL_STATUSES", "FolderState", "RUN_RECORD", "RunLock", "SUMMARY",
           "archive_attempt", "decide", "end_attempt", "environment", "inspect", "move_aside", "now",
           "start_attempt"]
