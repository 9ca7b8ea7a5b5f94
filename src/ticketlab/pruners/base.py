"""The pruner API shared by every method.

A method is one module in this package: a config dataclass (its schema, registered in Hydra's
ConfigStore as ``/schema/pruner/<name>``) and a :class:`Pruner` subclass, both registered with
:func:`register_pruner`. The runner calls, in order:

1. :meth:`Pruner.densities` -- per-layer densities, for density-scaled initializations;
2. :meth:`Pruner.prepare` -- after weight init, before the optimizer: attach masks, freeze
   weights, initialize scores, compute a mask from data, ...;
3. :meth:`Pruner.trainable_parameters` -- what the optimizer (and its weight decay) updates;
4. :meth:`Pruner.on_step_end` / :meth:`Pruner.on_epoch_end` during training (they receive the
   :class:`~ticketlab.loop.Trainer`: model, counters, last batch, optimizer, scheduler);
5. :meth:`Pruner.state_dict` / :meth:`Pruner.load_state_dict` -- method state for checkpoints;
6. :meth:`Pruner.summary` -- method facts for ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from ..config import InitConfig, store_schema
from ..errors import check_range
from ..registry import Registry


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
    """

    seed: int
    init: InitConfig
    device: torch.device
    data: Any = None
    epochs: int = 0

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

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach masks / freeze tensors before training (default: nothing)."""

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer updates (default: every parameter with ``requires_grad``)."""
        return [p for p in model.parameters() if p.requires_grad]

    def on_step_end(self, trainer: Any) -> None:
        """Called after every optimizer step; ``trainer.step`` counts completed steps from 1."""

    def on_epoch_end(self, trainer: Any) -> None:
        """Called after every training epoch, before the LR scheduler steps and before evaluation;
        ``trainer.epoch`` is the number of completed epochs (from 1)."""

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
