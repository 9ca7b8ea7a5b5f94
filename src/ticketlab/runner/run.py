"""One run: validate the config, find the run's folder, skip, continue or start it, train, report.

:func:`run` is what ``train.py`` calls for every Hydra job (through :mod:`ticketlab.cli`), and what
scripts and tests call directly. In order:

1. **Validate** (:func:`resolve`): every schema's checks, unknown keys (``+pruner.sparsty=0.9``),
   unresolvable interpolations, seeds, rules between groups. Then, in :func:`setup`, the data,
   the model and the method's own checks. A problem raises :class:`~ticketlab.errors.ConfigError`
   (one paragraph naming the key, the value and what is allowed) before anything is written.
2. **Find the run** (:mod:`ticketlab.runner.identity`, :mod:`ticketlab.runner.rundir`): the run folder is named
   by a hash of the result-affecting config, or given (``hydra.run.dir``, ``run_dir=``). A
   completed (or diverged) run is skipped; a stopped one continues from ``last.ckpt``;
   ``trainer.resume`` chooses otherwise. A folder holding a different run is never touched.
3. **Train** (:mod:`ticketlab.training.loop`) under a stop flag (:mod:`ticketlab.signals`): SIGTERM,
   SIGUSR1 and SIGINT finish the step, write the checkpoint and stop.
4. **Report honestly**: ``summary.json`` says ``completed``, ``diverged`` (non-finite loss or
   scores, with where and a hint), ``preempted``/``interrupted`` (the signal and where) or
   ``failed`` (the error's type, message and place; the traceback is in ``train.log``). A
   failure while writing results never hides the error that caused it.

Multi-stage methods (IMP) run each stage this way (:mod:`ticketlab.runner.stages`).

Files in the run folder: ``run.json`` (identity and attempts), ``metrics.jsonl``,
``summary.json``, ``last.ckpt``, ``masks.pt``, ``train.log``, ``.hydra/`` (the composed config and
overrides of the first attempt), ``wandb/`` (unless ``$WANDB_DIR``), ``attempts/<n>/`` (earlier
attempts' summaries).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ticketlab import distributed
from ticketlab.config import (
    DatasetConfig,
    InitConfig,
    LoggerConfig,
    ModelConfig,
    OptimizerConfig,
    PathsConfig,
    SchedulerConfig,
    TrainerConfig,
)
from ticketlab.data import build_data
from ticketlab.errors import ConfigError, Diverged, NonFiniteError, Preempted, RunBusy, check_seed, describe
from ticketlab.files import atomic_torch_save, atomic_write_json
from ticketlab.init.weights import init_weights
from ticketlab.models import build_model
from ticketlab.pruners import PruneContext, Pruner, PrunerConfig, build_pruner
from ticketlab.runner import cluster, rundir, stages
from ticketlab.runner import identity as identity_mod
from ticketlab.runner.callbacks import LogLine, MetricsFile, TrackerLog
from ticketlab.runner.checks import cross_checks, mask_warnings, model_warnings
from ticketlab.runner.identity import RunIdentity
from ticketlab.runner.stages import StageContext
from ticketlab.runner.tracking import Tracker
from ticketlab.signals import StopRequest
from ticketlab.sparsity import kernels
from ticketlab.sparsity.masks import masked_tensors
from ticketlab.sparsity.report import mask_dict, sparsity_report
from ticketlab.sparsity.structure import mask_structure
from ticketlab.sweeps import sweep as _sweep  # noqa: F401  (registers ${tl.sweep_name:} for every Hydra app)
from ticketlab.training.loop import Trainer

log = logging.getLogger(__name__)

GROUPS = ("dataset", "model", "init", "pruner", "optimizer", "scheduler", "trainer", "logger")
OPTIONAL_GROUPS = ("paths",)
TOP_LEVEL_KEYS = (*GROUPS, *OPTIONAL_GROUPS, "seed", "report")


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
    paths: PathsConfig | None = None
    warnings: list[str] = field(default_factory=list)


def _raw(cfg: DictConfig, key: str | None) -> Any:
    """The unresolved value at ``key`` (e.g. ``${oc.env:UNSET}``), for messages."""
    if not key:
        return None
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in str(key).split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _translate(e: OmegaConfBaseException, cfg: DictConfig) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    raw = _raw(cfg, key)
    if isinstance(e, MissingMandatoryValue):
        return ConfigError(f"{key} is mandatory here and has no value (???); set it, e.g. {key}=<value>.")
    cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ConfigError(f"{key}={raw} cannot be resolved ({cause}); set what it refers to, or give "
                       f"{key} a value directly.")


def _unknown_keys(cfg: DictConfig, extra_top_level: tuple[str, ...]) -> None:
    allowed_top = set(TOP_LEVEL_KEYS) | set(extra_top_level) | {"hydra"}
    for key in cfg.keys():
        if key not in allowed_top:
            close = difflib.get_close_matches(str(key), sorted(allowed_top - {"hydra"}), n=1)
            raise ConfigError(f"{key} is not a TicketLab config key" + (f"; did you mean {close[0]}?" if close else ".")
                              + f" Top-level keys: {', '.join(TOP_LEVEL_KEYS)}.")
    for group in (*GROUPS, *OPTIONAL_GROUPS):
        if group not in cfg or not isinstance(cfg._get_node(group), DictConfig):
            continue
        node = cfg._get_node(group)
        typ = OmegaConf.get_type(node)
        if typ is None or not dataclasses.is_dataclass(typ):
            continue
        known = [f.name for f in dataclasses.fields(typ)]
        for key in node.keys():
            if key not in known:
                option = node.get("name", group) if group != "paths" else "default"
                close = difflib.get_close_matches(str(key), known, n=1)
                raise ConfigError(f"{group}.{key} is not a key of {group}={option}"
                                  + (f"; did you mean {group}.{close[0]}?" if close else ".")
                                  + f" Its keys: {', '.join(known)}.")


def resolve(cfg: DictConfig, extra_top_level: tuple[str, ...] = ()) -> RunConfig:
    """Resolve interpolations and run every schema's and every cross-group check.

    Args:
        cfg: the composed config.
        extra_top_level: top-level keys a script's own config adds (e.g. ``bench``), allowed too.

    Returns:
        The typed config; its ``warnings`` lists legal but degenerate settings.

    Raises:
        ConfigError: a value out of range, an unknown key (``+pruner.sparsty=0.9``), a missing
            group, an interpolation that does not resolve, a bad seed, or a rule between groups.
    """
    missing = [g for g in GROUPS if g not in cfg]
    if missing:
        raise ConfigError(f"the config lacks the group(s) {', '.join(missing)}; compose it from conf/config.yaml.")
    _unknown_keys(cfg, extra_top_level)
    try:
        seed = cfg.get("seed", 0)
        objs = {g: OmegaConf.to_object(cfg[g]) for g in GROUPS}
        paths = OmegaConf.to_object(cfg.paths) if "paths" in cfg else None
    except OmegaConfBaseException as e:
        raise _translate(e, cfg) from e
    check_seed("seed", seed)
    rc = RunConfig(**objs, seed=seed, paths=paths)
    rc.warnings = cross_checks(rc)
    return rc


def select_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given.

    In a parallel local sweep on several GPUs, ``auto`` spreads the jobs over them
    (:func:`ticketlab.runner.cluster.local_gpu`).

    Raises:
        ConfigError: ``cuda``/``mps`` requested but not available.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        index = cluster.local_gpu(torch.cuda.device_count())
        return torch.device("cuda" if index is None else f"cuda:{index}")
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


def _hydra() -> Any | None:
    """The current Hydra job's config (``None`` outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def hydra_run_dir() -> Path:
    """The current Hydra job's output folder.

    Raises:
        RuntimeError: outside a Hydra job (pass ``run_dir`` to :func:`run` instead).
    """
    hc = _hydra()
    if hc is None:
        raise RuntimeError("not inside a Hydra job; pass run_dir")
    return Path(hc.runtime.output_dir)


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


