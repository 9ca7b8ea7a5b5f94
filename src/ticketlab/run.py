"""One run: validate the config, build data/model/masks, train, write results.

:func:`run` is what ``train.py`` calls for every Hydra job. All input checks (config ranges,
unknown names, missing data, a model that does not fit the input) happen before the first
optimizer step; each raises :class:`~ticketlab.errors.ConfigError` with a one-paragraph message.

Files in the run folder (Hydra's job output dir):

* ``metrics.jsonl`` -- one JSON object per epoch (see :meth:`ticketlab.loop.Trainer.fit`);
* ``summary.json`` -- final status and numbers (see :func:`summarize`);
* ``last.ckpt`` -- the whole run state after the last completed epoch;
* ``masks.pt`` -- the final masks (``{tensor name: bool tensor}``) and the weight/score seeds;
* ``wandb/`` -- the W&B run (offline by default).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .config import (
    DatasetConfig,
    InitConfig,
    LoggerConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainerConfig,
)
from .data import build_data
from .errors import ConfigError
from .init import init_weights
from .loop import Trainer
from .mask_structure import mask_structure
from .masks import mask_dict, masked_tensors, sparsity_report
from .models import build_model
from .optim import build_optimizer, build_scheduler
from .pruners import PRUNERS, PruneContext, PrunerConfig, build_pruner
from .results import atomic_torch_save, atomic_write_json
from .tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """The validated, typed config of one run (``OmegaConf.to_object`` of the composed config)."""

    dataset: DatasetConfig
    model: ModelConfig
    init: InitConfig
    pruner: PrunerConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    seed: int = 0


def resolve(cfg: DictConfig) -> RunConfig:
    """Resolve interpolations and run every schema's checks.

    Raises:
        ConfigError: a value out of range, a missing group, or a non-integer seed.
    """
    groups = ("dataset", "model", "init", "pruner", "optimizer", "scheduler", "trainer", "logger")
    missing = [g for g in groups if g not in cfg]
    if missing:
        raise ConfigError(f"the config lacks the group(s) {', '.join(missing)}; compose it from conf/config.yaml.")
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer.")
    objs = {g: OmegaConf.to_object(cfg[g]) for g in groups}
    return RunConfig(**objs, seed=seed)


def select_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given.

    Raises:
        ConfigError: ``cuda``/``mps`` requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=auto or cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device='mps' but MPS is not available here; use trainer.device=auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)


def hydra_run_dir() -> Path:
    """The current Hydra job's output folder.

    Raises:
        RuntimeError: outside a Hydra job (pass ``run_dir`` to :func:`run` instead).
    """
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def check_compatibility(rc: RunConfig, model: torch.nn.Module) -> None:
    """Cross-group checks that need the built model.

    Raises:
        ConfigError: e.g. ``pruner.prune_bias`` on a model without biases, or ``pruner.train_bn``
            without affine BN.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    has_bias = any(m.bias is not None for m in layers)
    if getattr(rc.pruner, "prune_bias", False) and not has_bias:
        raise ConfigError("pruner.prune_bias=true but the model has no layer biases; set model.bias=true.")
    if rc.init.bias_init not in ("zero", "default") and not has_bias:
        raise ConfigError(f"init.bias_init={rc.init.bias_init} but the model has no layer biases; "
                          "set model.bias=true.")
    if getattr(rc.pruner, "train_bn", False) and not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules()):
        raise ConfigError("pruner.train_bn=true but the model has no affine batch norm; set model.bn_affine=true "
                          "(and model.batch_norm=true for MLP/Conv-n/VGG).")


