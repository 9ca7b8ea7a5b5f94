"""Weights & Biases logging that can never stop a run.

``logger=wandb`` logs the resolved config, per-epoch metrics, per-layer densities and the final
summary. The mode is ``offline`` unless ``logger.mode`` or ``$WANDB_MODE`` says otherwise, so no
run waits on a login prompt or a network; the offline run folder is ``<run dir>/wandb/``.
Any exception inside wandb is reported once and the logger turns itself off; the run goes on
with its local files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .config import LoggerConfig

log = logging.getLogger(__name__)


class Tracker:
    """Experiment tracker facade (W&B or nothing).

    Args:
        cfg: logger config.
        run_dir: the run folder (W&B writes ``run_dir/wandb``).
        config: the resolved run config as a plain dict.
        default_name: run name when ``cfg.run_name`` is unset.
    """

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], default_name: str) -> None:
        self.run = None
        self.dir: str | None = None
        if cfg.name != "wandb":
            return
        self._guard("init", self._init, cfg, run_dir, config, default_name)

    def _init(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], default_name: str) -> None:
        import wandb

        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags) or None,
            name=cfg.run_name or default_name, config=config, dir=str(run_dir), mode=cfg.mode,
            reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"),
        )
        self.dir = getattr(self.run, "dir", None)

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
