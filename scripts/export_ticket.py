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

import sys

from ticketlab.commands import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
