"""The contract between a method and the training loop: a typed training state and phases.

Methods never see the loop itself. Their hooks (:class:`ticketlab.pruners.Pruner`) receive a
:class:`TrainState` -- the model, optimizer and scheduler in force, the phase, the epoch and step
counters, the last batch -- and may change the learning rate only through
:meth:`TrainState.scale_lr`, which the loop records in its scheduler state (so a resumed run
continues with the same rate).

A method that trains something before the main training (the projected-SGD phase of
epsilon-perturbation, the candidate runs of K-starts) declares it as a :class:`Phase`; the main
training is a phase too (:class:`ticketlab.pruners.base.MainPhase`, whose hooks are the method's).
The runner hands the list of phases to the loop (:mod:`ticketlab.training.loop`), which knows this
module only: it runs every phase through the same step function, so each of their steps gets mixed
precision, batch limits, the non-finite check, the progress bar, signals and checkpoints, and a run
interrupted inside a phase continues inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ticketlab.data.loaders import DataBundle
from ticketlab.distributed import Dist, gather_batch


@dataclass
class TrainState:
    """What a method's hooks see of the training loop.

    Attributes:
        model: the masked model (on ``device``).
        optimizer: the optimizer of the current phase (``None`` before a phase begins).
        scheduler: the per-epoch learning-rate scheduler of the current phase, if any.
        phase: the phase's name (``"main"`` for the training the run is about).
        epoch: completed epochs of the phase (0 before the first one ends); inside an epoch, its 0-based index.
        step: completed optimizer steps of the phase.
        batch_index: 0-based index, within its epoch, of the batch of the last optimizer step.
        epochs: how many epochs the phase lasts.
        batch: the last training batch ``(x: (B, C, H, W), y: (B,))``, or ``None`` (under DDP: this
            rank's part of it; :meth:`global_batch` gathers the whole).
        device: the training device.
        data: the :class:`~ticketlab.data.loaders.DataBundle` (``None`` without data).
        run_dir: the run folder (``None`` outside the runner).
        dist: the process's place in a DDP run, or ``None`` (one process).
    """

    model: nn.Module
    device: torch.device
    data: DataBundle | None = None
    run_dir: Path | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    phase: str = "main"
    epoch: int = 0
    step: int = 0
    batch_index: int = 0
    epochs: int = 0
    batch: tuple[Tensor, Tensor] | None = None
    dist: Dist | None = None

    def global_batch(self) -> tuple[Tensor, Tensor] | None:
        """The last training batch of every rank, concatenated in rank order (the batch itself for one
        process): what a method that fits something on "the last batch" must use to stay rank-independent."""
        if self.batch is None or self.dist is None or not self.dist.enabled or self.dist.world == 1:
            return self.batch
        return gather_batch(self.dist, self.batch)

    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` from now on (every parameter group).

        The base rates of the scheduler change too, so the schedule keeps its shape around the new
        level, and both travel in the checkpoint (scaled edge-popup divides the rate by its fitted
        output scale; Fischer & Burkholz 2021, Sec. 4).

        Raises:
            ValueError: ``factor`` is not a positive finite number.
        """
        if not (factor > 0 and factor < float("inf")):
            raise ValueError(f"learning-rate factor {factor!r} must be positive and finite")
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] *= factor
        if self.scheduler is not None:
            self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]

    @property
    def lr(self) -> float | None:
        """The first parameter group's current learning rate (``None`` before a phase begins)."""
        return self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None


class Phase:
    """A stretch of training before the main one, declared by a method (:meth:`Pruner.phases`).

    Subclasses set :attr:`name`, :attr:`epochs` (and optionally :attr:`max_steps`,
    :attr:`batches_per_epoch`) and implement :meth:`begin`. The loop calls, in order:
    :meth:`begin`; per epoch :meth:`begin_epoch`, then per step :meth:`after_backward` and
    :meth:`on_step_end`, then :meth:`on_epoch_end` and (evaluated phases) :meth:`after_evaluation`;
    finally :meth:`end`.

    What an epoch is evaluated with is what it trained with: a change meant for the next epoch (a
    density schedule, an annealing level) belongs in :meth:`begin_epoch` of that epoch, never in
    :meth:`on_epoch_end`, which runs before the evaluation (chrundle/biprop ``main.py`` sets the
    density at the top of each epoch, and its training and ``validate()`` both use it). Whatever a phase
    must remember across a resume lives in the method's :meth:`~ticketlab.pruners.Pruner.state_dict` or in the model.

    Attributes:
        name: unique among the run's phases (``"main"`` is the main training's).
        evaluated: evaluate, record a metric row and call :meth:`after_evaluation` after every epoch
            (the main training only).
        epochs: passes over the training set.
        max_steps: stop the phase after this many optimizer steps (``None``: after ``epochs``).
        batches_per_epoch: cap on the batches of each epoch (on top of ``trainer.limit_train_batches``).
        scheduler: a per-epoch learning-rate scheduler set by :meth:`begin`, stepped by the phase's
            :meth:`on_epoch_end` (``None``: a constant rate); the loop checkpoints it.
    """

    name: str = "phase"
    evaluated: bool = False
    epochs: int = 1
    max_steps: int | None = None
    batches_per_epoch: int | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def begin(self, state: TrainState, resumed: bool) -> torch.optim.Optimizer:
        """Set which tensors train and return the phase's optimizer.

        Args:
            state: the loop state (``state.phase`` is already this phase's name).
            resumed: ``True`` when the run continues inside this phase from a checkpoint: set up
                what the checkpoint does not hold (``requires_grad`` flags, the optimizer), and
                change no tensor value (the checkpoint restores them afterwards).
        """
        raise NotImplementedError

    def begin_epoch(self, state: TrainState) -> None:
        """Before the first step of the epoch ``state.epoch`` (0-based), and again when a run resumes inside it:
        set what this epoch trains and is evaluated with. Must give the same result when called twice."""

    def after_backward(self, state: TrainState) -> None:
        """After ``loss.backward()``, before the optimizer step (e.g. read or edit gradients)."""

    def backward_hook(self) -> Callable[[TrainState], None] | None:
        """:meth:`after_backward` when this phase has one (``None``: the step calls nothing between
        backward and step)."""
        return self.after_backward if type(self).after_backward is not Phase.after_backward else None

    def on_step_end(self, state: TrainState) -> None:
        """After the optimizer step; ``state.step`` counts it."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After each completed epoch of the phase, before its evaluation: what it changes is part of this epoch's
        result (evaluated, and kept when the epoch is the last); ``state.epoch`` counts the epoch."""

    def after_evaluation(self, state: TrainState) -> None:
        """After the epoch's evaluation (phases with :attr:`evaluated` only), before the epoch's checkpoint; a
        change here after the phase's last epoch would never be evaluated."""

    def end(self, state: TrainState) -> None:
        """When the phase is over (its last step taken), before the next phase begins."""


class Stateful(Protocol):
    """What the loop checkpoints of a method besides the model: its counters and RNG states."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data for ``last.ckpt``."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


__all__ = ["Phase", "Stateful", "TrainState"]
