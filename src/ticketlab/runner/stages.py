"""Multi-stage runs: a run made of several runs in order (IMP's levels).

A method whose run is a sequence of trainings registers a *stage plan* here
(:func:`register_stages`): a function of the validated config returning the stages in order.
:func:`ticketlab.runner.run.run` asks :func:`plan` for every run; a run with a plan executes each stage
as a run of its own:

* its folder is ``<run>/<stage name>/``, its identity the run's plus the stage name
  (:meth:`ticketlab.runner.identity.RunIdentity.child`), with its own ``run.json``, checkpoint, summary
  and W&B run (grouped under the parent run);
* a completed stage is skipped, so the same command continues an interrupted multi-stage run in
  the stage it was in (and that stage from its checkpoint);
* the method sees its stage through :attr:`ticketlab.pruners.PruneContext.stage`
  (:class:`StageContext`: index and name, and :meth:`StageContext.save`/:meth:`StageContext.load`
  for what one stage hands to the next, as ``<key>.pt`` in the stage's folder or, shared by every
  stage, in the parent folder);
* the parent folder gets ``run.json`` and a ``summary.json`` listing every stage, whose top-level
  numbers are the last stage's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ticketlab.errors import ConfigError
from ticketlab.files import atomic_torch_save, atomic_write_json, read_json
from ticketlab.registry import Registry
from ticketlab.runner.identity import RunIdentity


@dataclass(frozen=True)
class Stage:
    """One stage of a multi-stage run.

    Attributes:
        index: position (0 = first).
        name: folder and identity suffix, e.g. ``level_03``.
    """

    index: int
    name: str


@dataclass(frozen=True)
class StageContext:
    """The stage a method runs in, and the files its stages hand on (:class:`ticketlab.pruners.base.StageFiles`).

    Attributes:
        index: the stage's position (IMP: the level).
        name: the stage's name.
        parent_dir: the multi-stage run's folder (files shared by the stages, e.g. IMP's ``rewind.pt``).
        previous_dir: the previous stage's folder (``None`` for the first stage).
        stage_dir: this stage's folder (``None``: this stage keeps nothing for the next).
    """

    index: int
    name: str
    parent_dir: Path
    previous_dir: Path | None
    stage_dir: Path | None = None

    def save(self, key: str, obj: dict[str, torch.Tensor], shared: bool = False) -> None:
        """Write ``obj`` atomically as ``<key>.pt``: in the parent folder with ``shared``, else in this stage's."""
        folder = self.parent_dir if shared else self.stage_dir
        if folder is not None:
            atomic_torch_save(Path(folder) / f"{key}.pt", obj)

    def locate(self, key: str, shared: bool = False) -> Path:
        """``<key>.pt`` of the parent folder (``shared``) or of the previous stage.

        Raises:
            ValueError: a key of the previous stage asked for in the first stage.
        """
        if shared:
            return Path(self.parent_dir) / f"{key}.pt"
        if self.previous_dir is None:
            raise ValueError(f"stage {self.name} is the first: there is no previous stage's {key}")
        return Path(self.previous_dir) / f"{key}.pt"

    def load(self, key: str, shared: bool = False) -> dict[str, torch.Tensor]:
        """Read :meth:`locate`'s file (tensors only: ``weights_only=True``), on the CPU."""
        return torch.load(self.locate(key, shared), weights_only=True, map_location="cpu")


StagePlan = Callable[[Any], list[Stage]]
STAGE_PLANS: Registry[StagePlan] = Registry("stage plan")


def register_stages(pruner: str) -> Callable[[StagePlan], StagePlan]:
    """Decorator registering the stage plan of ``pruner=<pruner>``."""
    return STAGE_PLANS.register(pruner)


def plan(rc: Any) -> list[Stage] | None:
    """The stages of the run ``rc`` (a :class:`ticketlab.runner.validate.RunConfig`), or ``None`` for a single run.

    Raises:
        ConfigError: the plan cannot be carried out with these settings.
    """
    name = rc.pruner.name
    return STAGE_PLANS.get(name)(rc) if name in STAGE_PLANS else None


