"""Where a run computes: its device, its place in a DDP run, its CPU threads, its precision and memory format.

The runner chooses all of it once per run (:func:`ticketlab.runner.devices.place`) and hands the frozen
:class:`Placement` to everything that needs it; nothing below the runner selects a device again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ticketlab.distributed import SINGLE, Dist


@dataclass(frozen=True)
class Placement:
    """One run's placement, fixed before anything is built.

    Attributes:
        device: this process's training device (``cuda:<local rank>`` under DDP on GPUs).
        dist: this process's place in a DDP run (:data:`ticketlab.distributed.SINGLE` for one process).
        threads: CPU threads torch was set to (``None``: torch's choice).
        amp: bf16 autocast for the forward pass on CUDA (``trainer.amp``; ignored elsewhere).
        channels_last: image batches (and convnets) in channels-last memory format (``trainer.channels_last``).
    """

    device: torch.device
    dist: Dist = SINGLE
    threads: int | None = None
    amp: bool = False
    channels_last: bool = False

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world)`` when several processes share each batch, else ``None``."""
        return (self.dist.rank, self.dist.world) if self.dist.enabled and self.dist.world > 1 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA with ``amp``; a null context otherwise."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch ``(B, ...)`` on the device; 4-D image batches channels-last with ``channels_last``."""
        if self.channels_last and x.dim() == 4:
            return x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return x.to(self.device, non_blocking=True)


__all__ = ["Placement"]