def summarize(rc: RunConfig, model: torch.nn.Module, history: list[dict[str, Any]], status: str,
              wall_s: float, run_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` dict.

    Keys: ``status`` (completed/failed/interrupted), ``test_acc`` (last epoch), ``best_test_acc``
    (max over epochs; for reference only, it selects on the test set), ``train_acc``; with a
    validation split also ``val_acc``, ``best_val_acc``, ``best_val_epoch`` and
    ``test_acc_at_best_val`` (model selection on validation, never on test);
    ``sparsity``/``density`` (measured from the masks over prunable weights),
    ``target_sparsity``, ``params_total``/``params_remaining`` (prunable weights: Conv/Linear
    weights), ``params_all`` (every parameter and buffer-free tensor of the model, unmasked),
    ``compression_ratio`` (total / remaining), ``epochs`` (completed), ``wall_s``, ``model``,
    ``dataset``, ``pruner``, ``init``, ``seed``, ``layer_densities``, ``run_dir``; :func:`run` adds
    the method's facts and the mask-structure metrics (``effective_sparsity``, ``log_paths``,
    per-layer ``structure``).
    """
    rep = sparsity_report(model)
    accs = [r["test_acc"] for r in history if not math.isnan(r["test_acc"])]
    val: dict[str, Any] = {}
    if history and "val_acc" in history[-1]:
        best = max(history, key=lambda r: r["val_acc"])  # first epoch reaching the best validation accuracy
        val = {"best_val_acc": best["val_acc"], "best_val_epoch": best["epoch"],
               "test_acc_at_best_val": best["test_acc"], "val_acc": history[-1]["val_acc"]}
    return {
        "status": status,
        "test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max(accs) if accs else None,
        "train_acc": history[-1]["train_acc"] if history else None,
        **val,
        "sparsity": rep.sparsity,
        "density": rep.density,
        "target_sparsity": rc.pruner.sparsity,
        "params_total": rep.total,
        "params_remaining": rep.kept,
        "params_all": sum(mt.original.numel() for mt in masked_tensors(model))
        + sum(p.numel() for n, p in model.named_parameters() if ".parametrizations." not in n),
        "compression_ratio": rep.total / rep.kept if rep.kept else float("inf"),
        "epochs": history[-1]["epoch"] if history else 0,
        "wall_s": wall_s,
        "model": rc.model.name,
        "dataset": rc.dataset.name,
        "pruner": rc.pruner.name,
        "init": rc.init.name,
        "seed": rc.seed,
        "layer_densities": {name: v["density"] for name, v in rep.layers.items()},
        "run_dir": str(run_dir),
        **extra,
    }


@dataclass
class Job:
    """Everything built for one run, ready to train (see :func:`setup`)."""

    rc: RunConfig
    run_dir: Path
    resolved: dict[str, Any]
    ctx: PruneContext
    trainer: Trainer
    tracker: Tracker


def setup(cfg: DictConfig, run_dir: str | Path | None = None) -> Job:
    """Validate ``cfg`` and build data, model, masks, optimizer, scheduler, tracker and trainer.

    Every input check happens here, before anything is written to ``run_dir``.

    Args:
        cfg: the composed Hydra config.
        run_dir: output folder; default: the Hydra job's output dir.

    Raises:
        ConfigError: any bad input (config value, unknown name, missing data, model/input mismatch).
    """
    rc = resolve(cfg)
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    if rc.trainer.threads:
        torch.set_num_threads(rc.trainer.threads)
    seed_everything(rc.seed, rc.trainer.deterministic)
    device = select_device(rc.trainer.device)

    data = build_data(rc.dataset, device, rc.seed)
    model = build_model(rc.model, data.input_shape, data.num_classes, rc.dataset.name)
    check_compatibility(rc, model)
    pruner = build_pruner(rc.pruner)
    init_weights(model, rc.init, rc.seed, pruner.densities(model))
    model.to(device)
    ctx = PruneContext(seed=rc.seed, init=rc.init, device=device, data=data, epochs=rc.trainer.epochs)
    pruner.prepare(model, ctx)
    optimizer = build_optimizer(pruner.trainable_parameters(model), rc.optimizer)
    scheduler = build_scheduler(optimizer, rc.scheduler, rc.trainer.epochs)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"{rc.pruner.name}-{rc.model.name}-{rc.dataset.name}-s{rc.pruner.sparsity:g}-seed{rc.seed}"
    tracker = Tracker(rc.logger, run_dir, resolved, name)

    def on_epoch(row: dict[str, Any]) -> None:
        rep = sparsity_report(model)
        tracker.log({**row, **{f"density/{k}": v["density"] for k, v in rep.layers.items()}}, step=row["epoch"])

    trainer = Trainer(model, pruner, optimizer, scheduler, data, rc.trainer, device, run_dir, on_epoch,
                      extra_state={"config": resolved})
    return Job(rc, run_dir, resolved, ctx, trainer, tracker)


def structure_summary(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Mask-structure metrics (:mod:`ticketlab.mask_structure`) for the summary; never raises."""
    try:
        st = mask_structure(model, input_shape)
    except Exception as e:  # a metric must never cost the run its results
        log.warning("mask-structure metrics failed (%s: %s)", type(e).__name__, e)
        return {}
    return {"effective_sparsity": st.effective_sparsity, "effective_density": st.effective_density,
            "disconnected_fraction": st.disconnected_fraction, "log_paths": st.log_paths, "structure": st.layers}


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one job and return its summary; multi-stage methods (IMP) run their stages.

    A pruner class with a ``run_stages(cfg, run_dir, run_single)`` class method (e.g.
    :class:`ticketlab.pruners.imp.Imp`) orchestrates several single runs; every other method is one
    :func:`run_single`. The whole config is validated first in both cases.

    Raises:
        ConfigError: any bad input, before training starts.
    """
    rc = resolve(cfg)
    _, pruner_cls = PRUNERS.get(rc.pruner.name)
    if hasattr(pruner_cls, "run_stages"):
        return pruner_cls.run_stages(cfg, Path(run_dir) if run_dir is not None else hydra_run_dir(), run_single)
    return run_single(cfg, run_dir)


def run_single(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one job end to end and return its summary.

    Args:
        cfg: the composed Hydra config (``conf/config.yaml`` plus overrides).
        run_dir: output folder; default: the Hydra job's output dir.

    Returns:
        The dict written to ``summary.json``.

    Raises:
        ConfigError: any bad input, before training starts (nothing is written then).
        Exception: a failure during training, after ``summary.json`` is written with
            ``status: failed`` (``interrupted`` for Ctrl-C) and the last checkpoint kept.
    """
    t0 = time.perf_counter()
    job = setup(cfg, run_dir)
    rc, trainer, tracker, run_dir = job.rc, job.trainer, job.tracker, job.run_dir
    model, data = trainer.model, trainer.data
    log.info("run folder: %s | %s on %s, %s init, pruner %s at sparsity %.4f, device %s, %d train / %d test images",
             run_dir, rc.model.name, rc.dataset.name, rc.init.name, rc.pruner.name, rc.pruner.sparsity,
             trainer.device, data.num_train, data.num_test)
    extra = {"device": str(trainer.device), "data_source": data.info.get("source"), "wandb_dir": tracker.dir}
    status = "failed"
    try:
        trainer.fit()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = summarize(rc, model, trainer.history, status, time.perf_counter() - t0, run_dir,
                            {**extra, **trainer.pruner.summary(), **structure_summary(model, data.input_shape)})
        atomic_write_json(run_dir / "summary.json", summary)
        atomic_torch_save(run_dir / "masks.pt", {
            "masks": mask_dict(model),
            "weight_seed": rc.seed if rc.init.weight_seed is None else rc.init.weight_seed,
            "score_seed": job.ctx.score_seed,
            "config": job.resolved,
        })
        tracker.summary({k: v for k, v in summary.items() if k not in ("layer_densities", "structure")}
                        | {f"density/{k}": v for k, v in summary["layer_densities"].items()}
                        | {f"structure/{layer}/{k}": v for layer, vals in summary.get("structure", {}).items()
                           for k, v in vals.items()})
        tracker.finish(0 if status == "completed" else 1)
    log.info("done: test_acc %.4f | sparsity %.4f (density %.4f, %d of %d prunable weights kept) | %.1f s | "
             "run folder %s", summary["test_acc"], summary["sparsity"], summary["density"],
             summary["params_remaining"], summary["params_total"], summary["wall_s"], run_dir)
    return summary


__all__ = ["Job", "RunConfig", "resolve", "run", "run_single", "setup"]
