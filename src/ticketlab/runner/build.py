"""Build one run from its validated config: data, model, initialization, masks, phases and the loop.

:func:`setup` is where every check that needs the data or the built model happens (the model's fit
to the input, the method's own :meth:`~ticketlab.pruners.base.Pruner.check`); nothing is written to
the run folder here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ticketlab.data import build_data
from ticketlab.data.loaders import DataBundle
from ticketlab.errors import ConfigError
from ticketlab.init.weights import init_weights
from ticketlab.models import build_model
from ticketlab.pruners import MainPhase, PruneContext, Pruner, build_pruner
from ticketlab.pruners.base import StageFiles
from ticketlab.runner import devices, hydra_job, validate
from ticketlab.runner.callbacks import LogLine, MetricsFile
from ticketlab.runner.checks import check_model, model_warnings, split_checks
from ticketlab.runner.validate import RunConfig
from ticketlab.signals import StopRequest
from ticketlab.sparsity import kernels
from ticketlab.training.loop import Trainer
from ticketlab.training.optim import build_optimizer, build_scheduler
from ticketlab.training.placement import Placement


@dataclass
class Job:
    """Everything built for one run, ready to train (see :func:`setup`).

    Attributes:
        rc: the validated config.
        run_dir: the run folder.
        resolved: the resolved config as plain data (stored with results and checkpoints).
        ctx: the method's context.
        trainer: the loop, with the metrics-file and log callbacks.
        pruner: the method.
        warnings: legal but degenerate settings found so far.
        stop: the run's stop flag.
        placement: device, DDP context, threads, autocast.
    """

    rc: RunConfig
    run_dir: Path
    resolved: dict[str, Any]
    ctx: PruneContext
    trainer: Trainer
    pruner: Pruner
    warnings: list[str]
    stop: StopRequest
    placement: Placement


def _model(rc: RunConfig, data: DataBundle, placement: Placement) -> torch.nn.Module:
    """The configured model for ``data`` (SyncBatchNorm under DDP with ``trainer.sync_bn``), on the CPU.

    Raises:
        ConfigError: a model that does not fit the input, ``sync_bn`` off CUDA, or a bias init without biases.
    """
    model = build_model(rc.model, data.input_shape, data.num_classes, rc.dataset.name)
    if rc.trainer.sync_bn and placement.dist.enabled:
        if placement.device.type != "cuda":
            raise ConfigError(f"trainer.sync_bn=true needs GPUs (PyTorch's SyncBatchNorm does not run on "
                              f"{placement.device.type}); drop it, or run on CUDA.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    check_model(rc, model)
    return model


def _trainer(rc: RunConfig, model: torch.nn.Module, pruner: Pruner, ctx: PruneContext, placement: Placement,
             run_dir: Path, resolved: dict[str, Any], stop: StopRequest) -> Trainer:
    """The loop over the method's phases and the main training, reporting to the run folder (rank 0)."""
    main = MainPhase(pruner, lambda params: build_optimizer(params, rc.optimizer),
                     lambda optimizer: build_scheduler(optimizer, rc.scheduler, rc.trainer.epochs), rc.trainer.epochs)
    callbacks = [MetricsFile(run_dir / "metrics.jsonl"), LogLine()] if placement.dist.main else []  # rank 0 reports
    return Trainer(model, [*pruner.phases(ctx), main], pruner, ctx.data, rc.trainer, placement, run_dir,
                   callbacks=callbacks, stop=stop, extra_state={"config": resolved})


def setup(cfg: DictConfig, run_dir: str | Path | None = None, *, rc: RunConfig | None = None,
          placement: Placement | None = None, initialize: bool = True, stage: StageFiles | None = None,
          stop: StopRequest | None = None, extra_top_level: tuple[str, ...] = ()) -> Job:
    """Build data, model, masks, phases and the training loop of one run.

    Every input check happens here or before; nothing is written to ``run_dir`` (with ``initialize=True``,
    IMP level 0 keeps its rewind point in the parent folder of a stage).

    Args:
        cfg: the composed Hydra config.
        run_dir: output folder; default: the Hydra job's output dir.
        rc: the config as :func:`ticketlab.runner.validate.resolve` returned it (resolved here when not given).
        placement: where the run computes (chosen here by :func:`ticketlab.runner.devices.place` when not given).
        initialize: compute the method's starting mask (:meth:`~ticketlab.pruners.base.Pruner.initialize`);
            :func:`ticketlab.runner.run.run` passes ``False`` and initializes only fresh runs.
        stage: the stage of a multi-stage run.
        stop: the stop flag (a new one by default; its signal handlers are installed by the runner).
        extra_top_level: top-level config keys of a script's own config.

    Raises:
        ConfigError: any bad input (config value, unknown name, missing or corrupt data,
            model/input mismatch, a method setting this model or data cannot carry out).
    """
    rc = rc if rc is not None else validate.resolve(cfg, extra_top_level)
    run_dir = Path(run_dir) if run_dir is not None else hydra_job.run_dir()
    placement = placement if placement is not None else devices.place(rc)
    devices.seed_everything(rc.seed, rc.trainer.deterministic)
    if placement.device.type == "cpu":
        kernels.native()  # build (first time only) or load the fused CPU kernels now, not inside the first step
    stop = stop if stop is not None else StopRequest()
    data = build_data(rc.dataset, placement.device, rc.seed)
    model = _model(rc, data, placement)
    warnings = list(rc.warnings) + split_checks(rc, data.num_train, data.num_val)
    warnings += model_warnings(model, data.input_shape, rc.model.name)
    pruner = build_pruner(rc.pruner)
    init_weights(model, rc.init, rc.seed, pruner.densities(model))
    model.to(placement.device)
    if placement.channels_last:
        model.to(memory_format=torch.channels_last)
    ctx = PruneContext(seed=rc.seed, init=rc.init, device=placement.device, data=data, epochs=rc.trainer.epochs,
                       stop=stop, run_dir=run_dir, stage=stage, limit_train_batches=rc.trainer.limit_train_batches)
    pruner.attach(model, ctx)
    warnings += pruner.check(model, ctx)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    trainer = _trainer(rc, model, pruner, ctx, placement, run_dir, resolved, stop)
    if initialize:
        pruner.initialize(model, ctx)
    return Job(rc, run_dir, resolved, ctx, trainer, pruner, warnings, stop, placement)


__all__ = ["Job", "setup"]
