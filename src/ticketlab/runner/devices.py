"""Choose where a run computes, once: device, DDP membership, CPU threads, seeds (:func:`place`).

Everything below the runner receives the resulting :class:`~ticketlab.training.placement.Placement`
and never selects a device itself.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

from ticketlab import distributed
from ticketlab.errors import ConfigError
from ticketlab.runner import cluster
from ticketlab.runner.validate import RunConfig
from ticketlab.training.placement import Placement


def select_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given.

    In a parallel local sweep on several GPUs, ``auto`` spreads the jobs over them
    (:func:`ticketlab.runner.cluster.local_gpu`).

    Raises:
        ConfigError: ``cuda``/``mps`` requested but not available.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        index = cluster.local_gpu(torch.cuda.device_count())
        return torch.device("cuda" if index is None else f"cuda:{index}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=auto or cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device='mps' but MPS is not available here; use trainer.device=auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    _set_deterministic(deterministic)


def _set_deterministic(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)`` without its start-up cost.

    The public call also sets ``torch._inductor.config.deterministic`` and so imports inductor and dynamo
    (about 0.7 s, a third of a small run's start-up). That flag only matters to ``torch.compile``, which
    re-applies the public call (:class:`ticketlab.training.loop.Trainer`); until then only torch's global
    switch is set. Once inductor is loaded anyway, the public call is used.
    """
    if "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=True)


def place(rc: RunConfig) -> Placement:
    """Select the device, join (or refuse) a DDP run and pick the rank's device, set the CPU threads.

    Called once per run (once per stage of a multi-stage run), before anything is built.

    Raises:
        ConfigError: an unavailable device, or several processes without ``trainer.strategy=ddp``.
    """
    device = select_device(rc.trainer.device)
    dist = distributed.init(rc.trainer.strategy, device.type)
    device = distributed.device_for(dist, device)
    threads = rc.trainer.threads or cluster.slurm_cpus()  # in a Slurm job: the cores it was given
    if threads:
        torch.set_num_threads(threads)
    return Placement(device=device, dist=dist, threads=threads or None, amp=rc.trainer.amp,
                     channels_last=rc.trainer.channels_last)


__all__ = ["place", "seed_everything", "select_device"]
