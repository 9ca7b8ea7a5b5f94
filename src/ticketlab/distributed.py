"""One model on several processes: ``trainer.strategy=ddp`` (PyTorch DistributedDataParallel).

Launch with ``torchrun --nproc_per_node=N train.py trainer.strategy=ddp ...``, or on Slurm with the
launcher's ``tasks_per_node=N`` (submitit's environment is translated to ``torch.distributed``'s).
Every rank builds the same model, masks and scores from the same seeds; then:

* **data**: ``dataset.batch_size`` is the *global* batch. Every rank draws the same epoch order and
  augmentation and keeps its slice of each global batch (:meth:`TensorLoader.batches
  <ticketlab.data.loaders.TensorLoader.batches>` with ``shard``), so N ranks see exactly the batches
  of a single process, split N ways. Evaluation is sharded the same way and summed over ranks;
* **gradients** of whatever the method trains (weights, scores, BN) are averaged by DDP, with each
  rank's loss scaled so that the average is the mean over the global batch (uneven last batches
  included);
* **masks** are the same on every rank: scores and weights receive the same updates, random
  redraws come from generators seeded alike, data-dependent pruning-at-init scores are computed on
  the same full batches by every rank, and DDP starts each phase by broadcasting rank 0's
  parameters and buffers (masks included). :func:`check_same` verifies it every epoch;
* **files**: only rank 0 decides what to do with the run folder, writes files and logs; the other
  ranks follow its decision and read the same checkpoint when resuming;
* **stopping**: a stop signal, a non-finite loss or a timed checkpoint on any rank is agreed on by
  all ranks at the same step (one small all-reduce per step on the CPU, every few steps on CUDA).

Started as several processes without ``trainer.strategy=ddp``, a run refuses to start (each process
would train its own copy into the same folder).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run.

    Attributes:
        rank: global rank (0 writes files).
        world: number of processes.
        local_rank: rank on this node (its GPU index).
        enabled: a process group is initialized (``trainer.strategy=ddp``).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


SINGLE = Dist()


def launched_world() -> int:
    """How many processes were started for this run (torchrun's ``WORLD_SIZE``, Slurm's tasks)."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and os.environ.get("SLURM_NTASKS"):
        return int(os.environ["SLURM_NTASKS"])
    return 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(strategy: str, device_type: str) -> Dist:
    """Join (or refuse) a multi-process run.

    Args:
        strategy: ``trainer.strategy`` (``single`` or ``ddp``).
        device_type: ``cuda`` (NCCL) or ``cpu`` (gloo).

    Returns:
        This process's :class:`Dist` (``SINGLE`` for ``single``).

    Raises:
        ConfigError: several processes were started but ``trainer.strategy`` is not ``ddp``.
    """
    world = launched_world()
    if strategy != "ddp":
        if world > 1:
            raise ConfigError(f"{world} processes were started for this run (torchrun or Slurm tasks) but "
                              f"trainer.strategy={strategy}: each would train its own copy of the model into the "
                              "same run folder. Add trainer.strategy=ddp to train one model on all of them, or "
                              "start one process.")
        return SINGLE
    import torch.distributed as tdist

    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and not os.environ.get("MASTER_ADDR"):
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR/PORT from Slurm
    if not os.environ.get("WORLD_SIZE"):  # one process started without torchrun: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if not tdist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        tdist.init_process_group(backend, timeout=dt.timedelta(minutes=30))
    d = Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)
    if not d.main:  # only rank 0 speaks
        logging.getLogger("ticketlab").setLevel(logging.WARNING)
    return d


def device_for(d: Dist, device: torch.device) -> torch.device:
    """The rank's device: ``cuda:<local rank>`` for CUDA runs, the given device otherwise."""
    if d.enabled and device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device(f"cuda:{d.local_rank}")
    return device


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """``model`` in DistributedDataParallel for the current phase (its parameters that require grad),
    or ``model`` itself for a single process. DDP broadcasts rank 0's parameters and buffers first."""
    if not d.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(d: Dist, *values: torch.Tensor) -> list[torch.Tensor]:
    """Element-wise sums over ranks (float64, on the first value's device), each value a 0-dim tensor;
    identity for one process."""
    if not d.enabled or d.world == 1:
        return list(values)
    import torch.distributed as tdist

    device = values[0].device
    flat = torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(()) for v in values])
    tdist.all_reduce(flat)
    return list(flat.unbind())


def agree(d: Dist, flags: list[bool], device: torch.device) -> list[bool]:
    """Per flag: whether any rank raised it (one all-reduce); the flags themselves for one process."""
    if not d.enabled or d.world == 1:
        return flags
    import torch.distributed as tdist

    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled or d.world == 1:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather_batch(d: Dist, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's part of a batch, concatenated in rank order, on this rank's device."""
    import torch.distributed as tdist

    x, y = batch
    parts: list[Any] = [None] * d.world
    tdist.all_gather_object(parts, (x.detach().cpu(), y.detach().cpu()))
    return torch.cat([p[0] for p in parts]).to(x.device), torch.cat([p[1] for p in parts]).to(y.device)


def barrier(d: Dist) -> None:
    """Wait for every rank."""
    if d.enabled and d.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def check_same(d: Dist, model: nn.Module) -> None:
    """Raise if the masks differ between ranks (a fingerprint of every mask, compared over ranks).

    Raises:
        RuntimeError: naming the ranks' fingerprints.
    """
    if not d.enabled or d.world == 1:
        return
    from ticketlab.sparsity.masks import masked_tensors

    device = next(model.parameters()).device
    fp = torch.zeros((), dtype=torch.float64, device=device)
    for i, mt in enumerate(masked_tensors(model)):
        m = mt.mask.current_mask().reshape(-1).double()
        fp += (m * torch.arange(1, m.numel() + 1, device=device, dtype=torch.float64)).sum() * (i + 1)
    import torch.distributed as tdist

    lo, hi = fp.clone(), fp.clone()
    tdist.all_reduce(lo, op=tdist.ReduceOp.MIN)
    tdist.all_reduce(hi, op=tdist.ReduceOp.MAX)
    if float(lo) != float(hi):
        raise RuntimeError(f"the masks differ between ranks (fingerprints from {float(lo)} to {float(hi)})")


def current_rank() -> int:
    """This process's rank in the initialized process group (0 without one)."""
    import torch.distributed as tdist

    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def shutdown() -> None:
    """Leave the process group, if this process joined one (at the end of the process: the stages of a
    multi-stage run and the jobs of a sweep reuse it)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


__all__ = ["Dist", "SINGLE", "agree", "all_sum", "barrier", "broadcast_object", "check_same", "device_for",
           "current_rank", "gather_batch", "init", "launched_world", "shutdown", "wrap"]
