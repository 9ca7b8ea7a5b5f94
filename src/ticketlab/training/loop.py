"""The training loop: phases of optimizer steps through one step function, exact checkpoints.

A run trains in phases (:mod:`ticketlab.pruners.phases`): the method's pre-training phases, if any, then
``main``, the training the run is about (its optimizer and schedule come from the config; it is
evaluated and logged every epoch). Every optimizer step of every phase goes through
:func:`train_step`, so each one gets mixed precision, batch limits, the non-finite check, the
progress bar, stop signals and checkpoints.

:class:`Trainer` owns everything a run needs to continue -- model (weights, scores, masks),
optimizer, scheduler, method state, RNG states, the phase, epoch and step counters, the position
inside the current epoch (its permutation and the next batch), the running training metrics and
the metric history -- and :meth:`Trainer.state_dict` puts all of it in one checkpoint
(``last.ckpt``, written atomically at every epoch end, every ``trainer.checkpoint_every_min``
minutes inside an epoch, at every phase boundary, and when a stop signal arrives). Continuing a
run is :meth:`Trainer.load_state_dict` followed by :meth:`Trainer.fit`; on the CPU with a fixed
thread count the continued run is bit-for-bit the uninterrupted one.

Results go to callbacks (:mod:`ticketlab.runner.callbacks`: the ``metrics.jsonl`` file, the tracker,
the log line), called with each epoch's metric row of the main phase.

Under ``trainer.strategy=ddp`` (:mod:`ticketlab.distributed`) each rank trains on its part of every
global batch through DistributedDataParallel, the ranks agree at every step on stopping,
divergence and timed checkpoints, evaluation sums over ranks, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ticketlab import distributed
from ticketlab.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from ticketlab.data import DataBundle
from ticketlab.data.loaders import EpochOrder, eval_batches
from ticketlab.errors import Diverged, NonFiniteError
from ticketlab.files import atomic_torch_save
from ticketlab.pruners import PruneContext, Pruner
from ticketlab.pruners.phases import Phase, TrainState
from ticketlab.signals import NoStop, StopRequest
from ticketlab.sparsity.masks import nonfinite_scores
from ticketlab.sparsity.report import sparsity_report
from ticketlab.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2


def train_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss_fn: Callable,
               optimizer: torch.optim.Optimizer, autocast: Callable[[], contextlib.AbstractContextManager],
               after_backward: Callable[[], None] | None = None, check_loss: bool = True,
               grad_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``batch``: forward, loss, backward, step.

    Args:
        model: the model (in training mode).
        batch: ``(x: (B, C, H, W), y: (B,))`` on the model's device.
        loss_fn: ``loss_fn(logits (B, K), y) -> scalar``.
        optimizer: the phase's optimizer.
        autocast: a context-manager factory (bf16 autocast on CUDA, or a null context).
        after_backward: called between ``backward`` and ``optimizer.step`` (read or edit gradients).
        check_loss: check the loss for NaN/inf before the backward pass (a host synchronisation;
            the loop asks for it every step on the CPU and every few steps on CUDA).
        grad_scale: under DDP, ``loss_fn`` returns the *sum* over this rank's part of the batch and
            the gradient is taken of ``sum * grad_scale`` (``world / global batch size``), so that DDP's
            average over ranks is the mean over the global batch; the returned loss is the mean over
            this rank's part.

    Returns:
        ``(loss, correct)``: the detached mean loss (0-dim float) and the number of correct
        predictions (0-dim int64), both on the device.

    Raises:
        NonFiniteError: the loss is NaN or infinite (``check_loss``), or a top-k over non-finite
            scores was asked for; the step has not changed the model.
    """
    x, y = batch
    with autocast():
        out = model(x)
        loss = loss_fn(out, y)
    if check_loss and not bool(torch.isfinite(loss)):
        raise NonFiniteError("loss", f"the loss is {float(loss.detach())}")
    optimizer.zero_grad(set_to_none=True)
    (loss * grad_scale if grad_scale is not None else loss).backward()
    if after_backward is not None:
        after_backward()
    optimizer.step()
    mean = loss.detach() / len(y) if grad_scale is not None else loss.detach()
    return mean, (out.argmax(1) == y).sum()


