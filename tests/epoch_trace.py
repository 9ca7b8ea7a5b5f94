"""What each forward pass of a real run used: the kept count of every training and evaluation forward."""

from __future__ import annotations

from collections import defaultdict

import torch

from ticketlab.runner.build import Job
from ticketlab.sparsity.masks import masked_tensors


def kept_now(model: torch.nn.Module) -> int:
    """Entries the masks of ``model`` keep right now (the masks a forward pass would use)."""
    return sum(int(mt.mask.current_mask().sum()) for mt in masked_tensors(model))


def trace_kept(job: Job) -> tuple[dict[int, set[int]], list[int]]:
    """Record, through a forward pre-hook, the kept count of every main-phase forward of ``job``'s run.

    Returns ``(trained, evaluated)``, filled while the run trains: ``trained[e]`` is the set of kept
    counts the training forwards of 0-based epoch ``e`` used, ``evaluated[e]`` the count of the first
    evaluation forward after epoch ``e`` (in order).
    """
    trained: dict[int, set[int]] = defaultdict(set)
    evaluated: list[int] = []
    trainer = job.trainer
    seen_eval: set[int] = set()

    def hook(module, args):
        st = trainer.state
        if st.phase != "main":
            return
        if module.training:
            trained[st.epoch].add(kept_now(module))
        elif st.epoch not in seen_eval and st.epoch >= 1:
            seen_eval.add(st.epoch)
            evaluated.append(kept_now(module))

    job.trainer.model.register_forward_pre_hook(hook)
    return trained, evaluated