@register_stages("imp")
def imp_levels(rc: Any) -> list[Stage]:
    """IMP: level 0 (dense) then ``pruner.n_levels`` pruning levels (:mod:`ticketlab.pruners.imp`).

    Raises:
        ConfigError: ``trainer.epochs=0`` (every level trains).
    """
    if rc.trainer.epochs < 1:
        raise ConfigError(f"pruner=imp trains every level, so trainer.epochs must be >= 1 (got {rc.trainer.epochs}).")
    return [Stage(level, f"level_{level:02d}") for level in range(rc.pruner.n_levels + 1)]


STAGE_SUMMARY_KEYS = ("status", "test_acc", "best_test_acc", "test_acc_at_best_val", "sparsity", "density",
                      "params_remaining", "wall_s", "effective_sparsity", "run_dir")


def run_stages(cfg: Any, ident: RunIdentity, run_dir: Path, stages: list[Stage],
               run_one: Callable[[Any, Path, RunIdentity, StageContext], dict[str, Any]],
               record: Callable[[Path, RunIdentity], None]) -> dict[str, Any]:
    """Run ``stages`` in order under ``run_dir`` (each through ``run_one``), then write the parent summary.

    Args:
        cfg: the composed config.
        ident: the multi-stage run's identity.
        run_dir: its folder.
        stages: from :func:`plan`.
        run_one: ``run_one(cfg, stage_dir, stage_identity, stage_context, before_write) -> summary``;
            skips a completed stage itself, and calls ``before_write()`` once the stage is validated,
            before it writes anything.
        record: ``record(run_dir, ident)`` writes the parent's ``run.json`` (called through
            ``before_write``, so that a stage rejected as bad input leaves no parent folder behind).

    Returns:
        The parent summary: ``stages`` (one entry per stage run so far) and the last stage's numbers.
        It stops at the first stage that does not complete (its status is the parent's).

    Raises:
        Whatever ``run_one`` raises (the parent summary is written first).
    """
    previous: Path | None = None
    done: list[tuple[Stage, dict[str, Any]]] = []
    current: Stage | None = None
    recorded = []

    def before_write() -> None:
        if not recorded:
            record(run_dir, ident)
            recorded.append(True)

    try:
        for stage in stages:
            current = stage
            stage_dir = run_dir / stage.name
            try:
                summary = run_one(cfg, stage_dir, ident.child(stage.name),
                                  StageContext(stage.index, stage.name, run_dir, previous, stage_dir), before_write)
            except ConfigError:
                if not recorded and run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()  # rejected before anything was written: leave no folder behind
                current = None
                raise
            done.append((stage, summary))
            current = None
            previous = stage_dir
            if summary.get("status") != "completed":
                break
    finally:
        if current is not None:  # the stage raised: its own summary.json says how it ended
            last = read_json(run_dir / current.name / "summary.json")
            if isinstance(last, dict):
                done.append((current, last))
        parent = _parent_summary(ident, run_dir, stages, done)
        if parent is not None:
            atomic_write_json(run_dir / "summary.json", parent)
    return parent


def _parent_summary(ident: RunIdentity, run_dir: Path, stages: list[Stage],
                    done: list[tuple[Stage, dict[str, Any]]]) -> dict[str, Any] | None:
    if not done:
        return None
    last = done[-1][1]
    completed = sum(1 for _, s in done if s.get("status") == "completed")
    status = last.get("status")
    if status == "completed" and completed < len(stages):
        status = "failed"
    parent = {**last, "status": status, "run_dir": str(run_dir), "run_id": ident.digest, "run_name": ident.name,
              "stages_total": len(stages), "stages_completed": completed,
              "wall_s": sum(s.get("wall_s") or 0.0 for _, s in done),
              "stages": [{"stage": st.name, **{k: s.get(k) for k in STAGE_SUMMARY_KEYS}} for st, s in done]}
    parent.pop("skipped", None)
    return parent


__all__ = ["STAGE_PLANS", "Stage", "StageContext", "plan", "register_stages", "run_stages"]
