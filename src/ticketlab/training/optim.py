"""Optimizers and per-epoch learning-rate schedules (torch.optim, torch.optim.lr_scheduler)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ticketlab.config import AdamConfig, OptimizerConfig, SchedulerConfig, SGDConfig
from ticketlab.errors import ConfigError


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam over ``params``; weight decay applies to all of them.

    Args:
        params: what the method trains (scores for edge-popup, weights for dense training).
        cfg: an :class:`SGDConfig` or :class:`AdamConfig`.

    Raises:
        ConfigError: if ``params`` is empty (nothing to train).
    """
    if not params:
        raise ConfigError("the chosen pruner leaves no trainable parameter; nothing to optimize.")
    if isinstance(cfg, SGDConfig):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if isinstance(cfg, AdamConfig):
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer.name={cfg.name!r} is not allowed; choose sgd or adam.")


def lr_factor(epoch: int, cfg: SchedulerConfig, epochs: int, base_lr: float) -> float:
    """Multiplier of the base learning rate during epoch ``epoch`` (0-based).

    * warm-up: ``(epoch + 1) / warmup_epochs`` for ``epoch < warmup_epochs``;
    * ``cosine``: ``m + (1 - m) * 0.5 * (1 + cos(pi * t / T))`` with ``t = epoch - warmup``,
      ``T = epochs - warmup`` and ``m = min_lr / base_lr`` (edge-popup's per-epoch cosine,
      allenai/hidden-networks ``utils/schedulers.py``); with ``cycles = c`` the cosine restarts
      every ``ceil(T / c)`` epochs (``t`` taken modulo that);
    * ``step``: ``gamma ** (number of milestones <= epoch)``; default milestones 50% and 75%;
    * ``constant``: 1.
    """
    w = cfg.warmup_epochs
    if epoch < w:
        return (epoch + 1) / w
    if cfg.name == "cosine":
        span = max(1, math.ceil((epochs - w) / cfg.cycles))  # epochs per cosine cycle
        m = cfg.min_lr / base_lr
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * ((epoch - w) % span) / span))
    if cfg.name == "step":
        milestones = cfg.milestones or [epochs // 2, (3 * epochs) // 4]
        return cfg.gamma ** sum(1 for ms in milestones if ms <= epoch)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch with :func:`lr_factor`."""
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg, epochs, base))
