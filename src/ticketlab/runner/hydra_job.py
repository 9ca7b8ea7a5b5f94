"""What the runner reads of the Hydra job it runs in: its folder, overrides, sweep, and the record it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ticketlab.runner import identity
from ticketlab.sweeps import sweep


def current() -> Any | None:
    """The current Hydra job's config (``None`` outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run_dir() -> Path:
    """The current Hydra job's output folder.

    Raises:
        RuntimeError: outside a Hydra job (pass ``run_dir`` to :func:`ticketlab.runner.run.run` instead).
    """
    hc = current()
    if hc is None:
        raise RuntimeError("not inside a Hydra job; pass run_dir")
    return Path(hc.runtime.output_dir)


def overrides() -> list[str]:
    """The job's command-line overrides (none outside Hydra)."""
    hc = current()
    return OmegaConf.to_container(hc.overrides.task, resolve=False) if hc is not None else []


def sweep_name() -> str | None:
    """The sweep folder's name in a ``-m`` sweep (the default W&B group)."""
    return Path(str(current().sweep.dir)).name if sweep.in_multirun() else None


def display_name(ident: identity.RunIdentity, given: list[str]) -> str:
    """The folder name plus the result-affecting values given on the command line that it does not show."""
    shown = {"pruner", "model", "dataset", "pruner.sparsity", "seed"}
    extra = []
    for o in given:
        key = o.split("=", 1)[0].lstrip("+~")
        group = key.split(".", 1)[0].split("/", 1)[0]
        excluded = identity.NOT_IDENTITY.get(group, ())
        if key in shown or excluded is None or key.split(".", 1)[-1] in (excluded or ()):
            continue
        extra.append(o.lstrip("+~"))
    return " ".join([ident.folder, *extra])


def write_record(folder: Path, cfg: DictConfig) -> None:
    """``<folder>/.hydra/config.yaml`` (composed, unresolved), ``overrides.yaml`` and ``hydra.yaml``."""
    folder = folder / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    OmegaConf.save(OmegaConf.create(plain), folder / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides()), folder / "overrides.yaml")
    hc = current()
    if hc is not None:
        OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}), folder / "hydra.yaml")


__all__ = ["current", "display_name", "overrides", "run_dir", "sweep_name", "write_record"]
