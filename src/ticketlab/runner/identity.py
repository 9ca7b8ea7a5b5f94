"""Run identity: a hash of the result-affecting config names the run folder.

The same command finds the same run folder, whatever the day or the machine (the ``hashname``
idea of facebookresearch/open_lth, ``foundations/desc.py``):

* the identity is the composed config **minus the keys that cannot change the result**
  (:data:`NOT_IDENTITY`: paths, the logger, the progress bar, checkpoint cadence, the resume mode,
  CPU threads, the DDP strategy, the memory format and compilation -- which change only the order of float
  sums --, data-loading
  workers, the evaluation batch size) **and minus every field equal to
  its schema default** (except ``name``, which tells the options of a group apart);
* its SHA-256 over canonical JSON is the run id; the folder is ``<readable name>-<first 10 hex
  digits>``, e.g. ``outputs/runs/edge_popup-mlp-digits-s0.5-seed0-3f9a0c12de``;
* dropping defaults keeps old runs addressable when a new config key is added, provided the new
  key's default reproduces the old behaviour (open_lth's "backwards-compatible defaults" rule);
  ``tests/test_identity.py`` pins the ids of a few configs so that a change is never silent.

Stages of a multi-stage run (IMP levels, :mod:`ticketlab.runner.stages`) have their own identity: the
parent's values plus the stage name.

Hydra asks :func:`run_dir_resolver` (``${tl.run_dir:}`` in ``conf/config.yaml``) for the job's
output folder, so single runs and sweep jobs alike land in ``<paths.output_dir>/runs/<folder>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: Keys that cannot change a run's result: ``None`` leaves out the whole group.
NOT_IDENTITY: dict[str, tuple[str, ...] | None] = {
    "hydra": None,
    "paths": None,
    "logger": None,
    "report": None,
    "trainer": ("progress", "checkpoint", "keep_checkpoint", "checkpoint_every_min", "resume", "threads", "strategy",
                "channels_last", "compile"),
    "dataset": ("root", "cache_dir", "download", "num_workers", "eval_batch_size"),
}
#: Fields kept even when equal to their default: they select the group's option.
ALWAYS_KEPT = ("name",)


@dataclass(frozen=True)
class RunIdentity:
    """What a run is, as a hash and a readable name.

    Attributes:
        values: the hashed values: ``{group: {key: value}}`` (non-default, result-affecting) plus
            top-level scalars and, for a stage, ``{"stage": name}``.
        digest: SHA-256 (hex, 64 characters) of the canonical JSON of ``values``.
        name: readable ``<pruner>-<model>-<dataset>-s<sparsity>-seed<seed>[-<stage>]``.
    """

    values: dict[str, Any]
    digest: str
    name: str
    stage: str | None = field(default=None)

    @property
    def short(self) -> str:
        """The first 10 hex digits of :attr:`digest` (40 bits)."""
        return self.digest[:10]

    @property
    def folder(self) -> str:
        """The run folder's name, ``<name>-<short>``."""
        return f"{self.name}-{self.short}"

    def child(self, stage: str) -> RunIdentity:
        """The identity of stage ``stage`` of this run (e.g. ``level_03``)."""
        values = {**self.values, "stage": stage}
        return RunIdentity(values, _digest(values), f"{self.name}-{_safe(stage)}", stage)


