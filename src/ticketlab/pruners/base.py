"""The pruner API shared by every method.

A method is one module in this package: a config dataclass (its schema, registered in Hydra's
ConfigStore as ``/schema/pruner/<name>``) and a :class:`Pruner` subclass, both registered with
:func:`register_pruner`. The runner calls, in order:

1. :meth:`Pruner.densities` -- per-layer densities, for density-scaled initializations;
2. :meth:`Pruner.attach` -- after weight init: attach masks, freeze weights, initialize scores.
   Structure and deterministic values only: it runs again when a run resumes, before the
   checkpoint is loaded over it;
3. :meth:`Pruner.check` -- data-dependent validation (raises
   :class:`~ticketlab.errors.ConfigError`) and warnings, before anything is written;
4. :meth:`Pruner.initialize` -- fresh runs only: compute the starting mask (scores from data,
   random walks, a previous IMP level's mask);
5. :meth:`Pruner.phases` -- training phases before the main one (:class:`~ticketlab.pruners.phases.Phase`);
   the runner appends :class:`MainPhase`, whose hooks are the method's own, and hands the list to
   the loop;
6. :meth:`Pruner.begin_main` and :meth:`Pruner.trainable_parameters` -- when the main training
   begins (or resumes): what the optimizer (and its weight decay) updates;
7. :meth:`Pruner.begin_epoch`, :meth:`Pruner.after_backward`, :meth:`Pruner.on_step_end`,
   :meth:`Pruner.on_epoch_end` and :meth:`Pruner.after_evaluation` during the main training -- the
   same hooks as a :class:`~ticketlab.pruners.phases.Phase`; they receive a
   :class:`~ticketlab.pruners.phases.TrainState` (model, optimizer, scheduler, counters, last batch),
   never the loop. An epoch is evaluated with what it trained with: a change for the next epoch
   goes in :meth:`Pruner.begin_epoch`;
8. :meth:`Pruner.state_dict` / :meth:`Pruner.load_state_dict` -- method state for checkpoints;
9. :meth:`Pruner.summary` -- method facts for ``summary.json``.

:meth:`Pruner.prepare` (attach + initialize) prunes a model outside the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import MISSING
from torch import nn

from ticketlab.config import InitConfig, store_schema
from ticketlab.data.loaders import DataBundle
from ticketlab.errors import ConfigError, check_range
from ticketlab.pruners.phases import Phase, TrainState
from ticketlab.registry import Registry
from ticketlab.signals import NoStop, StopRequest
from ticketlab.sparsity.selection import density_of


@dataclass
class PrunerConfig:
    """Fields every ``pruner=`` option has.

    Attributes:
        name: the method.
        sparsity: fraction of prunable weights removed, in [0, 1) (density = 1 - sparsity).
    """

    name: str = MISSING
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        check_range("pruner.sparsity", self.sparsity, 0.0, 1.0, hi_open=True)

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept, ``1 - sparsity`` on the decimal the sparsity prints as
        (:func:`~ticketlab.sparsity.selection.density_of`: 0.2 at sparsity 0.8, not 0.19999999999999996);
        what papers that speak of k mean."""
        return density_of(self.sparsity)


class StageFiles(Protocol):
    """What a method sees of the stage of a multi-stage run it trains in (IMP's levels).

    The runner's stages (:class:`ticketlab.runner.stages.StageContext`) own the folders and file
    names; a method keeps and finds its inter-stage data by key only.

    Attributes:
        index: the stage's position (0 = first; IMP: the level).
        name: the stage's name (e.g. ``level_02``).
    """

    index: int
    name: str

    def save(self, key: str, obj: dict[str, torch.Tensor], shared: bool = False) -> None:
        """Keep ``obj`` (tensors only) under ``key``: for the next stage, or for every stage with ``shared``."""

    def locate(self, key: str, shared: bool = False) -> Path:
        """The file of ``key``: the previous stage's, or the run's shared one with ``shared``."""

    def load(self, key: str, shared: bool = False) -> dict[str, torch.Tensor]:
        """Read what :meth:`save` kept (the previous stage's, or the shared one)."""


