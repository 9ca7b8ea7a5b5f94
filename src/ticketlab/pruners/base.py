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
6. :meth:`Pruner.begin_main` and :meth:`Pruner.trainable_parameters` -- when the main training
   begins (or resumes): what the optimizer (and its weight decay) updates;
7. :meth:`Pruner.on_step_end` / :meth:`Pruner.on_epoch_end` during the main training; they
   receive a :class:`~ticketlab.pruners.phases.TrainState` (model, optimizer, scheduler, counters, last
   batch), never the loop;
8. :meth:`Pruner.state_dict` / :meth:`Pruner.load_state_dict` -- method state for checkpoints;
9. :meth:`Pruner.summary` -- method facts for ``summary.json``.

:meth:`Pruner.prepare` (attach + initialize) prunes a model outside the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from ticketlab.config import InitConfig, store_schema
from ticketlab.errors import check_range
from ticketlab.pruners.phases import Phase, TrainState
from ticketlab.registry import Registry
from ticketlab.signals import NoStop, StopRequest


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


@dataclass
class PruneContext:
    """What a pruner may use in :meth:`Pruner.prepare`.

    Attributes:
        seed: the run's seed.
        init: the init config (score seed, etc.).
        device: training device.
        data: the :class:`~ticketlab.data.DataBundle` (data-dependent methods).
        epochs: ``trainer.epochs`` (for schedules over the run).
        stop: the run's stop flag; long computations call ``ctx.stop.check(where)`` at safe points.
        run_dir: the run folder (``None`` outside the runner).
        stage: the stage of a multi-stage run (:class:`ticketlab.runner.stages.StageContext`), else ``None``.
        limit_train_batches: ``trainer.limit_train_batches`` (batches per epoch, ``None`` = all).
    """

    seed: int
    init: InitConfig
    device: torch.device
    data: Any = None
    epochs: int = 0
    stop: StopRequest = field(default_factory=NoStop)
    run_dir: Any = None
    stage: Any = None
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

    def begin_main(self, state: TrainState, resumed: bool) -> None:
        """The main training begins (``resumed``: it continues from a checkpoint; change no value then)."""

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer updates (default: every parameter with ``requires_grad``)."""
        return [p for p in model.parameters() if p.requires_grad]

    def on_step_end(self, state: TrainState) -> None:
        """Called after every optimizer step of the main training; ``state.step`` counts it (from 1)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called after every main training epoch, before the LR scheduler steps and before evaluation;
        ``state.epoch`` is the number of completed epochs (from 1)."""

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
