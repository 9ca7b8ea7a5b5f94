"""Pruning methods. Each module registers itself (config schema + :class:`Pruner`) on import;
this package imports all of them, so adding a method is adding a module and a YAML file."""

import importlib
import pkgutil

from ticketlab.pruners.base import (
    PRUNERS,
    MainPhase,
    PruneContext,
    Pruner,
    PrunerConfig,
    build_pruner,
    register_pruner,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "phases"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["PRUNERS", "MainPhase", "PruneContext", "Pruner", "PrunerConfig", "build_pruner", "register_pruner"]
