"""Typed config schemas for every group under ``conf/``, registered in Hydra's ConfigStore.

Each YAML option lists its schema first in its defaults list (``/schema/<group>/<name>@_here_``),
so a misspelled key or a wrong type fails at compose time with Hydra's own message. Range and
cross-field rules live in ``__post_init__`` and run when :func:`ticketlab.runner.validate.resolve`
converts the composed config with ``OmegaConf.to_object`` (the maintainers' recommended pattern, hydra #981),
i.e. before any data is loaded or any training starts.

Pruner schemas live next to their pruner (``ticketlab/pruners/<method>.py``), so adding a method
touches one source file and one YAML file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ticketlab.errors import ConfigError, check_choice, check_range, check_seed

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def store_schema(group: str, name: str, node: type) -> None:
    """Register ``node`` as the schema ``/schema/<group>/<name>`` in Hydra's ConfigStore.

    A YAML option ``conf/<group>/<option>.yaml`` then starts with
    ``defaults: [/schema/<group>/<name>@_here_, _self_]``. Storing under ``schema/`` keeps the
    schemas out of the options Hydra lists for ``<group>=``.
    """
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=node)


def check_path(key: str, value: str) -> None:
    """Raise :class:`ConfigError` if ``value`` is empty or still holds an unresolved ``${...}``.

    A path that reaches this check unresolved came from Python code that built a config without
    Hydra; using it would create a folder literally named after the interpolation.
    """
    if not value or "${" in value:
        raise ConfigError(f"{key}={value!r} is not a usable path; give a folder (Hydra resolves "
                          "${paths.*} and ${oc.env:...} only in composed configs).")


@dataclass
class PathsConfig:
    """``paths=`` group: where datasets, caches and run outputs live.

    The defaults come from ``conf/paths/default.yaml`` (environment variables with fallbacks), as
    in lightning-hydra-template's ``configs/paths/default.yaml``; ``dataset.root`` and
    ``dataset.cache_dir`` default to ``paths.data_dir`` and ``paths.cache_dir``. Paths never take
    part in a run's identity (:mod:`ticketlab.runner.identity`): the same run is the same wherever its
    data lives.

    Attributes:
        data_dir: dataset root (``$DATA_DIR``, else ``data``).
        cache_dir: decoded-dataset caches (``$TICKETLAB_CACHE``, else ``.cache/ticketlab``).
        output_dir: run folders (``<output_dir>/runs/``) and sweep records
            (``<output_dir>/sweeps/``) (``$TICKETLAB_OUTPUTS``, else ``outputs``).
    """

    data_dir: str = "data"
    cache_dir: str = ".cache/ticketlab"
    output_dir: str = "outputs"

    def __post_init__(self) -> None:
        for key in ("data_dir", "cache_dir", "output_dir"):
            check_path(f"paths.{key}", getattr(self, key))


@dataclass
class DatasetConfig:
    """``dataset=`` group. See :mod:`ticketlab.data` for each dataset.

    Attributes:
        name: dataset key (a name registered in :data:`ticketlab.data.registry.DATASETS`; checked by
            :func:`ticketlab.runner.validate.resolve`).
        root: folder holding the files (torchvision layouts, or ImageFolder ``train/`` + ``test/``).
        batch_size: training mini-batch size (images).
        eval_batch_size: evaluation batch size (images; memory only, results do not depend on it).
        download: let torchvision download missing archives (needs a network).
        augment: CIFAR-style augmentation (4-pixel padded random crop + horizontal flip) for the
            32x32 colour sets; ImageNet-style random-resized-crop for the folder sets.
        num_workers: DataLoader workers for the streamed folder sets (Tiny-ImageNet, ImageNet).
        cache_dir: where decoded ImageFolder copies are cached as uint8 tensors.
        test_fraction: held-out test fraction for ``digits`` (it ships no split; split seed 0).
        image_size: crop size for the streamed folder sets (pixels).
        val_fraction: fraction of the training set held out as a validation set (0 = none);
            summaries then report the test accuracy at the best validation epoch.
        val_seed: seed of the validation split (fixed, independent of ``seed``).
    """

    name: str = MISSING
    root: str = "data"
    batch_size: int = 128
    eval_batch_size: int = 1000
    download: bool = True
    augment: bool = True
    num_workers: int = 4
    cache_dir: str = ".cache/ticketlab"
    test_fraction: float = 0.2
    image_size: int = 224
    val_fraction: float = 0.0
    val_seed: int = 0

    def __post_init__(self) -> None:
        check_range("dataset.val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True)
        check_range("dataset.batch_size", self.batch_size, 1, float("inf"))
        check_range("dataset.eval_batch_size", self.eval_batch_size, 1, float("inf"))
        check_range("dataset.num_workers", self.num_workers, 0, float("inf"))
        check_range("dataset.test_fraction", self.test_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range("dataset.image_size", self.image_size, 8, float("inf"))
        check_seed("dataset.val_seed", self.val_seed)
        check_path("dataset.root", self.root)
        check_path("dataset.cache_dir", self.cache_dir)


@dataclass
class ModelConfig:
    """``model=`` group. See :mod:`ticketlab.models`.

    Attributes:
        name: architecture key (``mlp``, ``conv2``..``conv8``, ``vgg11/16/19``, ``resnet18/20/34/50``).
        widths: hidden widths of ``mlp`` (``[300, 100]`` is LeNet-300-100). Ignored by other models.
        width_mult: multiplies every hidden width / channel count (the output layer keeps
            ``num_classes``).
        bias: give Conv/Linear layers a bias (edge-popup's models have none).
        batch_norm: batch norm after each conv (VGG; ResNets always have it; Conv-n and MLP may).
        bn_affine: learnable BN scale/shift; ``false`` is the non-affine BN of edge-popup.
        stem_width: CIFAR ResNets: channels of the stem conv, fixed at every ``width_mult`` (IteRand's
            reference, dchiji-ntt/iterand ``models/networks/resnet.py``, keeps 64); ``null`` scales it with the
            first stage.
        arch: ``model=torchvision``: the torchvision constructor's name (``resnet18``, ``vgg11_bn``, ...;
            any name of ``torchvision.models.list_models()``).
        target: ``model=custom``: the dotted path of a user's ``nn.Module`` class or builder function
            (``mypkg.nets.MyNet``), importable from where ``train.py`` runs.
        kwargs: keyword arguments for the torchvision constructor or the user's target.
    """

    name: str = MISSING
    widths: list[int] = field(default_factory=lambda: [300, 100])
    width_mult: float = 1.0
    bias: bool = False
    batch_norm: bool = False
    bn_affine: bool = False
    stem_width: int | None = None
    arch: str = ""
    target: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stem_width is not None:
            check_range("model.stem_width", self.stem_width, 1, float("inf"))
        check_range("model.width_mult", self.width_mult, 0.0, float("inf"), lo_open=True)
        for w in self.widths:
            check_range("model.widths[i]", w, 1, float("inf"))


BIAS_INITS = ("zero", "default", "he_product", "ll_paired", "ll_dependent")


@dataclass
class InitConfig:
    """``init=`` group: distribution of the (frozen or trained) weights. See :mod:`ticketlab.init.weights`.

    Attributes:
        name: ``kaiming_normal``, ``kaiming_uniform``, ``signed_constant``, ``unsigned_constant``,
            ``xavier_normal`` or ``ortho_ll`` (looks-linear orthogonal).
        mode: ``fan_in`` or ``fan_out`` for the Kaiming standard deviation.
        nonlinearity: gain of the Kaiming std (``relu``: sqrt(2); ``linear``: 1).
        scale_fan: scale the std by density (Ramanujan et al. 2020, "scaled" inits).
        scale_fan_convention: ``paper``: std / sqrt(density) (Ramanujan et al. 2020, Sec. 4);
            ``reference_code``: std / sqrt(1 - density), what allenai/hidden-networks computes
            (its issue #9); identical at density 0.5.
        bias_init: layer biases: ``zero``, ``default`` (PyTorch's), ``he_product`` (Fischer &
            Burkholz), ``ll_paired`` or ``ll_dependent`` (with ``ortho_ll``).
        bias_factor: the factor of the ``he_product``/``ll_*`` bias std chain (default 0.05).
        weight_seed: seed of the weights; ``null`` = the run's ``seed``.
        score_seed: seed of the scores (score-based pruners); ``null`` = the run's ``seed``.
    """

    name: str = MISSING
    mode: str = "fan_in"
    nonlinearity: str = "relu"
    scale_fan: bool = False
    scale_fan_convention: str = "paper"
    bias_init: str = "zero"
    bias_factor: float = 0.05
    weight_seed: int | None = None
    score_seed: int | None = None

    def __post_init__(self) -> None:
        check_choice("init.mode", self.mode, ("fan_in", "fan_out"))
        check_choice("init.nonlinearity", self.nonlinearity, ("relu", "linear"))
        check_choice("init.scale_fan_convention", self.scale_fan_convention, ("paper", "reference_code"))
        check_choice("init.bias_init", self.bias_init, BIAS_INITS)
        check_range("init.bias_factor", self.bias_factor, 0.0, float("inf"))
        check_seed("init.weight_seed", self.weight_seed)
        check_seed("init.score_seed", self.score_seed)
        if self.bias_init.startswith("ll_") and self.name != "ortho_ll":
            raise ConfigError(f"init.bias_init={self.bias_init} pairs biases for looks-linear weights; it needs "
                              f"init.name=ortho_ll (got {self.name}).")


@dataclass
class OptimizerConfig:
    """Fields shared by every ``optimizer=`` option (learning rate, weight decay).

    Weight decay applies to what the method trains: the scores for edge-popup, the weights for
    dense training and pruning at initialization.
    """

    name: str = MISSING
    lr: float = 0.1
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_range("optimizer.lr", self.lr, 0.0, float("inf"), lo_open=True)
        check_range("optimizer.weight_decay", self.weight_decay, 0.0, float("inf"))


@dataclass
class SGDConfig(OptimizerConfig):
    """``optimizer=sgd``: SGD with momentum and optional Nesterov."""

    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("optimizer.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0 (it is 0).")


@dataclass
class AdamConfig(OptimizerConfig):
    """``optimizer=adam``: Adam with L2 weight decay (torch.optim.Adam)."""

    name: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas={self.betas} must be two numbers in [0, 1).")


@dataclass
class SchedulerConfig:
    """``scheduler=`` group: per-epoch learning-rate schedule with linear warm-up.

    Attributes:
        name: ``cosine`` (to ``min_lr`` at the last epoch), ``step`` (x ``gamma`` at each
            milestone) or ``constant``.
        warmup_epochs: linear warm-up from lr/warmup_epochs to lr over this many epochs.
        milestones: epochs at which ``step`` multiplies the lr by ``gamma``; empty means
            half and three quarters of ``trainer.epochs``.
        gamma: the ``step`` factor.
        min_lr: the ``cosine`` floor.
        cycles: ``cosine`` restarts: the post-warm-up epochs are split into this many equal
            cosine cycles (SGDR-style; Fischer & Burkholz restart at every annealing level).
    """

    name: str = MISSING
    warmup_epochs: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0
    cycles: int = 1

    def __post_init__(self) -> None:
        check_choice("scheduler.name", self.name, ("cosine", "step", "constant"))
        check_range("scheduler.cycles", self.cycles, 1, float("inf"))
        check_range("scheduler.warmup_epochs", self.warmup_epochs, 0, float("inf"))
        check_range("scheduler.gamma", self.gamma, 0.0, 1.0, lo_open=True)
        check_range("scheduler.min_lr", self.min_lr, 0.0, float("inf"))


RESUME_MODES = ("auto", "never", "fresh")


@dataclass
class TrainerConfig:
    """``trainer=`` group: the training loop.

    Attributes:
        epochs: number of training epochs (0 evaluates the initial network only).
        device: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:N``.
        amp: bfloat16/float16 autocast on CUDA (ignored on CPU).
        deterministic: ``torch.use_deterministic_algorithms`` (bit-reproducible on CPU).
        limit_train_batches: stop each training epoch after this many batches (smoke runs).
        limit_eval_batches: evaluate on at most this many batches (smoke runs).
        label_smoothing: cross-entropy label smoothing.
        progress: tqdm progress bar per epoch.
        checkpoint: save ``last.ckpt`` (the whole run state) atomically after every epoch, every
            ``checkpoint_every_min`` minutes inside an epoch, and when a signal stops the run.
        keep_checkpoint: keep ``last.ckpt`` after the run completes (it is what a stopped run resumes from; a
            completed run is never resumed, and its ``ticket.pt`` holds the found ticket, so by default the
            checkpoint -- 179 MB for ResNet-18, with optimizer state and scores -- is removed).
        checkpoint_every_min: minutes between checkpoints inside an epoch (ImageNet-sized epochs);
            0 = only at epoch ends and on signals.
        resume: what the same command does when its run folder already holds this run:
            ``auto`` (skip a completed or diverged run, continue any other from its checkpoint),
            ``never`` (refuse to touch an existing run: exit with an error) or ``fresh`` (move
            the old folder aside, never deleting it, and start again).
        threads: CPU threads for torch (0 = torch's default; in a Slurm job, the cores it was given).
        strategy: ``single`` (one process) or ``ddp`` (DistributedDataParallel over the processes
            ``torchrun`` or Slurm started; :mod:`ticketlab.distributed`).
        channels_last: convnets: parameters and image batches in the channels-last memory format (the
            faster layout for cuDNN and oneDNN convolutions; README, Benchmarks); sums may differ in the last
            bits.
        compile: ``torch.compile`` the training forward (optional; the first steps compile, and masks that
            change every step may cause recompilations or graph breaks).
        sync_bn: with ``ddp``, batch norm over the global batch (``nn.SyncBatchNorm``) instead of
            each rank's part.
    """

    epochs: int = 10
    device: str = "auto"
    amp: bool = False
    deterministic: bool = True
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    label_smoothing: float = 0.0
    progress: bool = True
    checkpoint: bool = True
    keep_checkpoint: bool = False
    checkpoint_every_min: float = 15.0
    resume: str = "auto"
    threads: int = 0
    strategy: str = "single"
    sync_bn: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        check_choice("trainer.resume", self.resume, RESUME_MODES)
        check_choice("trainer.strategy", self.strategy, ("single", "ddp"))
        if self.sync_bn and self.strategy != "ddp":
            raise ConfigError("trainer.sync_bn=true synchronises batch norm across DDP ranks; it needs "
                              "trainer.strategy=ddp.")
        check_range("trainer.checkpoint_every_min", self.checkpoint_every_min, 0.0, float("inf"))
        if self.epochs < 0:
            raise ConfigError(f"trainer.epochs={self.epochs} is negative; it must be an integer >= 0.")
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"trainer.device={self.device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps.")
        for key in ("limit_train_batches", "limit_eval_batches"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"trainer.{key}={v} must be null or an integer >= 1.")
        check_range("trainer.label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        check_range("trainer.threads", self.threads, 0, float("inf"))


@dataclass
class LoggerConfig:
    """``logger=`` group: Weights & Biases (``wandb``) or nothing (``none``).

    Local files (``metrics.jsonl``, ``summary.json``) are always written whatever the logger.

    Attributes:
        name: ``wandb`` or ``none``.
        mode: ``online``, ``offline`` or ``disabled`` (``conf/logger/wandb.yaml``: ``$WANDB_MODE``,
            else ``offline``). ``online`` without a reachable server falls back to ``offline``.
        project, entity, tags: passed to ``wandb.init``.
        group: W&B group; ``null`` = the sweep's name in a ``-m`` sweep (the experiment's name
            when one is set), the parent run for IMP levels, none for a single run.
        job_type: W&B job type; ``null`` = the pruner's name.
        run_name: W&B display name; ``null`` = the run's readable name plus the values swept.
    """

    name: str = MISSING
    mode: str = "offline"
    project: str = "ticketlab"
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    run_name: str | None = None

    def __post_init__(self) -> None:
        check_choice("logger.name", self.name, ("wandb", "none"))
        modes = ("online", "offline", "disabled")
        if self.mode not in modes and os.environ.get("WANDB_MODE") == self.mode:  # logger.mode's default reads it
            raise ConfigError(f"logger.mode={self.mode!r} comes from the environment variable "
                              f"WANDB_MODE={self.mode!r}, which is not allowed; set WANDB_MODE to one of: "
                              f"{', '.join(modes)} (or unset it), or give logger.mode=... on the command line.")
        check_choice("logger.mode", self.mode, modes)


for _group, _node in [("paths", PathsConfig), ("dataset", DatasetConfig), ("model", ModelConfig), ("init", InitConfig),
                      ("scheduler", SchedulerConfig), ("trainer", TrainerConfig), ("logger", LoggerConfig)]:
    store_schema(_group, "base", _node)
store_schema("optimizer", "sgd", SGDConfig)
store_schema("optimizer", "adam", AdamConfig)
