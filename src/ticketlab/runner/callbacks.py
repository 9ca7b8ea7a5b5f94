"""What the training loop reports each epoch: the metrics file, the tracker, the log line.

Each is a :class:`ticketlab.training.loop.Callback` (modelled on facebookresearch/open_lth's
``training/standard_callbacks.py``): the loop calls ``on_epoch_end(state, row, history)`` after
each evaluated epoch of the main phase, and ``on_resume(state, history)`` after loading a
checkpoint, so that what was written after that checkpoint by an attempt that died is replaced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ticketlab.files import atomic_write_jsonl
from ticketlab.pruners.phases import TrainState
from ticketlab.runner.tracking import Tracker
from ticketlab.sparsity.report import sparsity_report
from ticketlab.training.loop import Callback

log = logging.getLogger("ticketlab.training.loop")


class MetricsFile(Callback):
    """``metrics.jsonl``: one JSON object per epoch, the whole file rewritten atomically from the
    history, so a resumed run's file equals the uninterrupted run's.

    Args:
        path: the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Rewrite the file with every row so far."""
        atomic_write_jsonl(self.path, history)

    def on_resume(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """Drop rows written after the checkpoint by the attempt that died."""
        atomic_write_jsonl(self.path, history)


class TrackerLog(Callback):
    """Each epoch's row and per-layer densities to the tracker (W&B), at step = epoch.

    Args:
        tracker: the run's :class:`~ticketlab.runner.tracking.Tracker`.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def _log(self, state: TrainState, row: dict[str, Any]) -> None:
        rep = sparsity_report(state.model)
        self.tracker.log({**row, **{f"density/{k}": v["density"] for k, v in rep.layers.items()}}, step=row["epoch"])

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Log the row."""
        self._log(state, row)

    def on_resume(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """Log the checkpoint's last row again, in case the attempt that died had not (W&B keeps one row per step)."""
        if history:
            self._log(state, history[-1])


class LogLine(Callback):
    """One log line per epoch: losses, accuracies, learning rate, sparsity, time."""

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Log the row."""
        val = f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else ""
        lr = f"{row['lr']:.4g}" if row["lr"] is not None else "-"
        log.info("epoch %d: train_loss %.4f train_acc %.4f%s test_loss %.4f test_acc %.4f lr %s sparsity %.4f "
                 "(%.1f s, %.0f img/s)", row["epoch"], row["train_loss"], row["train_acc"], val, row["test_loss"],
                 row["test_acc"], lr, row["sparsity"], row["epoch_s"], row["images_per_s"])


__all__ = ["LogLine", "MetricsFile", "TrackerLog"]
