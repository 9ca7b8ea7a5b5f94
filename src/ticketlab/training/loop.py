"""The training loop: a run's phases of optimizer steps through one step function, exact checkpoints.

A run trains in phases (:mod:`ticketlab.pruners.phases`), which the runner hands over in order: the
method's pre-training phases, if any, then ``main``, the training the run is about (evaluated and
logged every epoch). Every optimizer step of every phase goes through :func:`train_step`, so each
one gets mixed precision, batch limits, the non-finite check, the progress bar, stop signals and
checkpoints. The loop knows the phase contract only, never a method.

:class:`Trainer` owns everything a run needs to continue -- model (weights, scores, masks),
optimizer, scheduler, method state, RNG states, the phase, epoch and step counters, the position
inside the current epoch (:class:`~ticketlab.training.position.EpochPosition`) and the metric
history -- and :meth:`Trainer.state_dict` puts all of it in one checkpoint (``last.ckpt``, written
atomically at every epoch end, every ``trainer.checkpoint_every_min`` minutes inside an epoch, at
every phase boundary, and when a stop signal arrives). Continuing a run is
:meth:`Trainer.load_state_dict` followed by :meth:`Trainer.fit`; on the CPU with a fixed thread
count the continued run is bit-for-bit the uninterrupted one.

Results go to callbacks (:class:`Callback`), called with each epoch's metric row of the main phase.

Under ``trainer.strategy=ddp`` (:mod:`ticketlab.distributed`) each rank trains on its part of every
global batch through DistributedDataParallel, the ranks agree at every step on stopping,
divergence and timed checkpoints, evaluation sums over ranks, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ticketlab import distributed
from ticketlab.config import TrainerConfig
from ticketlab.data.loaders import DataBundle
from ticketlab.errors import Diverged, NonFiniteError
from ticketlab.files import atomic_torch_save
from ticketlab.pruners.phases import Phase, Stateful, TrainState
from ticketlab.signals import NoStop, StopRequest
from ticketlab.sparsity.masks import nonfinite_scores
from ticketlab.sparsity.report import sparsity_report
from ticketlab.training import checkpoint
from ticketlab.training.evaluation import evaluate
from ticketlab.training.placement import Placement
from ticketlab.training.position import EpochPosition, RunningSums

log = logging.getLogger(__name__)


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


class Callback:
    """Something the loop tells about progress (see :mod:`ticketlab.runner.callbacks`)."""

    def on_epoch_end(self, state: TrainState, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """After each evaluated epoch of the main phase (``row`` is the new metric row)."""

    def on_resume(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """After a checkpoint was loaded, before training continues."""


@dataclass
class EpochResult:
    """One trained epoch (or its rest) as its metric row needs it.

    Attributes:
        train_loss, train_acc: mean training loss and accuracy over the epoch's examples.
        train_s: seconds spent in the epoch's steps.
        images: training examples of the epoch (every rank).
        lr: the learning rate the epoch started with.
        start: ``time.perf_counter()`` when the epoch (or its rest) began.
        cut_short: the phase's step budget ran out inside the epoch.
    """

    train_loss: float
    train_acc: float
    train_s: float
    images: int
    lr: float | None
    start: float
    cut_short: bool = False


class Trainer:
    """Run the phases the runner built; evaluate, log and checkpoint.

    Args:
        model: the (masked) model, already on ``placement.device``.
        phases: the run's phases in order, the last one evaluated (the main training).
        method: the method's checkpointed state (the pruner).
        data: the :class:`~ticketlab.data.loaders.DataBundle`.
        cfg: trainer config.
        placement: device, DDP context, autocast and memory format.
        run_dir: folder of ``last.ckpt`` (``None``: no checkpoint is written).
        callbacks: told about every main-phase epoch (metrics file, tracker, log).
        stop: the stop flag (signals); checked after every step.
        extra_state: JSON-able data stored in the checkpoint (the resolved config).

    Raises:
        ValueError: phase names that repeat, or a last phase that is not evaluated.
    """

    def __init__(self, model: nn.Module, phases: Sequence[Phase], method: Stateful, data: DataBundle,
                 cfg: TrainerConfig, placement: Placement, run_dir: Path | None = None,
                 callbacks: Sequence[Callback] = (), stop: StopRequest | None = None,
                 extra_state: dict[str, Any] | None = None) -> None:
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        if not phases or not phases[-1].evaluated:
            raise ValueError(f"the last phase must be the evaluated main training, got {names}")
        self.model, self.method, self.data, self.cfg, self.placement = model, method, data, cfg, placement
        self.phases, self.main = list(phases), phases[-1]
        self.shard = placement.shard
        self.train_model: nn.Module = model  # the model in DistributedDataParallel under DDP
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.stop = stop if stop is not None else NoStop()
        self.extra_state = extra_state or {}
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                           reduction="sum" if self.shard else "mean")
        self.state = TrainState(model=model, device=placement.device, data=data, run_dir=self.run_dir,
                                dist=placement.dist)
        self.phase_index = 0
        self.phase_begun = False
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.position: EpochPosition | None = None  # set inside an epoch while checkpointing, and when resuming
        self._pending: dict[str, Any] | None = None  # optimizer/scheduler state to load when the phase begins
        self._last_checkpoint = time.monotonic()
        # The loss (and, under DDP, the ranks' flags) is checked every `sync_every` steps: one host
        # synchronisation, so every step on the CPU and every 25 on CUDA.
        self.sync_every = 1 if placement.device.type == "cpu" else 25

    @property
    def device(self) -> torch.device:
        """The training device."""
        return self.placement.device

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self.phases[self.phase_index]

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The current phase's optimizer."""
        return self.state.optimizer

    def where(self) -> str:
        """``"epoch 3, step 41"`` (inside epoch 3, after 41 steps) or ``"end of epoch 2, step 40"`` (with
        the phase when it is not ``main``)."""
        phase = "" if self.phase is self.main else f" of phase {self.phase.name}"
        if self.position is not None:
            return f"epoch {self.state.epoch + 1}, step {self.state.step}{phase}"
        return f"end of epoch {self.state.epoch}, step {self.state.step}{phase}"

    # ------------------------------------------------------------------ phases
    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining phases (from the checkpointed position, if one was loaded).

        Returns:
            The metric history (one row per main-phase epoch).

        Raises:
            Diverged: a non-finite loss or non-finite scores; the run must stop.
            Preempted: a stop signal; the checkpoint is written first.
        """
        while True:
            phase = self.phase
            self._begin(phase)
            if phase is self.main and self.cfg.epochs == 0 and not self.history:  # evaluate the untrained masks
                self._record(0, EpochResult(float("nan"), float("nan"), 0.0, 0, self.state.lr, time.perf_counter()))
            self._train_phase(phase)
            phase.end(self.state)
            if self.phase_index + 1 == len(self.phases):
                return self.history
            self.phase_index += 1  # the next phase starts from its own counters, optimizer and schedule
            self.phase_begun = False
            self.state.epoch = self.state.step = 0
            self.state.optimizer = self.state.scheduler = None
            self.checkpoint()
            self.stop.check(self.where())

    def _begin(self, phase: Phase) -> None:
        """Set up ``phase`` (again, when resuming inside it): its optimizer, then any checkpointed optimizer state."""
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
        self.train_model = distributed.wrap(self.model, self.placement.dist)
        if self.cfg.compile:
            # the public call carries the deterministic switch into inductor's config (seed_everything skips it)
            torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(),
                                               warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
            self.train_model = torch.compile(self.train_model)
        self.phase_begun = True
        if not resumed and phase is not self.main:
            log.info("phase %s: %d epoch(s)%s", phase.name, phase.epochs,
                     f", at most {phase.max_steps} steps" if phase.max_steps else "")

    def _train_phase(self, phase: Phase) -> None:
        """The phase's remaining epochs; after each: its hook, evaluation (main), the checkpoint, a stop check."""
        st = self.state
        while st.epoch < phase.epochs and not (phase.max_steps and st.step >= phase.max_steps):
            result = self._train_epoch(phase)
            if result.cut_short:  # the phase's step budget ran out inside the epoch
                return
            st.epoch += 1
            phase.on_epoch_end(st)
            if phase.evaluated:
                distributed.check_same(self.placement.dist, self.model)
                self._record(st.epoch, result)
                phase.after_evaluation(st)
            else:
                log.info("phase %s epoch %d: train_loss %.4f train_acc %.4f (%.1f s)", phase.name, st.epoch,
                         result.train_loss, result.train_acc, time.perf_counter() - result.start)
            self.checkpoint()
            self.stop.check(self.where())

    def _batches_per_epoch(self, phase: Phase) -> int:
        n = len(self.data.train)
        for cap in (self.cfg.limit_train_batches, phase.batches_per_epoch):
            if cap:
                n = min(n, cap)
        return n

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self, phase: Phase) -> EpochResult:
        """Train one epoch, or its rest when resuming inside it."""
        st = self.state
        self.model.train()
        start = self.position or EpochPosition(self.data.train.new_order(), lr=st.lr)  # restored, or a new order
        self.position = None
        sums = RunningSums(self.device, start, own=not self.shard or self.placement.dist.main)
        began = time.perf_counter()
        total = self._batches_per_epoch(phase)
        label = f"epoch {st.epoch + 1}/{phase.epochs}" + ("" if phase is self.main else f" ({phase.name})")
        bar = tqdm(total=total, initial=start.batch, desc=label, leave=False, dynamic_ncols=True,
                   disable=None if self.cfg.progress else True)  # None: off when stderr is not a terminal
        phase.begin_epoch(st)  # what this epoch trains and is evaluated with (again when resuming inside it)
        hook = phase.backward_hook()
        after_backward = (lambda: hook(st)) if hook is not None else None
        cut_short = False
        try:
            batches = self.data.train.batches(start.order, start.batch, self.shard)
            for i, (x, y) in enumerate(batches, start=start.batch):
                if i >= total:
                    break
                loss, hits, bad = self._step(phase, x, y, i, after_backward)
                sums.add(loss, hits, len(y))
                bar.update(1)
                if bar.n % 20 == 0 or bar.n == total:
                    bar.set_postfix(loss=f"{sums.mean_loss():.4f}", acc=f"{sums.accuracy():.4f}")
                last = i + 1 >= total
                cut_short = bool(phase.max_steps and st.step >= phase.max_steps and not last)
                pause = self._pause_requested(phase, bad)
                if pause and not last and not cut_short:  # checkpoint inside the epoch, then honour a stop
                    self._checkpoint_inside(EpochPosition(start.order, i + 1, lr=start.lr), sums)
                if cut_short:
                    break
        finally:
            bar.close()
        return self._epoch_result(phase, sums, start.lr, began, cut_short)

    def _step(self, phase: Phase, x: torch.Tensor, y: torch.Tensor, i: int,
              after_backward: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        """One optimizer step of ``phase`` on batch ``i``, then its hook; returns ``(loss, hits, what went bad)``.

        Raises:
            Diverged: a non-finite loss or scores (a single process stops at once; under DDP the
                ranks first agree, in :meth:`_pause_requested`).
        """
        st = self.state
        x, y = self.placement.to_device(x), y.to(self.device, non_blocking=True)
        check = (self.global_step + 1) % self.sync_every == 0
        scale = self.placement.dist.world / min(self.data.train.batch_size, self.data.num_train - i *
                                                self.data.train.batch_size) if self.shard else None
        try:
            loss, hits = train_step(self.train_model, (x, y), self.loss_fn, st.optimizer, self.placement.autocast,
                                    after_backward, check_loss=check and not self.shard, grad_scale=scale)
        except NonFiniteError as e:
            raise Diverged(e.what, phase.name, st.epoch + 1, st.step + 1, st.lr) from e
        bad = None  # found after the step: under DDP every rank must agree before stopping
        if check and self.shard and not bool(torch.isfinite(loss)):
            bad = "loss"
        elif check and self.device.type != "cpu" and nonfinite_scores(self.model):
            bad = "scores"
        if bad and not self.shard:
            raise Diverged(bad, phase.name, st.epoch + 1, st.step + 1, st.lr)
        st.step += 1
        self.global_step += 1
        st.batch, st.batch_index = (x, y), i
        phase.on_step_end(st)
        return loss, hits, bad

    def _pause_requested(self, phase: Phase, bad: str | None) -> bool:
        """Whether to checkpoint now (a stop signal, or the timed checkpoint is due); under DDP every rank
        agrees first, on that and on divergence, at the steps that synchronise.

        Raises:
            Diverged: some rank saw a non-finite loss or scores.
        """
        stop_now, timer = self.stop.requested, self._timer_due()
        if not self.shard:
            return stop_now or timer
        if self.global_step % self.sync_every != 0:  # ranks only agree at synchronising steps
            return False
        st = self.state
        diverged, stop_now, timer = distributed.agree(self.placement.dist, [bad is not None, stop_now, timer],
                                                      self.device)
        if diverged:
            raise Diverged(bad or "loss", phase.name, st.epoch + 1, st.step, st.lr)
        if stop_now and not self.stop.requested:  # another rank got the signal: SIGTERM stands for it
            self.stop.request(signal.SIGTERM)
        return stop_now or timer

    def _checkpoint_inside(self, position: EpochPosition, sums: RunningSums) -> None:
        """Checkpoint at ``position`` with the running sums of every rank, then honour a stop request."""
        loss_sum, correct, seen = sums.totals(self.placement.dist, bool(self.shard))
        position.loss_sum, position.correct, position.seen = float(loss_sum), int(correct), int(seen)
        self.position = position
        self.checkpoint()
        self.stop.check(self.where())
        self.position = None

    def _epoch_result(self, phase: Phase, sums: RunningSums, lr: float | None, began: float,
                      cut_short: bool) -> EpochResult:
        """The epoch's training metrics over every rank.

        Raises:
            Diverged: a non-finite epoch loss found at the end (CUDA and DDP check only some steps).
        """
        st = self.state
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        loss_sum, correct, seen = sums.totals(self.placement.dist, bool(self.shard))
        if (self.device.type != "cpu" or self.shard) and not bool(torch.isfinite(loss_sum)):
            raise Diverged("loss", phase.name, st.epoch + 1, st.step, st.lr)
        return EpochResult(loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1),
                           time.perf_counter() - began, seen, lr, began, cut_short)

    def _timer_due(self) -> bool:
        every = self.cfg.checkpoint_every_min
        return bool(self.cfg.checkpoint and every and time.monotonic() - self._last_checkpoint >= every * 60)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, loader: Any = None) -> tuple[float, float]:
        """Mean loss and accuracy (in [0, 1]) on ``loader`` (default: the test set), in eval mode.

        Raises:
            Diverged: the masks cannot be computed (non-finite scores).
        """
        loader = loader if loader is not None else self.data.test
        try:
            return evaluate(self.model, loader, self.placement, self.cfg.limit_eval_batches)
        except NonFiniteError as e:
            st = self.state
            raise Diverged(e.what, self.phase.name, max(st.epoch, 1), st.step, st.lr) from e

    def _record(self, epoch: int, result: EpochResult) -> None:
        """Evaluate, append the epoch's metric row and tell the callbacks."""
        test_loss, test_acc = self.evaluate()
        val = {}
        if self.data.val is not None:
            val_loss, val_acc = self.evaluate(self.data.val)
            val = {"val_loss": val_loss, "val_acc": val_acc}
        row = {
            "epoch": epoch,
            "train_loss": result.train_loss, "train_acc": result.train_acc,
            **val,
            "test_loss": test_loss, "test_acc": test_acc,
            "lr": result.lr,
            "sparsity": sparsity_report(self.model).sparsity,
            "epoch_s": time.perf_counter() - result.start,
            "images_per_s": result.images / result.train_s if result.train_s > 0 else 0.0,
        }
        self.history.append(row)
        for cb in self.callbacks:
            cb.on_epoch_end(self.state, row, self.history)

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> None:
        """Write ``last.ckpt`` atomically (when ``trainer.checkpoint`` and a run folder are set)."""
        if not self.cfg.checkpoint or self.run_dir is None:
            return
        if self.placement.dist.main:  # under DDP only rank 0 writes; every rank holds the same state
            atomic_torch_save(self.run_dir / "last.ckpt", self.state_dict())
        self._last_checkpoint = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (see the module docstring)."""
        st = self.state
        return {
            "format": checkpoint.CHECKPOINT_FORMAT,
            "phase_index": self.phase_index,
            "phase": self.phase.name,
            "phase_begun": self.phase_begun,
            "epoch": st.epoch,
            "step": st.step,
            "global_step": self.global_step,
            "position": self.position.state_dict() if self.position is not None else None,
            "history": list(self.history),
            "model": self.model.state_dict(),
            "optimizer": st.optimizer.state_dict() if st.optimizer is not None and self.phase_begun else None,
            "scheduler": st.scheduler.state_dict() if st.scheduler is not None and self.phase_begun else None,
            "pruner": self.method.state_dict(),
            "rng": checkpoint.rng_state(self.data.generator),
            **self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the optimizer and scheduler are restored when their phase begins.

        Writes nothing; call :meth:`notify_resume` once the run goes on.

        Raises:
            ValueError: a checkpoint of another format or of other phases.
            RuntimeError: a model state that does not fit this model (``load_state_dict``).
        """
        checkpoint.check_fits(state, [p.name for p in self.phases])
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["pruner"])
        checkpoint.restore_rng(state["rng"], self.data.generator)
        self.phase_index, self.phase_begun = state["phase_index"], state["phase_begun"]
        self.state.epoch, self.state.step = state["epoch"], state["step"]
        self.state.phase = state["phase"]
        self.global_step = state["global_step"]
        self.position = EpochPosition.from_state(state["position"]) if state["position"] is not None else None
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


__all__ = ["Callback", "EpochResult", "Trainer", "train_step"]
