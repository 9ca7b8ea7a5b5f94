"""What a checkpoint holds beyond the model and the method: its format and every random number generator.

:meth:`ticketlab.training.loop.Trainer.state_dict` assembles ``last.ckpt`` from these pieces; on the CPU
with a fixed thread count a run continued from it is bit-for-bit the uninterrupted run.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

#: Bumped whenever the checkpoint's layout changes; a checkpoint of another format is refused.
CHECKPOINT_FORMAT = 2


def rng_state(data_generator: torch.Generator | None) -> dict[str, Any]:
    """The states of torch's CPU and CUDA generators, the data generator, Python's and NumPy's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state() if data_generator is not None else None,
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }


def _numpy_state() -> tuple:
    """NumPy's global RNG state with its key array as a tensor, so that the checkpoint loads with
    ``torch.load(weights_only=True)`` (a NumPy array would need NumPy's unpickler)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def restore_rng(state: dict[str, Any], data_generator: torch.Generator | None) -> None:
    """Inverse of :func:`rng_state` (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state["data"] is not None and data_generator is not None:
        data_generator.set_state(state["data"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def check_fits(state: dict[str, Any], phase_names: list[str]) -> None:
    """Refuse a checkpoint of another format, or one taken in a phase this run does not have.

    Raises:
        ValueError: naming the format or the phase.
    """
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    idx = state["phase_index"]
    if idx >= len(phase_names) or phase_names[idx] != state["phase"]:
        raise ValueError(f"checkpoint is in phase {state['phase']!r}, which this run does not have "
                         f"({', '.join(phase_names)})")


__all__ = ["CHECKPOINT_FORMAT", "check_fits", "restore_rng", "rng_state"]
