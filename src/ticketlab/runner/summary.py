"""A run's ``summary.json``: a typed record of how it ended and what it found.

:class:`Summary` lists every key with its meaning; :func:`summarize` fills it from the config, the
model (measured masks) and the metric history. The runner adds what happened beyond that
(``run_id``, ``run_name``, ``attempts``, ``warnings``, the method's facts, the mask-structure
metrics, and for an unsuccessful run ``diverged``, ``stopped`` or ``error``) as extra keys.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketlab.errors import NonFiniteError
from ticketlab.runner.validate import RunConfig
from ticketlab.sparsity.masks import masked_tensors
from ticketlab.sparsity.report import sparsity_report
from ticketlab.sparsity.selection import density_of
from ticketlab.sparsity.structure import mask_structure

log = logging.getLogger(__name__)

#: Keys present only when the run has a validation split.
VALIDATION_KEYS = ("best_val_acc", "best_val_epoch", "test_acc_at_best_val", "val_acc")


@dataclass
class Summary:
    """What ``summary.json`` holds (accuracies in [0, 1], counts of prunable weights: Conv/Linear weights).

    Attributes:
        status: ``completed``, ``diverged``, ``preempted``, ``interrupted`` or ``failed``.
        test_acc: test accuracy after the last epoch.
        best_test_acc: the best epoch's test accuracy (for reference only: it selects on the test set).
        train_acc: training accuracy of the last epoch.
        best_val_acc, best_val_epoch, test_acc_at_best_val, val_acc: with a validation split only:
            model selection on validation, never on test.
        sparsity, density: measured from the masks over the prunable weights (``None``: non-finite scores).
        target_sparsity, target_density: the sparsity the run set out to reach and ``1 -`` it:
            ``pruner.sparsity``, except an IMP level's ``1 - (1 - rate)^level`` and a mask file's own.
        params_total, params_remaining: prunable weights, all and kept.
        params_all: every parameter of the model, unmasked.
        compression_ratio: ``params_total / params_remaining``.
        epochs: completed epochs of the main training.
        wall_s: seconds over every attempt.
        model, dataset, pruner, init: the options' names.
        seed: the run's seed.
        layer_densities: ``{layer: density}`` measured per prunable layer.
        run_dir: the run folder.
        target_sparsity: what the method set out to reach (:attr:`ticketlab.pruners.base.Pruner.target_sparsity`;
            default ``pruner.sparsity``).
        extra: further keys (see the module docstring), written after these.
    """

    status: str
    test_acc: float | None
    best_test_acc: float | None
    train_acc: float | None
    best_val_acc: float | None = None
    best_val_epoch: int | None = None
    test_acc_at_best_val: float | None = None
    val_acc: float | None = None
    sparsity: float | None = None
    density: float | None = None
    target_sparsity: float = 0.0
    target_density: float = 1.0
    params_total: int | None = None
    params_remaining: int | None = None
    params_all: int = 0
    compression_ratio: float | None = None
    epochs: int = 0
    wall_s: float = 0.0
    model: str = ""
    dataset: str = ""
    pruner: str = ""
    init: str = ""
    seed: int = 0
    layer_densities: dict[str, float] = field(default_factory=dict)
    run_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in field order, without the validation keys of a run without a validation split."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if self.best_val_epoch is None:  # no validation split
            for key in VALIDATION_KEYS:
                out.pop(key)
        return {**out, **self.extra}


def _mask_numbers(model: torch.nn.Module) -> dict[str, Any]:
    """Measured sparsity numbers; ``None`` values when the masks cannot be computed (NaN scores)."""
    try:
        rep = sparsity_report(model)
    except NonFiniteError:
        return {"sparsity": None, "density": None, "params_total": None, "params_remaining": None,
                "compression_ratio": None, "layer_densities": {}}
    return {"sparsity": rep.sparsity, "density": rep.density, "params_total": rep.total,
            "params_remaining": rep.kept, "compression_ratio": rep.total / rep.kept if rep.kept else float("inf"),
            "layer_densities": {name: v["density"] for name, v in rep.layers.items()}}


def _validation(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The validation keys from the history (the first epoch reaching the best validation accuracy)."""
    if not history or "val_acc" not in history[-1]:
        return {}
    best = max(history, key=lambda r: r["val_acc"])
    return {"best_val_acc": best["val_acc"], "best_val_epoch": best["epoch"],
            "test_acc_at_best_val": best["test_acc"], "val_acc": history[-1]["val_acc"]}


def summarize(rc: RunConfig, model: torch.nn.Module, history: list[dict[str, Any]], status: str,
              wall_s: float, run_dir: Path, extra: dict[str, Any], target_sparsity: float | None = None) -> Summary:
    """Fill a :class:`Summary` from the config, the model's masks and the metric history.

    Args:
        rc: the run's config.
        model: the trained, masked model.
        history: one metric row per main-phase epoch.
        status: how the run ended.
        wall_s: seconds over every attempt.
        run_dir: the run folder.
        extra: keys written after the record's own.
    """
    finite = [r["test_acc"] for r in history if r.get("test_acc") is not None and not math.isnan(r["test_acc"])]
    params_all = sum(mt.original.numel() for mt in masked_tensors(model)) + \
        sum(p.numel() for n, p in model.named_parameters() if ".parametrizations." not in n)
    return Summary(
        status=status,
        test_acc=history[-1]["test_acc"] if history else None,
        best_test_acc=max(finite) if finite else None,
        train_acc=history[-1]["train_acc"] if history else None,
        **_validation(history),
        **_mask_numbers(model),
        target_sparsity=rc.pruner.sparsity if target_sparsity is None else target_sparsity,
        target_density=rc.pruner.density if target_sparsity is None else density_of(target_sparsity),
        params_all=params_all,
        epochs=history[-1]["epoch"] if history else 0,
        wall_s=wall_s,
        model=rc.model.name, dataset=rc.dataset.name, pruner=rc.pruner.name, init=rc.init.name, seed=rc.seed,
        run_dir=str(run_dir),
        extra=extra,
    )


def structure_summary(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Mask-structure metrics (:mod:`ticketlab.sparsity.structure`) for the summary; never raises."""
    try:
        st = mask_structure(model, input_shape)
    except Exception as e:  # a metric must never cost the run its results
        log.warning("mask-structure metrics failed (%s: %s)", type(e).__name__, e)
        return {}
    return {"effective_sparsity": st.effective_sparsity, "effective_density": st.effective_density,
            "disconnected_fraction": st.disconnected_fraction, "log_paths": st.log_paths, "structure": st.layers}


__all__ = ["Summary", "VALIDATION_KEYS", "structure_summary", "summarize"]