class MainPhase(Phase):
    """The training the run is about: the method's trainable tensors, the configured optimizer and
    schedule, the method's hooks, evaluation and a metric row every epoch."""

    name = "main"

    def __init__(self, pruner: Pruner, optimizer_cfg: OptimizerConfig, scheduler_cfg: SchedulerConfig,
                 epochs: int) -> None:
        self.pruner, self.optimizer_cfg, self.scheduler_cfg = pruner, optimizer_cfg, scheduler_cfg
        self.epochs = epochs

    def begin(self, state: TrainState, resumed: bool) -> torch.optim.Optimizer:
        """The method's :meth:`~ticketlab.pruners.Pruner.begin_main`, then the optimizer and scheduler."""
        self.pruner.begin_main(state, resumed)
        optimizer = build_optimizer(self.pruner.trainable_parameters(state.model), self.optimizer_cfg)
        self.scheduler = build_scheduler(optimizer, self.scheduler_cfg, self.epochs)
        return optimizer

    def on_step_end(self, state: TrainState) -> None:
        """The method's step hook."""
        self.pruner.on_step_end(state)

    def on_epoch_end(self, state: TrainState) -> None:
        """The method's epoch hook, then the scheduler steps."""
        self.pruner.on_epoch_end(state)
        if state.scheduler is not None:
            state.scheduler.step()

    def after_evaluation(self, state: TrainState) -> None:
        """The method's post-evaluation hook."""
        self.pruner.after_evaluation(state)


