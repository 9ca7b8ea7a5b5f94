"""Every OmegaConf resolver TicketLab's configs use, registered in one place (:func:`register`).

* ``${tl.run_dir:}`` (``hydra.run.dir`` in ``conf/config.yaml``):
  :func:`ticketlab.runner.identity.run_dir_resolver`;
* ``${tl.sweep_name:}`` (``hydra.sweep.dir`` in ``conf/config.yaml``):
  :func:`ticketlab.sweeps.sweep.sweep_name_resolver`;
* ``${tl.cpus_per_task:}`` (``conf/hydra/launcher/slurm.yaml``): :func:`ticketlab.runner.cluster.cpus_per_task`;
* ``${tl.recycle_rate:}`` (``conf/method/*_recycle.yaml``): :func:`ticketlab.pruners.weight_recycling.capped_rate`;
* ``${tl.env:NAME,default}`` (``conf/paths/default.yaml``): :func:`env_or`.

:func:`register` also imports every method, so that each one's config schema is in Hydra's
ConfigStore before a config is composed. ``train.py`` (through :mod:`ticketlab.cli`), the scripts
and the tests call it before composing.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def env_or(name: str, default: str) -> str:
    """``${tl.env:NAME,default}``: the environment variable ``NAME``, or ``default`` when it is unset *or empty*
    (``DATA_DIR=`` in a shell or a Makefile means "not given"; OmegaConf's ``oc.env`` would return ``''``)."""
    return os.environ.get(str(name)) or default


def register() -> None:
    """Register the resolvers above and every config schema (idempotent)."""
    import ticketlab.pruners  # noqa: F401  (each method's schema registers with its class)
    from ticketlab.pruners.weight_recycling import capped_rate
    from ticketlab.runner.cluster import cpus_per_task
    from ticketlab.runner.identity import run_dir_resolver
    from ticketlab.sweeps.sweep import sweep_name_resolver

    resolvers = {
        "tl.run_dir": (run_dir_resolver, False),
        # cached: Hydra copies the launcher's resolver cache into each job's config, so every job
        # (in any process) sees the sweep folder the launcher created
        "tl.sweep_name": (sweep_name_resolver, True),
        "tl.cpus_per_task": (cpus_per_task, False),
        "tl.recycle_rate": (capped_rate, False),
        "tl.env": (env_or, False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


__all__ = ["env_or", "register"]
