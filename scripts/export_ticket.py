"""Take a found ticket out of a run folder as plain PyTorch files.

    python scripts/export_ticket.py outputs/runs/edge_popup-mlp-digits-s0.5-seed0-1e847bcf3d
    python scripts/export_ticket.py RUN_DIR --out my_ticket/

Every completed run writes ``ticket.pt``; this writes, into ``--out`` (default ``RUN_DIR/export``):

* ``state_dict.pt``: the pruned model's ``state_dict`` -- weights x masks as the forward pass used them
  (biprop's ``alpha * sign(w) * m``, scaled signed constants as scaled), every other parameter and buffer as
  is -- under the plain model's names. It loads without TicketLab into the same architecture built with
  PyTorch or torchvision::

      model = torchvision.models.resnet18(num_classes=10)        # or your own nn.Module
      model.load_state_dict(torch.load("state_dict.pt", weights_only=True))

* ``masks.pt``: ``{"masks": {"<layer>.weight": bool tensor}}``, the binary masks; ``pruner=from_file
  pruner.path=<it>`` applies them to a fresh model of the same architecture in TicketLab (and trains the kept
  weights);
* ``ticket.json``: the model config, input shape, number of classes, dataset and the run's test accuracy.

An IMP run's ticket is its last level's (``RUN_DIR/level_<LL>``); pass that folder or the IMP run's folder.
Exit status: 0 written, 2 no ticket in that folder (a run that did not complete, or one from before
``ticket.pt`` existed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ticketlab.files import atomic_torch_save, atomic_write_json


def find_ticket(run_dir: Path) -> Path | None:
    """``run_dir/ticket.pt``, or the last IMP level's."""
    if (run_dir / "ticket.pt").exists():
        return run_dir / "ticket.pt"
    levels = sorted(run_dir.glob("level_*/ticket.pt"))
    return levels[-1] if levels else None


def export(run_dir: Path, out: Path) -> dict:
    """Write ``state_dict.pt``, ``masks.pt`` and ``ticket.json`` for ``run_dir``'s ticket into ``out``; return
    the ``ticket.json`` content.

    Raises:
        FileNotFoundError: the folder holds no ``ticket.pt``.
    """
    path = find_ticket(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} holds no ticket.pt: only a completed run writes one (see its "
                                "summary.json for how it ended)")
    ticket = torch.load(path, weights_only=True, map_location="cpu")
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out / "state_dict.pt", ticket["state_dict"])
    atomic_torch_save(out / "masks.pt", {"masks": ticket["masks"]})
    kept = sum(int(m.sum()) for m in ticket["masks"].values())
    total = sum(m.numel() for m in ticket["masks"].values())
    info = {k: ticket[k] for k in ("model", "input_shape", "num_classes", "dataset", "test_acc", "run_id")}
    info.update(source=str(path), density=kept / total if total else 1.0,
                sparsity=1 - kept / total if total else 0.0, kept=kept, prunable=total)
    atomic_write_json(out / "ticket.json", info)
    return info


def main(argv: list[str] | None = None) -> int:
    """Export the ticket of the given run folder; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a completed run's folder (an IMP run's or one of its levels')")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/export)")
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / "export"
    try:
        info = export(args.run_dir, out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing complete was written", file=sys.stderr)
        return 130
    print(f"ticket of {info['source']}: {info['kept']} of {info['prunable']} prunable weights kept "
          f"(sparsity {info['sparsity']:.4f}, density {info['density']:.4f}), test_acc {info['test_acc']}")
    print(f"wrote {out / 'state_dict.pt'}, {out / 'masks.pt'}, {out / 'ticket.json'}")
    print(json.dumps(info["model"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
