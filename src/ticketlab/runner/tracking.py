"""Weights & Biases logging that can never stop a run, and that continues a resumed run's W&B run.

``logger=wandb`` logs the resolved config, per-epoch metrics, per-layer densities and the final
summary. The mode is ``offline`` unless ``logger.mode`` or ``$WANDB_MODE`` says otherwise, so no
run waits on a login prompt or a network.

* **One W&B run per run.** The W&B run id derives from the run identity
  (:mod:`ticketlab.runner.identity`: the first 16 hex digits of its hash, plus ``-g<n>`` after ``n - 1``
  fresh restarts) and ``resume="allow"``, so a resumed or re-launched run (a Slurm requeue
  included) continues its own W&B run instead of starting a second one.
* **Names, groups, types.** The display name is the run folder's name (method, model, dataset,
  sparsity, seed, short id) plus the result-affecting values given on the command line; the group
  defaults to the sweep (``-m``) or to the parent run of IMP levels; the job type to the pruner.
* **No network.** ``online`` first checks, within a few seconds, that the W&B server
  (``$WANDB_BASE_URL``, else ``api.wandb.ai``) answers; if not, or if ``wandb.init`` fails online
  (no API key), it logs offline and says so (``wandb sync`` uploads later).
* **Where.** ``$WANDB_DIR`` when set, else the run folder (``<run>/wandb/``).

Any exception inside wandb is reported once and the tracker turns itself off; the run goes on
with its local files.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ticketlab.config import LoggerConfig

log = logging.getLogger(__name__)

REACHABILITY_TIMEOUT_S = 4.0


def server_reachable(timeout: float = REACHABILITY_TIMEOUT_S) -> tuple[bool, str]:
    """Whether a TCP connection to the W&B server opens within ``timeout`` seconds.

    Returns:
        ``(ok, description)``; the description names the server and, on failure, the error.
    """
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    port = url.port or (443 if url.scheme != "http" else 80)
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as e:
            result["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=probe, daemon=True)  # a DNS lookup has no timeout of its own
    thread.start()
    thread.join(timeout)
    if result.get("ok"):
        return True, f"{host}:{port}"
    return False, f"{host}:{port} ({result.get('error', f'no answer within {timeout:g} s')})"


class Tracker:
    """Experiment tracker facade (W&B or nothing).

    Args:
        cfg: logger config.
        run_dir: the run folder (W&B writes ``<run_dir>/wandb`` unless ``$WANDB_DIR`` is set).
        config: the resolved run config as a plain dict.
        run_id: the W&B run id (from the run identity).
        name: the display name (``cfg.run_name`` wins when set).
        group: the default group (``cfg.group`` wins when set).
        job_type: the default job type (``cfg.job_type`` wins when set).
    """

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], run_id: str | None = None,
                 name: str | None = None, group: str | None = None, job_type: str | None = None) -> None:
        self.run = None
        self.dir: str | None = None
        self.mode: str | None = None
        if cfg.name != "wandb":
            return
        mode = cfg.mode
        if mode == "online":
            ok, where = server_reachable()
            if not ok:
                log.warning("logger.mode=online but the W&B server %s cannot be reached; logging offline to %s "
                            "instead (upload later with `wandb sync`).", where, self._dir(run_dir))
                mode = "offline"
        kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group or group,
                      job_type=cfg.job_type or job_type, tags=list(cfg.tags) or None, name=cfg.run_name or name,
                      id=run_id, resume="allow" if run_id else None, config=config, dir=self._dir(run_dir))
        self._guard("init", self._init, kwargs, mode)
        if self.run is None and mode == "online":
            log.warning("W&B could not start online; logging offline instead (upload later with `wandb sync`).")
            self._guard("init", self._init, kwargs, "offline")

    @staticmethod
    def _dir(run_dir: Path) -> str:
        return os.environ.get("WANDB_DIR") or str(run_dir)

    def _init(self, kwargs: dict[str, Any], mode: str) -> None:
        import wandb

        Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(**kwargs, mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(silent=True, console="off", init_timeout=60))
        self.dir = getattr(self.run, "dir", None)
        self.mode = mode

    def _guard(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # a tracker failure must never lose the run
            log.warning("W&B %s failed (%s: %s); continuing with local files only.", what, type(e).__name__, e)
            self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log one epoch's metrics at ``step`` (the epoch number)."""
        if self.run is not None:
            self._guard("log", self.run.log, metrics, step)

    def summary(self, summary: dict[str, Any]) -> None:
        """Write the final summary."""
        if self.run is not None:
            self._guard("summary", self.run.summary.update, summary)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (called in a ``finally``, so multirun jobs never share a W&B run)."""
        if self.run is not None:
            self._guard("finish", self.run.finish, exit_code)
            self.run = None