class Callback:
    """Something the loop tells about progress (see :mod:`ticketlab.runner.callbacks`)."""

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """After each evaluated epoch of the main phase (``row`` is the new metric row)."""

    def on_resume(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """After a checkpoint was loaded, before training continues."""


class Trainer:
    """Run a method's phases and the main training; evaluate, log and checkpoint.

    Args:
        model: the (masked) model, already on ``device``.
        pruner: the method (its phases and hooks; its state is checkpointed).
        data: the :class:`~ticketlab.data.DataBundle`.
        cfg: trainer config.
        optimizer_cfg, scheduler_cfg: the main phase's optimizer and schedule.
        device: training device.
        run_dir: folder of ``last.ckpt`` (``None``: no checkpoint is written).
        ctx: the method's context (its phases are built from it).
        callbacks: told about every main-phase epoch (metrics file, tracker, log).
        stop: the stop flag (signals); checked after every step.
        extra_state: JSON-able data stored in the checkpoint (the resolved config, the run id).
        dist: this process's place in a DDP run (:data:`ticketlab.distributed.SINGLE` by default).
    """

    def __init__(self, model: nn.Module, pruner: Pruner, data: DataBundle, cfg: TrainerConfig,
                 optimizer_cfg: OptimizerConfig, scheduler_cfg: SchedulerConfig, device: torch.device,
                 run_dir: Path | None, ctx: PruneContext, callbacks: Sequence[Callback] = (),
                 stop: StopRequest | None = None, extra_state: dict[str, Any] | None = None,
                 dist: distributed.Dist = distributed.SINGLE) -> None:
        self.model, self.pruner, self.data, self.cfg, self.device = model, pruner, data, cfg, device
        self.dist = dist
        self.shard = (dist.rank, dist.world) if dist.enabled and dist.world > 1 else None
        self.train_model: nn.Module = model  # the model in DistributedDataParallel under DDP
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.stop = stop if stop is not None else NoStop()
        self.extra_state = extra_state or {}
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                           reduction="sum" if self.shard else "mean")
        self.main = MainPhase(pruner, optimizer_cfg, scheduler_cfg, cfg.epochs)
        self.phases: list[Phase] = [*pruner.phases(ctx), self.main]
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        self.state = TrainState(model=model, device=device, data=data, run_dir=self.run_dir, dist=dist)
        self.phase_index = 0
        self.phase_begun = False
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.position: dict[str, Any] | None = None  # inside an epoch: order, next batch, running sums
        self._pending: dict[str, Any] | None = None  # optimizer/scheduler state to load when the phase begins
        self._last_checkpoint = time.monotonic()
        # On CUDA the loss (and, under DDP, the ranks' flags) is checked every `sync_every` steps (one host
        # synchronisation), on the CPU every step.
        self.sync_every = 1 if device.type == "cpu" else 25

    # ------------------------------------------------------------------ helpers
    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self.phases[self.phase_index]

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The current phase's optimizer."""
        return self.state.optimizer

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch on the run's device (channels-last for image batches with ``trainer.channels_last``)."""
        if self.cfg.channels_last and x.dim() == 4:
            return x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return x.to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def where(self) -> str:
        """``"epoch 3, step 41"`` (inside epoch 3, after 41 steps) or ``"end of epoch 2, step 40"`` (with
        the phase when it is not ``main``)."""
        phase = "" if self.phase.name == "main" else f" of phase {self.phase.name}"
        if self.position is not None:
            return f"epoch {self.state.epoch + 1}, step {self.state.step}{phase}"
        return f"end of epoch {self.state.epoch}, step {self.state.step}{phase}"

    # ------------------------------------------------------------------ running
    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining phases (from the checkpointed position, if one was loaded).

        Returns:
            The metric history (one row per main-phase epoch).

        Raises:
            Diverged: a non-finite loss or non-finite scores; the run must stop.
            Preempted: a stop signal; the checkpoint is written first.
        """
        while self.phase_index < len(self.phases):
            phase = self.phase
            self._begin(phase)
            if phase is self.main and self.cfg.epochs == 0 and not self.history:
                self._evaluate_and_record(0, {"train_loss": float("nan"), "train_acc": float("nan"),
                                              "train_s": 0.0, "images": 0}, self.state.lr, time.perf_counter())
            self._train_phase(phase)
            phase.end(self.state)
            if self.phase_index + 1 < len(self.phases):
                self.phase_index += 1
                self.phase_begun = False
                self.state.epoch = self.state.step = 0
                self.state.optimizer = self.state.scheduler = None
                self.checkpoint()
                self.stop.check(self.where())
            else:
                break
        return self.history

    def _begin(self, phase: Phase) -> None:
        st = self.state
        st.phase, st.epochs = phase.name, phase.epochs
        resumed = self.phase_begun
        st.optimizer = phase.begin(st, resumed)
        st.scheduler = phase.scheduler
        if self._pending is not None:
            st.optimizer.load_state_dict(self._pending["optimizer"])
            if st.scheduler is not None and self._pending.get("scheduler") is not None:
                st.scheduler.load_state_dict(self._pending["scheduler"])
            self._pending = None
        self.train_model = distributed.wrap(self.model, self.dist)
        if self.cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.phase_begun = True
        if not resumed and phase is not self.main:
            log.info("phase %s: %d epoch(s)%s", phase.name, phase.epochs,
                     f", at most {phase.max_steps} steps" if phase.max_steps else "")

    def _batches_per_epoch(self, phase: Phase) -> int:
        n = len(self.data.train)
        for cap in (self.cfg.limit_train_batches, phase.batches_per_epoch):
            if cap:
                n = min(n, cap)
        return n

    def _train_phase(self, phase: Phase) -> None:
        st = self.state
        while st.epoch < phase.epochs and not (phase.max_steps and st.step >= phase.max_steps):
            stopped_early = self._train_epoch(phase)
            if stopped_early:  # the phase's step budget ran out inside the epoch
                return
            st.epoch += 1
            phase.on_epoch_end(st)
            if phase is self.main:
                distributed.check_same(self.dist, self.model)
                self._evaluate_and_record(st.epoch, self._epoch_train, self._epoch_lr, self._epoch_start)
                phase.after_evaluation(st)
            else:
                t = self._epoch_train
                log.info("phase %s epoch %d: train_loss %.4f train_acc %.4f (%.1f s)", phase.name, st.epoch,
                         t["train_loss"], t["train_acc"], time.perf_counter() - self._epoch_start)
            self.checkpoint()
            self.stop.check(self.where())

    def _train_epoch(self, phase: Phase) -> bool:
        """Train one epoch (or its rest, when resuming inside it); returns True when ``max_steps`` cut it short."""
        st = self.state
        model = self.model
        model.train()
        if self.position is not None:
            order = EpochOrder.from_state(self.position["order"])
            start = int(self.position["batch"])
            own = not self.shard or self.dist.main  # under DDP the saved running sums (every rank's) go to rank 0
            loss_sum = torch.tensor(self.position["loss_sum"] if own else 0.0, dtype=torch.float64, device=self.device)
            correct = torch.tensor(self.position["correct"] if own else 0, dtype=torch.long, device=self.device)
            seen = int(self.position["seen"]) if own else 0
            self._epoch_lr = self.position["lr"]
        else:
            order, start = self.data.train.new_order(), 0
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            seen = 0
            self._epoch_lr = st.lr
        self._epoch_start = time.perf_counter()
        total = self._batches_per_epoch(phase)
        label = f"epoch {st.epoch + 1}/{phase.epochs}" + ("" if phase is self.main else f" ({phase.name})")
        bar = tqdm(total=total, initial=start, desc=label, leave=False, dynamic_ncols=True,
                   disable=None if self.cfg.progress else True)  # None: off when stderr is not a terminal
        after_backward = (lambda: phase.after_backward(st)) if type(phase).after_backward is not Phase.after_backward \
            else None
        cut_short = False
        i = start
        train_start = time.perf_counter()
        bs, n_train = self.data.train.batch_size, self.data.num_train
        try:
            for i, (x, y) in enumerate(self.data.train.batches(order, start, self.shard), start=start):
                if i >= total:
                    break
                x, y = self._to_device(x), y.to(self.device, non_blocking=True)
                check = (self.global_step + 1) % self.sync_every == 0
                scale = self.dist.world / min(bs, n_train - i * bs) if self.shard else None
                try:
                    loss, hits = train_step(self.train_model, (x, y), self.loss_fn, st.optimizer, self._autocast,
                                            after_backward, check_loss=check and not self.shard, grad_scale=scale)
                except NonFiniteError as e:
                    raise Diverged(e.what, phase.name, st.epoch + 1, st.step + 1, st.lr) from e
                bad = None  # found after the step: under DDP every rank must agree before stopping
                if check and self.shard and not bool(torch.isfinite(loss)):
                    bad = "loss"
                elif check and self.device.type != "cpu" and nonfinite_scores(model):
                    bad = "scores"
                if bad and not self.shard:
                    raise Diverged(bad, phase.name, st.epoch + 1, st.step + 1, st.lr)
                st.step += 1
                self.global_step += 1
                st.batch = (x, y)
                phase.on_step_end(st)
                loss_sum += loss.double() * len(y)
                correct += hits
                seen += len(y)
                bar.update(1)
                if bar.n % 20 == 0 or bar.n == total:
                    bar.set_postfix(loss=f"{loss_sum.item() / max(seen, 1):.4f}",
                                    acc=f"{correct.item() / max(seen, 1):.4f}")
                last = i + 1 >= total
                if phase.max_steps and st.step >= phase.max_steps and not last:
                    cut_short = True
                stop_now, timer = self.stop.requested, self._timer_due()
                if self.shard and check:
                    diverged, stop_now, timer = distributed.agree(self.dist, [bad is not None, stop_now, timer],
                                                                  self.device)
                    if diverged:
                        raise Diverged(bad or "loss", phase.name, st.epoch + 1, st.step, st.lr)
                    if stop_now and not self.stop.requested:  # another rank got the signal: SIGTERM stands for it
                        self.stop.request(signal.SIGTERM)
                elif self.shard:
                    stop_now = timer = False
                if not last and not cut_short and (stop_now or timer):
                    sums = (loss_sum, correct, torch.tensor(seen, device=self.device))
                    if self.shard:  # the checkpoint holds the running sums of every rank
                        sums = distributed.all_sum(self.dist, *sums)
                    self.position = {"order": order.state_dict(), "batch": i + 1, "loss_sum": float(sums[0]),
                                     "correct": int(sums[1]), "seen": int(sums[2]), "lr": self._epoch_lr}
                    self.checkpoint()
                    self.stop.check(self.where())
                    self.position = None
                if cut_short:
                    break
        finally:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.shard:  # the epoch's training metrics over every rank
            loss_sum, correct, seen_t = distributed.all_sum(self.dist, loss_sum, correct,
                                                            torch.tensor(seen, device=self.device))
            seen = int(seen_t)
        if (self.device.type != "cpu" or self.shard) and not bool(torch.isfinite(loss_sum)):
            raise Diverged("loss", phase.name, st.epoch + 1, st.step, st.lr)
        self.position = None
        elapsed = time.perf_counter() - train_start
        self._epoch_train = {"train_loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
                             "train_s": elapsed, "images": seen}
        return cut_short

    def _timer_due(self) -> bool:
        every = self.cfg.checkpoint_every_min
        return bool(self.cfg.checkpoint and every and time.monotonic() - self._last_checkpoint >= every * 60)

    @torch.no_grad()
    def evaluate(self, loader=None) -> tuple[float, float]:
        """Mean loss and accuracy (in [0, 1]) on ``loader`` (default: the test set), in eval mode.

        Raises:
            Diverged: the masks cannot be computed (non-finite scores).
        """
        loader = loader if loader is not None else self.data.test
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        try:
            for i, (x, y) in enumerate(eval_batches(loader, self.shard)):
                if self.cfg.limit_eval_batches and i >= self.cfg.limit_eval_batches:
                    break
                x, y = self._to_device(x), y.to(self.device, non_blocking=True)
                with self._autocast():
                    out = self.model(x)
                loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
                correct += (out.argmax(1) == y).sum()
                seen += len(y)
        except NonFiniteError as e:
            raise Diverged(e.what, self.phase.name, max(self.state.epoch, 1), self.state.step, self.state.lr) from e
        if self.shard:
            loss_sum, correct, seen_t = distributed.all_sum(self.dist, loss_sum, correct,
                                                            torch.tensor(seen, device=self.device))
            seen = int(seen_t)
        return loss_sum.item() / max(seen, 1), int(correct.item()) / max(seen, 1)

    def _evaluate_and_record(self, epoch: int, train: dict[str, float], lr: float | None, start: float) -> None:
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
        for cb in self.callbacks:
            cb.on_epoch_end(self.state, row, self.history)

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> None:
        """Write ``last.ckpt`` atomically (when ``trainer.checkpoint`` and a run folder are set)."""
        if not self.cfg.checkpoint or self.run_dir is None:
            return
        if self.dist.main:  # under DDP only rank 0 writes; every rank holds the same state
            atomic_torch_save(self.run_dir / "last.ckpt", self.state_dict())
        self._last_checkpoint = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (see the module docstring)."""
        st = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "phase_index": self.phase_index,
            "phase": self.phase.name,
            "phase_begun": self.phase_begun,
            "epoch": st.epoch,
            "step": st.step,
            "global_step": self.global_step,
            "position": self.position,
            "history": list(self.history),
            "model": self.model.state_dict(),
            "optimizer": st.optimizer.state_dict() if st.optimizer is not None and self.phase_begun else None,
            "scheduler": st.scheduler.state_dict() if st.scheduler is not None and self.phase_begun else None,
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
        """Restore :meth:`state_dict`; the optimizer and scheduler are restored when their phase begins.

        Writes nothing; call :meth:`notify_resume` once the run goes on.

        Raises:
            ValueError: a checkpoint of another format or of other phases.
            RuntimeError: a model state that does not fit this model (``load_state_dict``).
        """
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        idx = state["phase_index"]
        if idx >= len(self.phases) or self.phases[idx].name != state["phase"]:
            raise ValueError(f"checkpoint is in phase {state['phase']!r}, which this run does not have "
                             f"({', '.join(p.name for p in self.phases)})")
        self.model.load_state_dict(state["model"])
        self.pruner.load_state_dict(state["pruner"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rng["data"] is not None and self.data.generator is not None:
            self.data.generator.set_state(rng["data"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        self.phase_index, self.phase_begun = state["phase_index"], state["phase_begun"]
        self.state.epoch, self.state.step = state["epoch"], state["step"]
        self.state.phase = state["phase"]
        self.global_step = state["global_step"]
        self.position = state["position"]
        self.history = list(state["history"])
        self._pending = {"optimizer": state["optimizer"], "scheduler": state["scheduler"]} \
            if state["phase_begun"] and state["optimizer"] is not None else None

    def notify_resume(self) -> None:
        """Tell the callbacks that training continues from the loaded checkpoint (they rewrite what the
        attempt that died wrote after it)."""
        log.info("resuming at %s", self.where() if self.position or self.phase_begun else
                 f"the start of phase {self.phase.name}")
        for cb in self.callbacks:
            cb.on_resume(self.state, self.history)


__all__ = ["Callback", "MainPhase", "Trainer", "train_step"]