def _safe(text: str) -> str:
    """``text`` restricted to ``[A-Za-z0-9._=-]`` (anything else becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._=-]", "_", text)


def _digest(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _defaults(node: DictConfig) -> dict[str, Any]:
    """``{field: default}`` of the dataclass schema behind ``node`` (empty for untyped nodes)."""
    typ = OmegaConf.get_type(node)
    if typ is None or not dataclasses.is_dataclass(typ):
        return {}
    out = {}
    for f in dataclasses.fields(typ):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def identity_values(cfg: DictConfig) -> dict[str, Any]:
    """The result-affecting, non-default values of a composed config (see the module docstring).

    Args:
        cfg: the composed config (with or without the ``hydra`` node).

    Raises:
        omegaconf.errors.InterpolationResolutionError: a result-affecting value does not resolve.
    """
    out: dict[str, Any] = {}
    for key in cfg.keys():
        key = str(key)
        excluded = NOT_IDENTITY.get(key, ())
        if excluded is None:
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            defaults = _defaults(node)
            values = {}
            for sub in node.keys():
                sub = str(sub)
                if sub in excluded:
                    continue
                value = _plain(node, sub)
                if (key, sub) == ("trainer", "device") and str(value).startswith("cuda:"):
                    value = "cuda"  # which GPU a run used does not change what the run is
                if sub in ALWAYS_KEPT or sub not in defaults or value != defaults[sub]:
                    values[sub] = value
            out[key] = values
        else:  # top-level scalars and lists (``seed``) are always kept
            out[key] = _plain(cfg, key)
    return out


def _plain(node: DictConfig, key: str) -> Any:
    value = node[key]
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def readable_name(cfg: DictConfig, mask_sha256: str | None = None) -> str:
    """``<pruner>-<model>-<dataset>-s<sparsity>-seed<seed>`` (characters outside ``[A-Za-z0-9._=-]`` -> ``_``);
    ``c<x>`` instead of ``s<sparsity>`` when the pruner's ``compression`` (density 10^-x) is set; IMP with
    ``pruner.levels`` names its last level's sparsity ``1 - (1 - rate)^levels``; a ``from_file`` run names
    its masks' digest ``m<first 8 hex>`` (the file decides the sparsity); ``model=torchvision`` shows
    ``tv_<arch>``, ``model=custom`` its target's class name."""
    try:
        compression = cfg.pruner.get("compression")
        level = f"c{float(compression):g}" if compression is not None else f"s{float(cfg.pruner.sparsity):g}"
        if cfg.pruner.name == "imp" and cfg.pruner.get("levels") is not None:
            level = f"s{round(1.0 - (1.0 - float(cfg.pruner.rate)) ** int(cfg.pruner.levels), 6):g}"
        if mask_sha256:
            level = f"m{mask_sha256[:8]}"
        model = str(cfg.model.name)
        if model == "torchvision" and cfg.model.get("arch"):
            model = f"tv_{cfg.model.arch}"
        elif model == "custom" and isinstance(cfg.model.get("target"), str) and cfg.model.target:
            model = str(cfg.model.target).rsplit(".", 1)[-1]
        parts = [str(cfg.pruner.name), model, str(cfg.dataset.name), level, f"seed{cfg.seed}"]
    except Exception:  # an unresolvable or missing key: the validation reports it properly
        return "run"
    return _safe("-".join(parts))


def compute(cfg: DictConfig) -> RunIdentity:
    """The identity of the run ``cfg`` describes.

    Raises:
        omegaconf.errors.InterpolationResolutionError: a result-affecting value does not resolve.
    """
    values = identity_values(cfg)
    digest = _mask_content(values)
    return RunIdentity(values, _digest(values), readable_name(cfg, digest))


def _mask_content(values: dict[str, Any]) -> str | None:
    """``pruner=from_file``: put the digest of the masks' content in place of the path (in ``values``) and return
    it, so that what identifies the run is the mask it applies, not where the file lies. A missing or unreadable
    file keeps its path (the run's checks then name the problem)."""
    pruner = values.get("pruner")
    if not isinstance(pruner, dict) or pruner.get("name") != "from_file" or not isinstance(pruner.get("path"), str):
        return None
    from ticketlab.pruners.from_file import mask_digest

    digest = mask_digest(Path(pruner["path"]))
    if digest is not None:
        del pruner["path"]
        pruner["mask_sha256"] = digest
    return digest


def describe_difference(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``["pruner.sparsity: 0.5 (there) vs 0.9 (here)", ...]`` between two identity value dicts."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a), flat(b)
    lines = []
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k, "(default)") != fb.get(k, "(default)"):
            lines.append(f"{k}: {fa.get(k, '(default)')} (there) vs {fb.get(k, '(default)')} (here)")
    return lines


def runs_root(cfg: DictConfig) -> Path:
    """``<paths.output_dir>/runs`` as an absolute path (``outputs/runs`` without a paths group)."""
    out = cfg.paths.output_dir if "paths" in cfg else "outputs"
    return Path(str(out)).absolute() / "runs"


def run_dir_resolver(*, _root_: DictConfig) -> str:
    """``${tl.run_dir:}``: the identity folder of the job being composed (an absolute path).

    When the config cannot be resolved, returns ``<runs>/_unresolved``; the run then stops with a
    clear error before writing anything, and that empty folder is removed.
    """
    try:
        return str(runs_root(_root_) / compute(_root_).folder)
    except Exception:
        try:
            return str(runs_root(_root_) / "_unresolved")
        except Exception:
            return str(Path("outputs").absolute() / "runs" / "_unresolved")


__all__ = ["NOT_IDENTITY", "RunIdentity", "compute", "describe_difference", "identity_values", "readable_name",
           "run_dir_resolver", "runs_root"]
