"""What a mask is: masks over prunable layers, how kept weights are selected, and how masks are measured.

* :mod:`~ticketlab.sparsity.masks` -- masks attached through ``torch.nn.utils.parametrize``:
  fixed masks (pruning at initialization, IMP) and score masks with the straight-through estimator
  (edge-popup and its descendants); :func:`~ticketlab.sparsity.masks.underlying` reaches a masked tensor.
* :mod:`~ticketlab.sparsity.straight_through` -- ``W * m`` with the straight-through score gradient.
* :mod:`~ticketlab.sparsity.selection` -- kept counts and top-k selection (per layer, global, banded).
* :mod:`~ticketlab.sparsity.kernels` -- the fused CPU kernels (C++ source in ``csrc/``) and their torch fallback.
* :mod:`~ticketlab.sparsity.report` -- measured sparsity and density per layer and overall.
* :mod:`~ticketlab.sparsity.structure` -- effective sparsity, disconnected units, path counts.
* :mod:`~ticketlab.sparsity.similarity` -- how alike two masks are (Hamming distance, IoU).
"""