def _mask_report(model: torch.nn.Module) -> dict[str, Any]:
    """Measured sparsity numbers; ``None`` values when the masks cannot be computed (NaN scores)."""
    try:
        rep = sparsity_report(model)
    except NonFiniteError:
        return {"sparsity": None, "density": None, "params_total": None, "params_remaining": None,
                "compression_ratio": None, "layer_densities": {}}
    return {"sparsity": rep.sparsity, "density": rep.density, "params_total": rep.total,
            "params_remaining": rep.kept, "compression_ratio": rep.total / rep.kept if rep.kept else float("inf"),
            "layer_densities": {name: v["density"] for name, v in rep.layers.items()}}


def summarize(rc: RunConfig, model: torch.nn.Module, history: list[dict[str, Any]], status: str,
              wall_s: float, run_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` dict.

    Keys: ``status`` (completed/diverged/preempted/interrupted/failed), ``test_acc`` (last epoch),
    ``best_test_acc`` (max over epochs; for reference only, it selects on the test set),
    ``train_acc``; with a validation split also ``val_acc``, ``best_val_acc``, ``best_val_epoch``
    and ``test_acc_at_best_val`` (model selection on validation, never on test);
    ``sparsity``/``density`` (measured from the masks over prunable weights),
    ``target_sparsity``, ``target_density``, ``params_total``/``params_remaining`` (prunable weights:
    Conv/Linear weights), ``params_all`` (every parameter of the model, unmasked),
    ``compression_ratio`` (total / remaining), ``epochs`` (completed), ``wall_s``, ``model``,
    ``dataset``, ``pruner``, ``init``, ``seed``, ``layer_densities``, ``run_dir``; :func:`run` adds
    the method's facts, the mask-structure metrics, the run id and name, the attempt count,
    warnings, and for unsuccessful runs what happened (``diverged``, ``stopped``, ``error``).
    """
    finite = [r["test_acc"] for r in history if r.get("test_acc") is not None and not math.isnan(r["test_acc"])]
    val: dict[str, Any] = {}
    if history and "val_acc" in history[-1]:
        best = max(history, key=lambda r: r["val_acc"])  # first epoch reaching the best validation accuracy
        val = {"best_val_acc": best["val_acc"], "best_val_epoch": best["epoch"],
               "test_acc_at_best_val": best["test_acc"], "val_acc": history[-1]["val_acc"]}
    masks = _mask_report(model)
    return {
        "status": status,
        "test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max(finite) if finite else None,
        "train_acc": history[-1]["train_acc"] if history else None,
        **val,
        "sparsity": masks["sparsity"],
        "density": masks["density"],
        "target_sparsity": rc.pruner.sparsity,
        "target_density": 1.0 - rc.pruner.sparsity,
        "params_total": masks["params_total"],
        "params_remaining": masks["params_remaining"],
        "params_all": sum(mt.original.numel() for mt in masked_tensors(model))
        + sum(p.numel() for n, p in model.named_parameters() if ".parametrizations." not in n),
        "compression_ratio": masks["compression_ratio"],
        "epochs": history[-1]["epoch"] if history else 0,
        "wall_s": wall_s,
        "model": rc.model.name,
        "dataset": rc.dataset.name,
        "pruner": rc.pruner.name,
        "init": rc.init.name,
        "seed": rc.seed,
        "layer_densities": masks["layer_densities"],
        "run_dir": str(run_dir),
        **extra,
    }


@dataclass
class Job:
    """Everything built for one run, ready to train (see :func:`setup`).

    Attributes:
        rc: the validated config.
        run_dir: the run folder.
        resolved: the resolved config as plain data (stored with results and checkpoints).
        ctx: the method's context.
        trainer: the loop, with the metrics-file and log callbacks.
        warnings: legal but degenerate settings found so far.
        stop: the run's stop flag.
        dist: this process's place in a DDP run.
    """

    rc: RunConfig
    run_dir: Path
    resolved: dict[str, Any]
    ctx: PruneContext
    trainer: Trainer
    warnings: list[str]
    stop: StopRequest
    dist: distributed.Dist = distributed.SINGLE

    @property
    def pruner(self) -> Pruner:
        """The method."""
        return self.trainer.pruner


def setup(cfg: DictConfig, run_dir: str | Path | None = None, *, initialize: bool = True,
          stage: StageContext | None = None, stop: StopRequest | None = None,
          extra_top_level: tuple[str, ...] = (), dist: distributed.Dist | None = None) -> Job:
    """Validate ``cfg`` and build data, model, masks, optimizer settings and the training loop.

    Every input check happens here; nothing is written to ``run_dir`` (with ``initialize=True``,
    IMP level 0 writes its rewind point into the parent folder of a stage).

    Args:
        cfg: the composed Hydra config.
        run_dir: output folder; default: the Hydra job's output dir.
        initialize: compute the method's starting mask (:meth:`~ticketlab.pruners.Pruner.initialize`);
            :func:`run` passes ``False`` and initializes only fresh runs.
        stage: the stage of a multi-stage run.
        stop: the stop flag (a new one by default; its signal handlers are installed by :func:`run`).
        extra_top_level: top-level config keys of a script's own config.
        dist: this process's place in a DDP run (joined here from ``trainer.strategy`` by default).

    Raises:
        ConfigError: any bad input (config value, unknown name, missing or corrupt data,
            model/input mismatch, a method setting this model or data cannot carry out).
    """
    rc = resolve(cfg, extra_top_level)
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    threads = rc.trainer.threads or cluster.slurm_cpus()  # in a Slurm job: the cores it was given
    if threads:
        torch.set_num_threads(threads)
    seed_everything(rc.seed, rc.trainer.deterministic)
    device = select_device(rc.trainer.device)
    dist = dist if dist is not None else distributed.init(rc.trainer.strategy, device.type)
    device = distributed.device_for(dist, device)
    if device.type == "cpu":
        kernels.native()  # build (first time only) or load the fused CPU kernels now, not inside the first step
    stop = stop if stop is not None else StopRequest()

    data = build_data(rc.dataset, device, rc.seed)
    model = build_model(rc.model, data.input_shape, data.num_classes, rc.dataset.name)
    if rc.trainer.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise ConfigError(f"trainer.sync_bn=true needs GPUs (PyTorch's SyncBatchNorm does not run on "
                              f"{device.type}); drop it, or run on CUDA.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    check_compatibility(rc, model)
    warnings = list(rc.warnings) + model_warnings(model, data.input_shape, rc.model.name)
    pruner = build_pruner(rc.pruner)
    init_weights(model, rc.init, rc.seed, pruner.densities(model))
    model.to(device)
    if rc.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    ctx = PruneContext(seed=rc.seed, init=rc.init, device=device, data=data, epochs=rc.trainer.epochs, stop=stop,
                       run_dir=run_dir, stage=stage, limit_train_batches=rc.trainer.limit_train_batches)
    pruner.attach(model, ctx)
    warnings += pruner.check(model, ctx)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    callbacks = [MetricsFile(run_dir / "metrics.jsonl"), LogLine()] if dist.main else []  # rank 0 reports
    trainer = Trainer(model, pruner, data, rc.trainer, rc.optimizer, rc.scheduler, device, run_dir, ctx,
                      callbacks=callbacks, stop=stop, extra_state={"config": resolved}, dist=dist)
    job = Job(rc, run_dir, resolved, ctx, trainer, warnings, stop, dist)
    if initialize:
        pruner.initialize(model, ctx)
    return job


def structure_summary(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Mask-structure metrics (:mod:`ticketlab.sparsity.structure`) for the summary; never raises."""
    try:
        st = mask_structure(model, input_shape)
    except Exception as e:  # a metric must never cost the run its results
        log.warning("mask-structure metrics failed (%s: %s)", type(e).__name__, e)
        return {}
    return {"effective_sparsity": st.effective_sparsity, "effective_density": st.effective_density,
            "disconnected_fraction": st.disconnected_fraction, "log_paths": st.log_paths, "structure": st.layers}


# ---------------------------------------------------------------------------------------------------
# the run folder: decide, record, train, report
# ---------------------------------------------------------------------------------------------------
class RunLog:
    """``<run>/train.log``: the ``ticketlab`` loggers' records for the duration of an attempt (appended)."""

    FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(self.FORMAT))
        self.logger = logging.getLogger("ticketlab")
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)

    def traceback(self, exc: BaseException) -> None:
        """Write ``exc``'s traceback to the file only (the console gets one line)."""
        record = logging.LogRecord("ticketlab.runner.run", logging.ERROR, __file__, 0, "traceback:", None,
                                   (type(exc), exc, exc.__traceback__))
        self.handler.handle(record)

    def close(self) -> None:
        """Detach and close the file."""
        self.logger.removeHandler(self.handler)
        self.handler.close()


def _error_record(exc: BaseException) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    where = None
    if frames:
        f = frames[-1]
        where = f"{os.path.relpath(f.filename) if f.filename.startswith(os.getcwd()) else f.filename}:{f.lineno} " \
                f"in {f.name}"
    message = str(exc).strip()
    return {"type": type(exc).__name__, "message": message, "where": where}


def _overrides() -> list[str]:
    hc = _hydra()
    return OmegaConf.to_container(hc.overrides.task, resolve=False) if hc is not None else []


def _sweep_name() -> str | None:
    """The sweep folder's name in a ``-m`` sweep (the default W&B group)."""
    return Path(str(_hydra().sweep.dir)).name if _sweep.in_multirun() else None


def _display_name(ident: RunIdentity, overrides: list[str]) -> str:
    """The folder name plus the result-affecting values given on the command line that it does not show."""
    shown = {"pruner", "model", "dataset", "pruner.sparsity", "seed"}
    extra = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        group = key.split(".", 1)[0].split("/", 1)[0]
        excluded = identity_mod.NOT_IDENTITY.get(group, ())
        if key in shown or excluded is None or key.split(".", 1)[-1] in (excluded or ()):
            continue
        extra.append(o.lstrip("+~"))
    return " ".join([ident.folder, *extra])


def _write_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml`` (composed, unresolved) and ``overrides.yaml`` of the first attempt."""
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    OmegaConf.save(OmegaConf.create(plain), folder / "config.yaml")
    OmegaConf.save(OmegaConf.create(_overrides()), folder / "overrides.yaml")
    hc = _hydra()
    if hc is not None:
        OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}), folder / "hydra.yaml")


def _load_checkpoint(path: Path, job: Job) -> dict[str, Any]:
    """Read ``last.ckpt`` and load it into the job.

    Raises:
        ConfigError: the file is unreadable or does not fit this run (naming the file).
    """
    try:
        ckpt = torch.load(path, weights_only=False, map_location="cpu")
        job.trainer.load_state_dict(ckpt)
    except Exception as e:
        raise ConfigError(f"{path} cannot be used to continue this run ({describe(e)}); move it aside "
                          "to start the run again in place, or use trainer.resume=fresh.") from e
    return ckpt


def _skipped(state: rundir.FolderState) -> dict[str, Any]:
    summary = dict(state.summary or {})
    summary["skipped"] = True
    acc = summary.get("test_acc")
    log.info("already %s: %s (test_acc %s, sparsity %s); not run again. trainer.resume=fresh starts it afresh.",
             summary.get("status"), state.path / rundir.SUMMARY, f"{acc:.4f}" if isinstance(acc, float) else acc,
             f"{summary['sparsity']:.4f}" if isinstance(summary.get("sparsity"), float) else summary.get("sparsity"))
    return summary


def _folder_plan(run_dir: Path, ident: RunIdentity, resume: str, min_generation: int
                 ) -> tuple[rundir.Decision, rundir.FolderState, rundir.RunLock | None]:
    """Decide what to do with ``run_dir`` (rank 0); take its lock unless the run is skipped.

    Raises:
        ConfigError: the folder holds another run, or ``resume=never`` with a run in it.
        RunBusy: another live process holds the folder.
    """
    state = rundir.inspect(run_dir)
    decision = rundir.decide(state, ident, resume)
    if decision.action == "skip":
        return decision, state, None
    lock = rundir.RunLock(run_dir).acquire()
    try:
        state = rundir.inspect(run_dir)  # under the lock: another process may have finished it meanwhile
        decision = rundir.decide(state, ident, resume)
    except BaseException:
        lock.release(remove_if_empty=True)
        raise
    if decision.action == "skip":
        lock.release()
        return decision, state, None
    decision.generation = max(decision.generation, min_generation)
    return decision, state, lock


def execute(cfg: DictConfig, run_dir: Path, ident: RunIdentity, stage: StageContext | None = None,
            min_generation: int = 1, before_write: Callable[[], None] | None = None) -> dict[str, Any]:
    """One (stage of a) run in ``run_dir``: skip it, continue it or start it, then report.

    Under DDP (:mod:`ticketlab.distributed`) rank 0 decides, locks and writes; the other ranks follow
    its decision, load the same checkpoint, train, and write nothing.

    Args:
        cfg: the composed config.
        run_dir: the run folder.
        ident: the run's identity.
        stage: the stage of a multi-stage run.
        min_generation: the W&B generation at least (a stage inherits its parent run's).
        before_write: called once the run is validated, before its folder is written (a stage's
            parent records itself then).

    Returns:
        The summary (``status`` completed or diverged; ``skipped: True`` when nothing was run).

    Raises:
        ConfigError: bad input, a folder holding another run, an unusable checkpoint (nothing written).
        RunBusy: another process is running this run.
        Preempted: a stop signal (checkpoint and summary written).
        Exception: the crash of a failed run (summary written with ``status: failed``).
    """
    rc = resolve(cfg)
    run_dir = Path(run_dir)
    dist = distributed.init(rc.trainer.strategy, select_device(rc.trainer.device).type)
    lock: rundir.RunLock | None = None
    plan: dict[str, Any]
    if dist.main:
        try:
            decision, state, lock = _folder_plan(run_dir, ident, rc.trainer.resume, min_generation)
            plan = {"decision": decision, "has_checkpoint": state.has_checkpoint,
                    "attempts": len((state.record or {}).get("attempts", [])),
                    "skipped": _skipped(state) if decision.action == "skip" else None}
        except (ConfigError, RunBusy) as e:
            distributed.broadcast_object(dist, {"error": (type(e).__name__, str(e))})
            raise
    else:
        plan = {}
    plan = distributed.broadcast_object(dist, plan)
    if "error" in plan:  # rank 0 refused: so do the others, with its message
        kind, message = plan["error"]
        raise (RunBusy(str(run_dir), "") if kind == "RunBusy" else ConfigError(message))
    if plan["skipped"] is not None:
        return plan["skipped"]
    decision = plan["decision"]
    written = False
    try:
        stop = StopRequest()
        try:
            job = setup(cfg, run_dir, initialize=False, stage=stage, stop=stop, dist=dist)
            ckpt = None
            if decision.action == "resume" and plan["has_checkpoint"]:
                ckpt = _load_checkpoint(run_dir / rundir.CHECKPOINT, job)
        except ConfigError:
            raise
        except Exception as e:  # a crash while building (not a user error): record it in the folder
            if dist.main:
                written = True
                if before_write is not None:
                    before_write()
                _record_setup_crash(run_dir, ident, decision, e)
            raise
        # ---------------- from here on, the run folder is written (by rank 0) ----------------
        written = True
        if dist.main:
            if before_write is not None:
                before_write()
            if decision.action == "fresh":
                moved = rundir.move_aside(run_dir)
                lock.release()
                log.info("moved the earlier content of %s to %s", run_dir, moved)
                lock = rundir.RunLock(run_dir).acquire()
            elif decision.action == "resume":
                rundir.archive_attempt(run_dir, plan["attempts"], restart=ckpt is None)
            resumed_from = {"phase": ckpt["phase"], "epoch": ckpt["epoch"], "step": ckpt["step"]} if ckpt else None
            rundir.start_attempt(run_dir, ident, decision.generation, _overrides(), resumed_from)
            if decision.action in ("new", "fresh"):
                _write_hydra_record(run_dir, cfg)
        distributed.barrier(dist)
        return _attempt(job, ident, stage, ckpt, plan["attempts"] + 1, decision)
    except ConfigError:
        if lock is not None:
            lock.release(remove_if_empty=not written)
        raise
    finally:
        if lock is not None:
            lock.release()


def _record_setup_crash(run_dir: Path, ident: RunIdentity, decision: rundir.Decision, exc: BaseException) -> None:
    """A crash before training (out of memory while building, an I/O error): summary, log and attempt record."""
    try:
        if decision.action == "fresh":
            rundir.move_aside(run_dir)
            run_dir.mkdir(parents=True)
        rundir.start_attempt(run_dir, ident, decision.generation, _overrides(), None)
        runlog = RunLog(run_dir / "train.log")
        try:
            runlog.traceback(exc)
        finally:
            runlog.close()
        summary = {"status": "failed", "error": _error_record(exc), "run_id": ident.digest, "run_name": ident.name,
                   "run_dir": str(run_dir), "epochs": 0}
        atomic_write_json(run_dir / rundir.SUMMARY, summary)
        rundir.end_attempt(run_dir, "failed")
        _report(summary, run_dir)
    except Exception as e:  # never hide the crash behind a failure to record it
        log.error("could not record the failure in %s (%s: %s)", run_dir, type(e).__name__, e)


def _attempt(job: Job, ident: RunIdentity, stage: StageContext | None, ckpt: dict[str, Any] | None,
             attempt: int, decision: rundir.Decision) -> dict[str, Any]:
    """Train one attempt of a run whose folder is ready; write its summary whatever happens (rank 0)."""
    rc, trainer, run_dir = job.rc, job.trainer, job.run_dir
    model, data = trainer.model, trainer.data
    main = job.dist.main
    runlog = RunLog(run_dir / "train.log") if main else None
    t0 = time.perf_counter()
    previous_wall = ((rundir.inspect(run_dir).summary or {}).get("wall_s") or 0.0) if ckpt is not None else 0.0
    wandb_id = ident.digest[:16] + (f"-g{decision.generation}" if decision.generation > 1 else "")
    group = _sweep_name() or (Path(stage.parent_dir).name if stage is not None else None)
    logger_cfg = rc.logger if main else dataclasses.replace(rc.logger, name="none")
    tracker = Tracker(logger_cfg, run_dir, job.resolved, run_id=wandb_id, name=_display_name(ident, _overrides()),
                      group=group, job_type=rc.pruner.name)
    trainer.callbacks.append(TrackerLog(tracker))
    status, outcome, to_raise = "failed", {}, None
    warnings = list(job.warnings)
    try:
        with job.stop:
            log.info("run %s (id %s, attempt %d): %s | %s on %s, %s init, pruner %s at sparsity %.4f (density %.4f), "
                     "device %s, %d train / %d test images", run_dir, ident.short, attempt, decision.reason,
                     rc.model.name, rc.dataset.name, rc.init.name, rc.pruner.name, rc.pruner.sparsity,
                     1 - rc.pruner.sparsity, trainer.device, data.num_train, data.num_test)
            for w in warnings:
                log.warning("%s", w)
            if ckpt is not None:
                trainer.notify_resume()
            else:
                try:
                    job.pruner.initialize(model, job.ctx)
                except NonFiniteError as e:
                    raise Diverged(e.what, "initialize", 0, 0, None) from e
                if rc.pruner.sparsity > 0:
                    try:
                        new = mask_warnings(mask_structure(model, data.input_shape), rc.pruner.sparsity)
                    except Exception:  # a metric must never cost the run
                        new = []
                    for w in new:
                        log.warning("%s", w)
                    warnings += new
                trainer.checkpoint()  # the initialized state: a resume never recomputes the mask
                job.stop.check("initialization")
            trainer.fit()
            status = "completed"
    except Diverged as d:
        status, outcome = "diverged", {"diverged": d.record()}
    except Preempted as p:
        status, to_raise = p.status, p
        outcome = {"stopped": {"signal": p.signal_name, "where": p.where or trainer.where(),
                               "checkpoint": (run_dir / rundir.CHECKPOINT).exists()}}
    except KeyboardInterrupt as k:  # a second Ctrl-C: no checkpoint of this step
        status, to_raise = "interrupted", k
        outcome = {"stopped": {"signal": "SIGINT", "where": trainer.where(),
                               "checkpoint": (run_dir / rundir.CHECKPOINT).exists()}}
    except BaseException as e:
        status, to_raise = "failed", e
        outcome = {"error": _error_record(e)}
        if runlog is not None:
            runlog.traceback(e)
    summary = _finish(job, ident, status, outcome, warnings, previous_wall + time.perf_counter() - t0, attempt,
                      tracker, runlog)
    if to_raise is not None:
        raise to_raise
    return summary


def _finish(job: Job, ident: RunIdentity, status: str, outcome: dict[str, Any], warnings: list[str], wall_s: float,
            attempt: int, tracker: Tracker, runlog: RunLog | None) -> dict[str, Any]:
    """Write the summary, the masks and the attempt record (rank 0); report; never raise over the run's
    own outcome. Returns the summary (every rank computes it)."""
    rc, trainer, run_dir = job.rc, job.trainer, job.run_dir
    model, data = trainer.model, trainer.data
    summary: dict[str, Any] = {"status": status, **outcome}
    problems: list[str] = []

    def attempt_to(what: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # never hide the run's own outcome behind a failure to report it
            problems.append(f"{what}: {type(e).__name__}: {e}")
            log.error("could not %s (%s: %s)", what, type(e).__name__, e)
            return None

    extra = {"run_id": ident.digest, "run_name": ident.name, "attempts": attempt, "warnings": warnings, **outcome}
    extra.update(attempt_to("collect the method's facts", job.pruner.summary) or {})
    if status != "diverged":
        extra.update(attempt_to("compute mask-structure metrics", structure_summary, model, data.input_shape) or {})
    built = attempt_to("build the summary", summarize, rc, model, trainer.history, status, wall_s, run_dir, extra)
    if built is not None:
        summary = built
    if problems:
        summary["reporting_problems"] = list(problems)
    if not job.dist.main:
        return summary
    attempt_to("write summary.json", atomic_write_json, run_dir / rundir.SUMMARY, summary)
    if status in ("completed", "preempted", "interrupted"):
        attempt_to("write masks.pt", atomic_torch_save, run_dir / "masks.pt", {
            "masks": mask_dict(model),
            "status": status,
            "weight_seed": rc.seed if rc.init.weight_seed is None else rc.init.weight_seed,
            "score_seed": job.ctx.score_seed,
            "config": job.resolved,
        })
    attempt_to("record the attempt in run.json", rundir.end_attempt, run_dir, status)
    flat = {k: v for k, v in summary.items() if k not in ("layer_densities", "structure", "stages")}
    flat |= {f"density/{k}": v for k, v in (summary.get("layer_densities") or {}).items()}
    tracker.summary(flat)
    tracker.finish(0 if status == "completed" else 1)
    _report(summary, run_dir)
    if runlog is not None:
        runlog.close()
    return summary


def _report(summary: dict[str, Any], run_dir: Path) -> None:
    status = summary.get("status")
    if status == "completed":
        log.info("done: test_acc %s | sparsity %s (density %s, %s of %s prunable weights kept) | %.1f s | "
                 "run folder %s",
                 _fmt(summary.get("test_acc")), _fmt(summary.get("sparsity")), _fmt(summary.get("density")),
                 summary.get("params_remaining"), summary.get("params_total"), summary.get("wall_s") or 0.0, run_dir)
    elif status == "diverged":
        log.error("diverged: %s Summary: %s", summary["diverged"]["message"], run_dir / rundir.SUMMARY)
    elif status in ("preempted", "interrupted"):
        s = summary["stopped"]
        saved = "checkpoint saved" if s["checkpoint"] else "no checkpoint (trainer.checkpoint=false or nothing trained)"
        log.warning("%s by %s at %s: %s in %s; run the same command to continue.", status, s["signal"], s["where"],
                    saved, run_dir)
    else:
        err = summary.get("error", {})
        log.error("failed: %s: %s (at %s); traceback in %s", err.get("type"), err.get("message"), err.get("where"),
                  run_dir / "train.log")


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one job and return its summary; multi-stage methods (IMP) run their stages.

    The run folder is ``run_dir`` if given, else the Hydra job's output folder (which
    ``conf/config.yaml`` sets to the run's identity folder), else
    ``<paths.output_dir>/runs/<name>-<id>``.

    Returns:
        The summary: ``status`` ``completed`` or ``diverged``; ``skipped: True`` when the run was
        already done and nothing ran.

    Raises:
        ConfigError: any bad input, before anything is written.
        RunBusy: the run is running in another process.
        Preempted: a stop signal (SIGTERM, SIGUSR1, SIGINT); checkpoint and summary are written.
        Exception: a crash; ``summary.json`` says ``failed`` with the error.
    """
    rc = resolve(cfg)
    try:
        ident = identity_mod.compute(cfg)
    except OmegaConfBaseException as e:
        raise _translate(e, cfg) from e
    if run_dir is None:
        run_dir = hydra_run_dir() if _hydra() is not None else identity_mod.runs_root(cfg) / ident.folder
    run_dir = Path(run_dir)
    plan = stages.plan(rc)
    if plan is not None:
        return _run_staged(cfg, rc, ident, run_dir, plan)
    return execute(cfg, run_dir, ident)


def _run_staged(cfg: DictConfig, rc: RunConfig, ident: RunIdentity, run_dir: Path,
                plan: list[stages.Stage]) -> dict[str, Any]:
    """A multi-stage run: decide for the parent folder, then run the stages (each skipped when done)."""
    state = rundir.inspect(run_dir)
    decision = rundir.decide(state, ident, rc.trainer.resume)
    if decision.action == "skip":
        return _skipped(state)
    if decision.action == "fresh" and run_dir.exists():
        log.info("moved the earlier content of %s to %s", run_dir, rundir.move_aside(run_dir))
        state = rundir.inspect(run_dir)
    generation = decision.generation

    def record(path: Path, parent: RunIdentity) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if state.record is None:
            rundir.start_attempt(path, parent, generation, _overrides(), None)
            _write_hydra_record(path, cfg)

    def run_one(stage_cfg: DictConfig, stage_dir: Path, stage_ident: RunIdentity, ctx: StageContext,
                before_write: Callable[[], None]) -> dict[str, Any]:
        if rc.trainer.resume == "fresh":  # the parent folder was moved aside: every stage starts new
            stage_cfg = stage_cfg.copy()
            OmegaConf.update(stage_cfg, "trainer.resume", "auto", merge=False)
        return execute(stage_cfg, stage_dir, stage_ident, ctx, min_generation=generation, before_write=before_write)

    return stages.run_stages(cfg, ident, run_dir, plan, run_one, record)


__all__ = ["Job", "RunConfig", "execute", "resolve", "run", "setup"]
