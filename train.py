"""TicketLab's single entrypoint: ``python train.py [group=option ...] [key=value ...] [-m]``.

A thin ``@hydra.main`` wrapper around :func:`ticketlab.run.run`; see README.md for examples.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from ticketlab.errors import ConfigError
from ticketlab.run import run

log = logging.getLogger("ticketlab")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job; returns the final test accuracy (what Hydra sweepers optimize)."""
    try:
        summary = run(cfg)
    except ConfigError as e:
        log.error("Invalid configuration: %s", e)
        sys.exit(2)
    return summary["test_acc"]


if __name__ == "__main__":
    main()
