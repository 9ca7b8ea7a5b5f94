"""``train.py``'s task function and exit codes.

:func:`task` runs one Hydra job through :func:`ticketlab.runner.run.run` and turns every outcome into one
log line and an exit code, never a traceback for a user error (:mod:`ticketlab.errors` lists the
codes). In a ``-m`` sweep it records the job's outcome for the sweep report
(:mod:`ticketlab.sweeps.sweep`) and returns normally, so one bad job never stops the others; a stop
signal (SIGTERM, SIGUSR1, SIGINT) stops the whole sweep once the job's checkpoint is written.
:func:`main` wraps the ``@hydra.main`` function and exits with the run's (or the sweep's) code.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from ticketlab import distributed, resolvers
from ticketlab.errors import EXIT_CODES, ConfigError, Preempted, RunBusy, describe
from ticketlab.runner import cluster
from ticketlab.runner.run import run
from ticketlab.sweeps import sweep

log = logging.getLogger("ticketlab")

resolvers.register()  # before Hydra composes a config, in this process and in every launcher's job process

#: Exit code of the last single job (a sweep's code is :data:`ticketlab.sweeps.sweep.EXIT`).
EXIT: dict[str, int] = {"job": 0}


def _remove_if_empty(path: Path) -> None:
    """Remove the folder Hydra made for a job that stopped before writing anything."""
    try:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    except OSError:
        pass


def task(cfg: DictConfig) -> dict[str, Any]:
    """Run one Hydra job; return its outcome (also written to the sweep's job record in a sweep).

    Returns:
        ``{"status", "reason", "run_dir", "overrides", "test_acc", "sparsity"}``; status is one of
        completed, skipped, diverged, failed, invalid, busy (or the run raises on a stop signal).

    Raises:
        Preempted, KeyboardInterrupt: a stop signal; the run's checkpoint and summary are written.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    multirun = sweep.in_multirun()
    run_dir = Path(hc.runtime.output_dir)
    overrides = OmegaConf.to_container(hc.overrides.task, resolve=False)  # raw: "${oc.env:X}" stays as typed
    outcome: dict[str, Any] = {"overrides": overrides, "run_dir": str(run_dir)}
    stop: BaseException | None = None
    try:
        summary = run(cfg, run_dir)
        if summary.get("skipped"):
            outcome.update(status="skipped", was=summary.get("status"))
            if summary.get("status") == "diverged":
                outcome.update(status="diverged", reason="diverged earlier; not run again (trainer.resume=fresh "
                                                         "starts it afresh)")
        else:
            outcome["status"] = summary["status"]
            if summary["status"] == "diverged":
                outcome["reason"] = summary["diverged"]["message"]
        outcome.update(test_acc=summary.get("test_acc"), sparsity=summary.get("sparsity"))
    except ConfigError as e:
        log.error("Invalid configuration: %s", e)
        outcome.update(status="invalid", reason=str(e))
        _remove_if_empty(run_dir)
    except RunBusy as e:
        log.error("%s", e)
        outcome.update(status="busy", reason=str(e))
    except Preempted as e:
        outcome.update(status=e.status, reason=f"stopped by {e.signal_name} at {e.where}; run the same command "
                                               "to continue")
        stop = e
    except KeyboardInterrupt as e:
        outcome.update(status="interrupted", reason="interrupted (Ctrl-C)")
        stop = e
    except Exception as e:  # a crash: run() has written the failed summary and the traceback
        outcome.update(status="failed", reason=describe(e))
        if not (run_dir / "summary.json").exists():
            log.error("failed: %s", describe(e), exc_info=e)
    if not run_dir.exists():  # rejected before anything was written: there is no run folder to point to
        outcome["run_dir"] = None
    EXIT["job"] = 0 if outcome["status"] in ("completed", "skipped") else \
        EXIT_CODES.get(outcome["status"], 1)
    if multirun and distributed.current_rank() == 0:
        sweep.record_job(outcome, Path(str(hc.sweep.dir)), int(hc.job.num))
    if stop is not None:
        if isinstance(stop, Preempted):
            cluster.hand_over(stop)  # under submitit: requeue and leave; elsewhere it returns
        raise stop
    return outcome


def main(app: Callable[[], Any]) -> NoReturn:
    """Run the ``@hydra.main`` function ``app`` and exit with the outcome's code.

    Codes: 0 completed or skipped; 1 failed (or a sweep with any job not completed); 2 invalid
    configuration; 3 diverged; 75 the run is busy in another process; 128 + signal number when
    stopped by a signal (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1).
    """
    EXIT["job"], sweep.EXIT["sweep"] = 0, None
    try:
        app()
    except Preempted as e:
        sweep.partial_report()
        print(f"{e.status} by {e.signal_name}: checkpoint written; run the same command to continue.",
              file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sweep.partial_report()
        print("interrupted (Ctrl-C); run the same command to continue.", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        distributed.shutdown()
    code = sweep.EXIT["sweep"] if sweep.EXIT["sweep"] is not None else EXIT["job"]
    sys.exit(code)


__all__ = ["EXIT", "main", "task"]
