"""The training loop: epochs of optimizer steps, evaluation every epoch, checkpoint every epoch.

The :class:`Trainer` owns everything a run needs to continue -- model (weights, scores, masks),
optimizer, scheduler, pruner state, RNG states, epoch/step counters and the metric history --
and :meth:`Trainer.state_dict` puts all of it in one checkpoint (``last.ckpt``, written
atomically after every epoch). :meth:`Trainer.load_state_dict` restores it, so continuing a run is
``load_state_dict`` followed by :meth:`Trainer.fit`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .config import TrainerConfig
from .data import DataBundle
from .masks import sparsity_report
from .pruners import Pruner
from .results import atomic_torch_save, atomic_write_jsonl

log = logging.getLogger(__name__)


class Trainer:
    """Train ``model`` with ``optimizer`` on ``data``; evaluate, log and checkpoint every epoch.

    Args:
        model: the (masked) model, already on ``device``.
        pruner: the method (its hooks run after each step / epoch; its state is checkpointed).
        optimizer: over ``pruner.trainable_parameters(model)``.
        scheduler: per-epoch LR scheduler (stepped after each epoch).
        data: the :class:`~ticketlab.data.DataBundle`.
        cfg: trainer config.
        device: training device.
        run_dir: folder of ``metrics.jsonl`` and ``last.ckpt``.
        on_epoch: callback ``(row: dict) -> None`` after each epoch (e.g. W&B logging).
        extra_state: JSON-able data stored in the checkpoint (the resolved config).
    """

    def __init__(self, model: nn.Module, pruner: Pruner, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, data: DataBundle, cfg: TrainerConfig,
                 device: torch.device, run_dir: Path, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 extra_state: dict[str, Any] | None = None) -> None:
        self.model, self.pruner, self.optimizer, self.scheduler = model, pruner, optimizer, scheduler
        self.data, self.cfg, self.device, self.run_dir = data, cfg, device, Path(run_dir)
        self.on_epoch = on_epoch
        self.extra_state = extra_state or {}
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.history: list[dict[str, Any]] = []
        self.last_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # for pruner hooks

    # ------------------------------------------------------------------ running
    def _autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set (or ``limit_train_batches`` batches).

        Returns:
            ``{"train_loss", "train_acc", "train_s", "images"}`` (mean loss per image, accuracy
            in [0, 1], seconds, images seen).
        """
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        limit = self.cfg.limit_train_batches
        total = min(len(self.data.train), limit) if limit else len(self.data.train)
        bar = tqdm(total=total, desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=None if self.cfg.progress else True)  # None: off when stderr is not a terminal
        start = time.perf_counter()
        for i, (x, y) in enumerate(self.data.train):
            if limit and i >= limit:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                out = self.model(x)
                loss = self.loss_fn(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            self.last_batch = (x, y)
            self.pruner.on_step_end(self)
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            bar.update(1)
            if bar.n % 20 == 0 or bar.n == total:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        bar.close()
        return {"train_loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
                "train_s": elapsed, "images": seen}

    @torch.no_grad()
    def evaluate(self, loader=None) -> tuple[float, float]:
        """Mean loss and accuracy (in [0, 1]) on ``loader`` (default: the test set), in eval mode."""
        loader = loader if loader is not None else self.data.test
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for i, (x, y) in enumerate(loader):
            if self.cfg.limit_eval_batches and i >= self.cfg.limit_eval_batches:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                out = self.model(x)
            loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
        return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train from ``self.epoch + 1`` to ``cfg.epochs`` (or to epoch ``until``); returns the history.

        Each epoch appends one row to ``metrics.jsonl`` (epoch, train_loss, train_acc, [val_loss,
        val_acc,] test_loss, test_acc, lr, sparsity, epoch_s, images_per_s), calls ``on_epoch`` and saves
        ``last.ckpt``. With ``epochs == 0`` the initial network is evaluated once (epoch 0).
        """
        if self.cfg.epochs == 0 and not self.history:
            self._record(0, {"train_loss": float("nan"), "train_acc": float("nan"), "train_s": 0.0, "images": 0},
                         lr=self.optimizer.param_groups[0]["lr"], start=time.perf_counter())
        last = self.cfg.epochs if until is None else min(until, self.cfg.epochs)
        for epoch in range(self.epoch + 1, last + 1):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train = self.train_epoch(epoch)
            self.epoch = epoch
            self.pruner.on_epoch_end(self)
            self.scheduler.step()
            self._record(epoch, train, lr, start)
            if self.cfg.checkpoint:
                atomic_torch_save(self.run_dir / "last.ckpt", self.state_dict())
        return self.history

    def _record(self, epoch: int, train: dict[str, float], lr: float, start: float) -> None:
        test_loss, test_acc = self.evaluate()
        val = {}
        if self.data.val is not None:
            val_loss, val_acc = self.evaluate(self.data.val)
            val = {"val_loss": val_loss, "val_acc": val_acc}
        row = {
            "epoch": epoch,
            "train_loss": train["train_loss"], "train_acc": train["train_acc"],
            **val,
            "test_loss": test_loss, "test_acc": test_acc,
            "lr": lr,
            "sparsity": sparsity_report(self.model).sparsity,
            "epoch_s": time.perf_counter() - start,
            "images_per_s": train["images"] / train["train_s"] if train["train_s"] > 0 else 0.0,
        }
        self.history.append(row)
        atomic_write_jsonl(self.run_dir / "metrics.jsonl", self.history)
        log.info("epoch %d: train_loss %.4f train_acc %.4f test_loss %.4f test_acc %.4f lr %.4g sparsity %.4f "
                 "(%.1f s, %.0f img/s)", epoch, row["train_loss"], row["train_acc"], test_loss, test_acc, lr,
                 row["sparsity"], row["epoch_s"], row["images_per_s"])
        if self.on_epoch is not None:
            self.on_epoch(row)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (see the module docstring)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "history": list(self.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pruner": self.pruner.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data": self.data.generator.get_state() if self.data.generator is not None else None,
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
            **self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (model, optimizer, scheduler, pruner, RNGs, counters)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.pruner.load_state_dict(state["pruner"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rng["data"] is not None and self.data.generator is not None:
            self.data.generator.set_state(rng["data"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
