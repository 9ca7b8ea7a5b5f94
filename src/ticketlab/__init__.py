"""TicketLab: a Hydra-configured experiment runner for lottery-ticket research.

Two families of methods share one mask mechanism (:mod:`ticketlab.sparsity.masks`):

* strong lottery tickets (edge-popup and its descendants): frozen random weights, trained scores;
* pruning at initialization: a fixed mask chosen before training, trained weights.

The single entrypoint is ``train.py`` at the repository root, a thin ``@hydra.main`` wrapper
around :func:`ticketlab.runner.run.run`.
"""

__version__ = "0.1.0"
