"""TicketLab's single entrypoint: ``python train.py [group=option ...] [key=value ...] [-m]``.

A thin ``@hydra.main`` wrapper around :func:`ticketlab.cli.task`; see README.md for examples and
:mod:`ticketlab.errors` for the exit codes.
"""

import hydra
from omegaconf import DictConfig

from ticketlab.cli import main as exit_with_outcome
from ticketlab.cli import task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    """Run one job (see :func:`ticketlab.cli.task`)."""
    return task(cfg)


if __name__ == "__main__":
    exit_with_outcome(main)
