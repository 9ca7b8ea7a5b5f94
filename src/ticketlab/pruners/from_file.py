"""``pruner=from_file``: apply the mask saved by an earlier run (its ``masks.pt``) and train the kept weights.

Any TicketLab run writes ``masks.pt`` (``{"masks": {"<layer>.weight": bool tensor}, ...}``); the names
and shapes must match this run's model (checked before training). Works for masks from strong-ticket
runs too (the weights are then trained, e.g. to compare a found ticket with its retrained version).
Prunable layers the file does not mention stay dense (the run warns).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from ticketlab.errors import ConfigError, describe
from ticketlab.pruners.base import PruneContext, Pruner, PrunerConfig, register_pruner
from ticketlab.sparsity.masks import attach_fixed_masks, prunable_layers


@dataclass
class FromFileConfig(PrunerConfig):
    """``pruner=from_file``.

    Attributes:
        path: a run folder or its ``masks.pt``.
        sparsity: not used: the file decides (the log, the summary's ``target_sparsity`` and the run's name
            report the file's sparsity; the run's identity is the masks' digest, not the path).
    """

    name: str = "from_file"
    path: str = MISSING


def read_masks(path: Path, key: str = "pruner.path") -> dict[str, Tensor]:
    """The masks in a run folder's ``masks.pt`` (or in the given file), checked.

    Args:
        path: a run folder or a ``masks.pt`` file.
        key: the config key that named it (for the messages).

    Returns:
        ``{"<layer>.<weight|bias>": bool tensor}``, at least one entry.

    Raises:
        ConfigError: naming the file and what was expected, when the file is missing, unreadable
            (truncated, not a torch file), a training checkpoint, not TicketLab's
            ``{"masks": {name: tensor}}`` layout, empty, or holds non-binary values.
    """
    given = path
    path = path / "masks.pt" if path.is_dir() else path
    expected = 'a masks file written by a TicketLab run: {"masks": {"<layer>.weight": bool tensor, ...}, ...}'
    if not path.exists():
        raise ConfigError(f"{key}={str(given)!r}: no masks.pt there (every run writes one in its run folder).")
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        hint = " It looks like a training checkpoint; pass the run folder or its masks.pt." \
            if path.suffix == ".ckpt" else ""
        raise ConfigError(f"{key}={str(given)!r}: {path} cannot be read as {expected} ({describe(e, 200)})."
                          f"{hint}") from e
    if isinstance(blob, dict) and "optimizer" in blob and "model" in blob:
        raise ConfigError(f"{key}={str(given)!r}: {path} is a training checkpoint, not a masks file; pass the run "
                          "folder or its masks.pt.")
    if not isinstance(blob, dict) or not isinstance(blob.get("masks"), dict):
        raise ConfigError(f"{key}={str(given)!r}: {path} holds a {type(blob).__name__}"
                          f"{' without a masks entry' if isinstance(blob, dict) else ''}; expected {expected}.")
    masks = blob["masks"]
    if not masks:
        raise ConfigError(f"{key}={str(given)!r}: {path} holds no mask at all (an empty dict would train dense); "
                          f"expected {expected}.")
    out = {}
    for name, m in masks.items():
        if not isinstance(m, Tensor):
            raise ConfigError(f"{key}={str(given)!r}: entry {name!r} of {path} is a {type(m).__name__}, "
                              "not a tensor.")
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ConfigError(f"{key}={str(given)!r}: entry {name!r} of {path} holds values other than 0 and 1.")
        out[str(name)] = m.bool()
    return out


def mask_digest(path: Path) -> str | None:
    """SHA-256 (hex) of the masks in a run folder's ``masks.pt`` or the given file: their names, shapes and
    values, in name order, not the file's bytes (which also hold the run's config and status). ``None`` when
    the file is missing or unreadable (the run's checks then name the problem).

    A ``pruner=from_file`` run is identified by this digest instead of the path string, so two different
    files at one path are two runs and a moved file is the same run."""
    try:
        masks = read_masks(path)
    except ConfigError:
        return None
    h = hashlib.sha256()
    for name in sorted(masks):
        m = masks[name].contiguous()
        h.update(f"{name}:{tuple(m.shape)};".encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()


@register_pruner("from_file", FromFileConfig)
class FromFile(Pruner):
    """Apply a saved mask."""

    cfg: FromFileConfig

    def load(self) -> dict[str, torch.Tensor]:
        """The masks in ``cfg.path`` (see :func:`read_masks`).

        Raises:
            ConfigError: a missing, unreadable or malformed file.
        """
        return read_masks(Path(self.cfg.path))

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach the saved masks as fixed masks (weights stay trainable).

        Raises:
            ConfigError: a bad file, or a layer name or shape that does not match the model.
        """
        self.masks = self.load()
        try:
            attach_fixed_masks(model, self.masks)
        except ConfigError as e:
            raise ConfigError(f"pruner.path={self.cfg.path!r}: {e}") from e

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Warn about prunable layers the file leaves dense."""
        missing = [f"{name}.weight" for name, _ in prunable_layers(model) if f"{name}.weight" not in self.masks]
        if missing:
            return [f"pruner.path={self.cfg.path!r} has no mask for {', '.join(missing)}; those layers stay dense."]
        return []

    def summary(self) -> dict[str, Any]:
        """Where the mask came from, and its content's digest (:func:`mask_digest`)."""
        return {"mask_file": self.cfg.path, "mask_sha256": mask_digest(Path(self.cfg.path))}

    @property
    def target_sparsity(self) -> float:
        """The sparsity of the file's masks (fraction of their entries removed), not ``pruner.sparsity``."""
        masks = getattr(self, "masks", None) or self.load()
        total = sum(m.numel() for m in masks.values())
        return round(1.0 - sum(int(m.sum()) for m in masks.values()) / total, 12) if total else 0.0
