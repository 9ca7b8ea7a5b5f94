"""A found ticket out of TicketLab: the pruned model as a plain ``state_dict`` and its binary masks.

Every completed run writes ``ticket.pt`` (:func:`ticketlab.runner.attempt.ticket_record`); :func:`export`
(``ticketlab export RUN_DIR``, ``scripts/export_ticket.py``) writes it out as:

* ``state_dict.pt``: :func:`ticket_state_dict` -- weights x masks as the forward pass used them (biprop's
  ``alpha * sign(w) * m``, scaled signed constants as scaled), every other parameter and buffer as is, under
  the plain model's names; ``model.load_state_dict(torch.load(path, weights_only=True))`` loads it into the
  same architecture built with PyTorch or torchvision, without TicketLab;
* ``masks.pt``: ``{"masks": {"<layer>.weight": bool tensor}}``; ``pruner=from_file pruner.path=<it>`` applies
  the mask to a fresh model of that architecture in TicketLab;
* ``ticket.json``: model config, input shape, number of classes, dataset, sparsity and the run's test accuracy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ticketlab.files import atomic_torch_save, atomic_write_json
from ticketlab.sparsity.masks import bake

#: The file a completed run keeps its ticket in.
TICKET = "ticket.pt"


def ticket_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The found ticket as a plain ``state_dict``: every masked tensor as the forward pass uses it, every other
    parameter and buffer as is, under the names of the model without masks (``load_state_dict(strict=True)``
    into the plain architecture). Removed weights are exact zeros. ``model`` is not changed.

    Source: the masked forward of edge-popup (Ramanujan et al. 2020, Algorithm 1) and biprop (Diffenderfer &
    Kailkhura 2021, Eq. 2), evaluated once (:func:`ticketlab.sparsity.masks.bake`).

    Returns:
        ``{name: tensor}`` (detached CPU copies), shapes as in the plain model.
    """
    baked = bake(copy.deepcopy(model))
    return {k: v.detach().cpu().clone() for k, v in baked.state_dict().items()}


def find_ticket(run_dir: Path) -> Path | None:
    """``run_dir/ticket.pt``, or an IMP run's last level's (``run_dir/level_<LL>/ticket.pt``); ``None`` if none."""
    if (run_dir / TICKET).exists():
        return run_dir / TICKET
    levels = sorted(run_dir.glob(f"level_*/{TICKET}"))
    return levels[-1] if levels else None


def export(run_dir: Path, out: Path) -> dict[str, Any]:
    """Write ``state_dict.pt``, ``masks.pt`` and ``ticket.json`` for ``run_dir``'s ticket into ``out``.

    Returns:
        The ``ticket.json`` content (``model``, ``input_shape``, ``num_classes``, ``dataset``, ``test_acc``,
        ``run_id``, ``source``, ``kept``, ``prunable``, ``sparsity``, ``density``).

    Raises:
        FileNotFoundError: the folder holds no ``ticket.pt`` (the run did not complete).
    """
    path = find_ticket(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} holds no {TICKET}: only a completed run writes one (its summary.json "
                                "says how it ended)")
    ticket = torch.load(path, weights_only=True, map_location="cpu")  # tensors and plain values: no code runs
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out / "state_dict.pt", ticket["state_dict"])
    atomic_torch_save(out / "masks.pt", {"masks": ticket["masks"]})
    kept = sum(int(m.sum()) for m in ticket["masks"].values())
    total = sum(m.numel() for m in ticket["masks"].values())
    info = {k: ticket.get(k) for k in ("model", "input_shape", "num_classes", "dataset", "test_acc", "run_id")}
    info.update(source=str(path), kept=kept, prunable=total, sparsity=1 - kept / total if total else 0.0,
                density=kept / total if total else 1.0)
    atomic_write_json(out / "ticket.json", info)
    return info


__all__ = ["TICKET", "export", "find_ticket", "ticket_state_dict"]
