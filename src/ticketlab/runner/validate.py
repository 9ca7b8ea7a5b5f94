"""Validate a composed config once: every schema's checks, unknown keys, names, rules between groups.

:func:`resolve` turns the composed Hydra config into a typed :class:`RunConfig`. It runs once per run
(once per stage of a multi-stage run); everything after it receives the :class:`RunConfig`. A problem
raises :class:`~ticketlab.errors.ConfigError` (one paragraph naming the key, the value and what is
allowed) before anything is written.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

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
from ticketlab.data import DATASETS
from ticketlab.errors import ConfigError, check_seed
from ticketlab.init.weights import WEIGHT_INITS
from ticketlab.models import MODELS
from ticketlab.pruners import PrunerConfig
from ticketlab.runner.checks import cross_checks

GROUPS = ("dataset", "model", "init", "pruner", "optimizer", "scheduler", "trainer", "logger")
OPTIONAL_GROUPS = ("paths",)
TOP_LEVEL_KEYS = (*GROUPS, *OPTIONAL_GROUPS, "seed", "report")


@dataclass
class RunConfig:
    """The validated, typed config of one run (``OmegaConf.to_object`` of the composed config).

    Attributes:
        dataset, model, init, pruner, optimizer, scheduler, trainer, logger: each group's schema instance.
        seed: the run's seed.
        paths: output folders (``None`` when the config has no ``paths`` group).
        warnings: legal but degenerate settings found while validating.
    """

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


def translate(e: OmegaConfBaseException, cfg: DictConfig) -> ConfigError:
    """The :class:`ConfigError` for an OmegaConf failure on ``cfg`` (a mandatory value, an interpolation)."""
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


def check_names(rc: RunConfig) -> None:
    """Check the configured names against the registries (the one list of each).

    Raises:
        ConfigError: an unregistered dataset, model or initializer, or ``model.stem_width`` on a model
            that does not declare one.
    """
    DATASETS.check(rc.dataset.name)
    MODELS.check(rc.model.name)
    WEIGHT_INITS.check(rc.init.name)
    if rc.model.stem_width is not None and not MODELS.trait(rc.model.name, "stem_width"):
        raise ConfigError(f"model.stem_width={rc.model.stem_width} applies to "
                          f"{', '.join(MODELS.with_trait('stem_width'))}, not model.name={rc.model.name!r}; "
                          "leave it null.")


def resolve(cfg: DictConfig, extra_top_level: tuple[str, ...] = ()) -> RunConfig:
    """Resolve interpolations and run every schema's, every name's and every cross-group check.

    Args:
        cfg: the composed config.
        extra_top_level: top-level keys a script's own config adds (e.g. ``bench``), allowed too.

    Returns:
        The typed config; its ``warnings`` lists legal but degenerate settings.

    Raises:
        ConfigError: a value out of range, an unknown key (``+pruner.sparsty=0.9``), an unknown name,
            a missing group, an interpolation that does not resolve, a bad seed, or a rule between groups.
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
        raise translate(e, cfg) from e
    check_seed("seed", seed)
    rc = RunConfig(**objs, seed=seed, paths=paths)
    check_names(rc)
    rc.warnings = cross_checks(rc)
    return rc


__all__ = ["GROUPS", "TOP_LEVEL_KEYS", "RunConfig", "check_names", "resolve", "translate"]