@dataclass
class PruneContext:
    """What a pruner may use in :meth:`Pruner.prepare`.

    Attributes:
        seed: the run's seed.
        init: the init config (score seed, etc.).
        device: training device.
        data: the :class:`~ticketlab.data.loaders.DataBundle` (data-dependent methods).
        epochs: ``trainer.epochs`` (for schedules over the run).
        stop: the run's stop flag; long computations call ``ctx.stop.check(where)`` at safe points.
        run_dir: the run folder (``None`` outside the runner).
        stage: the stage of a multi-stage run (:class:`StageFiles`), else ``None``.
        limit_train_batches: ``trainer.limit_train_batches`` (batches per epoch, ``None`` = all).
    """

    seed: int
    init: InitConfig
    device: torch.device
    data: DataBundle | None = None
    epochs: int = 0
    stop: StopRequest = field(default_factory=NoStop)
    run_dir: Path | None = None
    stage: StageFiles | None = None
    limit_train_batches: int | None = None

    @property
    def batches_per_epoch(self) -> int | None:
        """Training batches per epoch (``None`` without data)."""
        if self.data is None:
            return None
        n = len(self.data.train)
        return min(n, self.limit_train_batches) if self.limit_train_batches else n

    @property
    def score_seed(self) -> int:
        """``init.score_seed`` or the run's seed."""
        return self.seed if self.init.score_seed is None else self.init.score_seed


