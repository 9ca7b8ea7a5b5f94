"""Running on a cluster: Slurm jobs through submitit, and parallel local jobs on several GPUs.

* **CPU cores per Slurm job** (``${tl.cpus_per_task:...}`` in ``conf/hydra/launcher/slurm.yaml``):
  ``trainer.threads`` (1 when unset) plus the data-loading workers of the folder datasets, which
  the in-memory sets do not use. Inside a Slurm job, ``trainer.threads=0`` means the cores Slurm
  gave the job (``SLURM_CPUS_PER_TASK``), not every core of the node.
* **GPU per local job**: in a sweep with a parallel local launcher, ``trainer.device=auto`` puts
  job ``k`` on visible GPU ``k mod (number of GPUs)`` (:func:`local_gpu`), so ``n_jobs = N x GPUs``
  puts N jobs on each GPU. Which GPU a run used never changes its identity.
* **Preemption and time limits under submitit.** Slurm sends SIGTERM to a job it preempts or
  requeues (``scontrol requeue``) and, with submitit, SIGUSR2 ``signal_delay_s`` seconds before
  the time limit. TicketLab's handler (:mod:`ticketlab.signals`) finishes the step and writes the
  checkpoint and summary; then :func:`hand_over` lets the job end the way that brings it back:
  for SIGUSR2 it calls submitit's own handler, which resubmits the same call and requeues the job
  (``max_num_timeout`` times at most); for SIGTERM it leaves at once, without a result, so that the
  job Slurm requeues runs the same task again and continues from the checkpoint.
* **Polling without accounting.** submitit polls ``sacct``; where Slurm accounting is off, every poll
  fails, and its warning is shown once per sweep (:func:`quiet_sacct_errors`), not at every poll.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

from ticketlab.errors import Preempted

log = logging.getLogger(__name__)

def cpus_per_task(threads: int, workers: int, dataset: str) -> int:
    """CPU cores a Slurm job asks for (``${tl.cpus_per_task:}``): ``max(threads, 1)`` plus the loader
    workers of a dataset that is not held in memory (its registry trait ``in_memory``)."""
    from ticketlab.data import DATASETS

    in_memory = str(dataset) in DATASETS and DATASETS.trait(str(dataset), "in_memory", False)
    return max(int(threads), 1) + (0 if in_memory else max(int(workers), 0))



def slurm_cpus() -> int | None:
    """The cores Slurm gave this job (``SLURM_CPUS_PER_TASK``), or ``None`` outside Slurm."""
    value = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(value) if value and value.isdigit() else None


def local_gpu(device_count: int) -> int | None:
    """The GPU index for this job of a parallel local sweep (job number mod GPUs), else ``None``.

    Only in a ``-m`` sweep, with more than one visible GPU, and outside Slurm (whose jobs see only
    their own GPUs) and outside ``torchrun`` (whose ranks use ``LOCAL_RANK``).
    """
    if device_count <= 1 or os.environ.get("SLURM_JOB_ID") or os.environ.get("LOCAL_RANK"):
        return None
    from hydra.core.hydra_config import HydraConfig

    from ticketlab.sweeps.sweep import in_multirun

    return int(HydraConfig.get().job.num) % device_count if in_multirun() else None


class _OnceSacctError(logging.Filter):
    """Lets submitit's first "Bypassing sacct error" warning through, with what it means, and drops repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in str(record.msg):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg = (f"{record.msg} (shown once: sacct fails where Slurm accounting is off, e.g. on the cluster of "
                      "scripts/slurm_local.sh; submitit then tells a finished job by its result file, and the sweep "
                      "report at the end is exact)")
        return True


def quiet_sacct_errors() -> None:
    """Show submitit's failed-``sacct`` warning once per sweep instead of at every poll (it polls every few
    seconds to minutes, and a cluster without accounting fails every time). Idempotent."""
    logger = logging.getLogger("submitit")
    for f in logger.filters:
        if isinstance(f, _OnceSacctError):
            f.seen = False
            return
    logger.addFilter(_OnceSacctError())


def slurm_launcher_problem(launcher: Any) -> str | None:
    """Why ``hydra/launcher=slurm`` cannot submit from here, before submitit tries; ``None`` when it can.

    Checks that Slurm's commands are on ``PATH`` (submitit otherwise fails with ``Could not detect "srun"``)
    and, when ``gpus_per_node`` asks for GPUs, that ``sinfo`` lists a GPU generic resource on some node of
    the partition (``sbatch`` otherwise refuses every job with ``Invalid generic resource (gres)
    specification``). A ``sinfo`` that fails or times out is not taken as a problem.

    Args:
        launcher: ``hydra.launcher`` (its ``_target_``, ``gpus_per_node``, ``partition``).
    """
    if "SlurmLauncher" not in str(launcher.get("_target_", "")):
        return None
    missing = [c for c in ("srun", "sbatch") if shutil.which(c) is None]
    if missing:
        return (f"hydra/launcher=slurm needs Slurm, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                "not on PATH here: Slurm is not installed on this machine (or not on its PATH). Launch from a "
                "cluster's login node, or run the sweep on this machine with hydra/launcher=local (parallel jobs) "
                "or without a launcher override (one job after another).")
    gpus = launcher.get("gpus_per_node")
    if not gpus:
        return None
    cmd = ["sinfo", "-h", "-o", "%G", *(["-p", str(launcher.partition)] if launcher.get("partition") else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    gres = sorted({g.strip() for g in out.stdout.split() if g.strip()})
    if not any("gpu" in g for g in gres):
        return (f"hydra.launcher.gpus_per_node={gpus} asks for GPUs, but no node of this Slurm cluster"
                f"{' (partition ' + str(launcher.partition) + ')' if launcher.get('partition') else ''} offers a "
                f"GPU resource (sinfo lists: {', '.join(gres) or 'nothing'}), so sbatch would refuse every job "
                "(\"Invalid generic resource (gres) specification\"). hydra.launcher.gpus_per_node=null runs the "
                "jobs on CPUs; or pick a partition with GPUs (hydra.launcher.partition=...).")
    return None


def under_submitit() -> bool:
    """Whether this process is a submitit Slurm job."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def hand_over(stop: Preempted) -> None:
    """After a stop signal was turned into a checkpoint: end a submitit job so that it comes back.

    Returns (doing nothing) outside submitit. Under submitit it does not return: SIGUSR2 goes to
    submitit's handler (resubmit and requeue, then exit); any other signal exits at once, without a
    submitit result, since Slurm is requeueing (or cancelling) the job itself.
    """
    if not under_submitit():
        return
    logging.shutdown()  # flush the logs: the process ends here
    sys.stdout.flush()
    sys.stderr.flush()
    handler = signal.getsignal(stop.signum)
    if stop.signum == signal.SIGUSR2 and callable(handler):
        handler(stop.signum, None)  # submitit: checkpoint, scontrol requeue, sys.exit
    os._exit(stop.exit_code)


__all__ = ["cpus_per_task", "hand_over", "local_gpu", "slurm_cpus", "under_submitit"]