class Pruner:
    """Base class: dense training, no masks. Subclasses override what they change.

    Args:
        cfg: the method's config dataclass instance.
    """

    def __init__(self, cfg: PrunerConfig) -> None:
        self.cfg = cfg

    def densities(self, model: nn.Module) -> dict[str, float]:
        """``{layer name: density}`` this method will give each prunable layer (default: none)."""
        return {}

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach masks, freeze tensors, set deterministic initial values (default: nothing).

        Runs for fresh and resumed runs alike, so it must not depend on anything but the config
        and the (re-initialized) model: a resumed run loads its checkpoint over the result.
        """

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Validate against the built model and data; return warnings for degenerate settings.

        Runs after :meth:`attach`, before anything is written to the run folder.

        Raises:
            ConfigError: a setting that cannot work with this model or data.
        """
        return []

    def initialize(self, model: nn.Module, ctx: PruneContext) -> None:
        """Fresh runs only, after :meth:`attach`: compute the starting mask (default: nothing)."""

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """:meth:`attach` then :meth:`initialize`: prune ``model`` outside the runner."""
        self.attach(model, ctx)
        self.initialize(model, ctx)

    def phases(self, ctx: PruneContext) -> list[Phase]:
        """Training phases that run before the main training (default: none)."""
        return []

    def after_backward(self, state: TrainState) -> None:
        """Called between ``loss.backward()`` and the optimizer step of the main training (read or edit
        gradients); the loop calls nothing there unless a method overrides it."""

    def begin_main(self, state: TrainState, resumed: bool) -> None:
        """The main training begins (``resumed``: it continues from a checkpoint; change no value then)."""

    def begin_epoch(self, state: TrainState) -> None:
        """Before the first step of main-training epoch ``state.epoch`` (0-based), also when a run resumes
        inside it: set what the epoch trains and is evaluated with (a density schedule). Calling it twice
        for the same epoch must change nothing."""

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer updates (default: every parameter with ``requires_grad``)."""
        return [p for p in model.parameters() if p.requires_grad]

    def on_step_end(self, state: TrainState) -> None:
        """Called after every optimizer step of the main training; ``state.step`` counts it (from 1)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called after every main training epoch, before the LR scheduler steps and before evaluation;
        ``state.epoch`` is the number of completed epochs (from 1). What it changes is evaluated as this
        epoch's result; a change for the next epoch belongs in :meth:`begin_epoch`."""

    def after_evaluation(self, state: TrainState) -> None:
        """Called after every main training epoch's evaluation and metric row, before its checkpoint
        (e.g. weight recycling, which the reference applies after validation)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state to checkpoint (counters, RNG states...); default empty."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def summary(self) -> dict[str, Any]:
        """Method facts merged into ``summary.json`` (default none)."""
        return {}

    @property
    def target_sparsity(self) -> float:
        """The sparsity this run (this stage) sets out to reach, as its log line and summary report it:
        ``pruner.sparsity`` unless the method decides otherwise (IMP's levels, a mask file)."""
        return float(self.cfg.sparsity)


class MainPhase(Phase):
    """The training the run is about, as the loop's last phase: the method's hooks, the run's optimizer and
    schedule, evaluation and a metric row every epoch.

    Args:
        pruner: the method; its hooks are this phase's.
        make_optimizer: ``make_optimizer(parameters) -> optimizer`` (the configured optimizer).
        make_scheduler: ``make_scheduler(optimizer) -> scheduler or None`` (the configured schedule).
        epochs: ``trainer.epochs``.
    """

    name = "main"
    evaluated = True

    def __init__(self, pruner: Pruner, make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
                 make_scheduler: Callable[[torch.optim.Optimizer], Any], epochs: int) -> None:
        self.pruner, self.make_optimizer, self.make_scheduler = pruner, make_optimizer, make_scheduler
        self.epochs = epochs

    def begin(self, state: TrainState, resumed: bool) -> torch.optim.Optimizer:
        """The method's :meth:`Pruner.begin_main`, then the optimizer and scheduler over its trainable tensors."""
        self.pruner.begin_main(state, resumed)
        optimizer = self.make_optimizer(self.pruner.trainable_parameters(state.model))
        self.scheduler = self.make_scheduler(optimizer)
        return optimizer

    def backward_hook(self) -> Callable[[TrainState], None] | None:
        """The method's :meth:`Pruner.after_backward` when it has one."""
        return self.pruner.after_backward if type(self.pruner).after_backward is not Pruner.after_backward else None

    def begin_epoch(self, state: TrainState) -> None:
        """The method's epoch-start hook."""
        self.pruner.begin_epoch(state)

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


def require_layer_biases(model: nn.Module, setting: str) -> None:
    """Raise unless some Conv/Linear layer of ``model`` has a bias (what ``setting`` needs).

    Args:
        model: the built model.
        setting: the setting that needs biases, as the user wrote it (``pruner.prune_bias=true``).

    Raises:
        ConfigError: naming ``setting`` and ``model.bias=true``.
    """
    if not any(getattr(m, "bias", None) is not None for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)):
        raise ConfigError(f"{setting} but the model has no layer biases; set model.bias=true.")


def require_affine_bn(model: nn.Module, key: str) -> None:
    """Raise unless ``model`` has an affine batch norm (for ``<key>=true``).

    Raises:
        ConfigError: naming ``key``, ``model.bn_affine=true`` and ``model.batch_norm=true``.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules()):
        raise ConfigError(f"{key}=true but the model has no affine batch norm; set model.bn_affine=true "
                          "(and model.batch_norm=true for MLP/Conv-n/VGG).")


PRUNERS: Registry[tuple[type[PrunerConfig], type[Pruner]]] = Registry("pruner")


def register_pruner(name: str, config_class: type[PrunerConfig]):
    """Class decorator registering a :class:`Pruner` and its config schema under ``name``.

    The schema becomes ``/schema/pruner/<name>`` in Hydra's ConfigStore; ``conf/pruner/<name>.yaml``
    lists it first in its defaults so that misspelled keys fail at compose time.
    """

    def deco(cls: type[Pruner]) -> type[Pruner]:
        PRUNERS.register(name)((config_class, cls))
        store_schema("pruner", name, config_class)
        return cls

    return deco


def build_pruner(cfg: PrunerConfig) -> Pruner:
    """Instantiate the pruner registered under ``cfg.name``.

    Raises:
        ConfigError: unknown name.
    """
    _, cls = PRUNERS.get(cfg.name)
    return cls(cfg)
