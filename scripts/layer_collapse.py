"""Layer collapse without training: the largest compression 10^x at which no prunable layer is empty.

    python scripts/layer_collapse.py                                  # vgg16-BN, CIFAR-10, six methods
    python scripts/layer_collapse.py collapse.methods=[random,synflow] model=vgg11

For each method and x on the grid 0, step, ..., max_x (density 10^-x), prunes the initialized
network (no training) and records whether some layer keeps no weight. One-shot score methods
(iterations = 1) are scored once and their scores re-allocated at every x; iterative SynFlow and
PHEW are re-run per x, with a bisection over the grid that assumes collapse is monotone in x (it
checks both neighbours of the boundary it finds). Prints a table and writes ``collapse.json`` in the
Hydra run folder. Compare: Tanaka et al. 2020, Fig. 3 (VGG-16, CIFAR-100 in the reference
benchmark: Random 3.25, Magnitude 2.75, SNIP 3.5, GraSP 3.5, SynFlow >= 6).
"""

from __future__ import annotations

import tempfile
import time

import hydra
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ticketlab.masks import sparsity_report
from ticketlab.pruners.pai import ScorePruner, allocate
from ticketlab.results import atomic_write_json
from ticketlab.run import hydra_run_dir, setup


def job_for(method: str, x: float):
    """A pruned (untrained) job for ``method`` at compression 10^x."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("pruner", "collapse"))]
    overrides += [f"pruner={method}", f"pruner.sparsity={1 - 10 ** (-x)}"]
    return setup(compose(config_name="layer_collapse", overrides=overrides), run_dir=tempfile.mkdtemp(),
                 extra_top_level=("collapse",))


def empty_layers(model) -> list[str]:
    """Masked layers that keep no weight."""
    return [name for name, v in sparsity_report(model).layers.items() if v["kept"] == 0]


def collapse_oneshot(method: str, grid: list[float]) -> dict[float, list[str]]:
    """Score once, allocate at every x."""
    job = job_for(method, grid[1])
    pruner: ScorePruner = job.trainer.pruner
    with torch.no_grad():
        for fm in pruner.masks:
            fm.mask.fill_(1.0)
    weights = [layer.parametrizations.weight.original for _, layer in pruner.layers]  # prune_bias is off here
    pruner._set_bn_mode(job.trainer.model)
    scores = pruner.score(job.trainer.model, weights, job.ctx)
    names = [name for name, _ in pruner.layers]
    out = {}
    for x in grid:
        masks = allocate(scores, 10 ** (-x), pruner.cfg.scope)
        out[x] = [n for n, m in zip(names, masks, strict=True) if int(m.sum()) == 0]
    return out


def collapse_bisect(method: str, grid: list[float]) -> dict[float, list[str]]:
    """Re-run the method per x; bisection for the first collapsing x."""
    seen: dict[float, list[str]] = {}

    def check(i: int) -> bool:
        x = grid[i]
        if x not in seen:
            seen[x] = empty_layers(job_for(method, x).trainer.model)
        return bool(seen[x])

    lo, hi = 0, len(grid) - 1
    if not check(hi):
        return seen
    while hi - lo > 1:  # invariant: grid[lo] does not collapse (x = 0 never does), grid[hi] does
        mid = (lo + hi) // 2
        if check(mid):
            hi = mid
        else:
            lo = mid
    return seen


@hydra.main(version_base="1.3", config_path="../conf", config_name="layer_collapse")
def main(cfg: DictConfig) -> None:
    """Run the layer-collapse scan described in the module docstring."""
    steps = round(cfg.collapse.max_x / cfg.collapse.step)
    grid = [round(i * cfg.collapse.step, 6) for i in range(steps + 1)]
    results = {}
    for method in cfg.collapse.methods:
        t = time.perf_counter()
        iterative = method in ("synflow", "phew")
        per_x = collapse_bisect(method, grid) if iterative else collapse_oneshot(method, grid)
        ok = [x for x in sorted(per_x) if not per_x[x]]
        bad = [x for x in sorted(per_x) if per_x[x]]
        largest = max((x for x in ok if not bad or x < min(bad)), default=None)
        results[method] = {"largest_x_without_empty_layer": largest,
                           "first_collapse_x": min(bad) if bad else None,
                           "empty_at_first_collapse": per_x[min(bad)] if bad else [],
                           "seconds": time.perf_counter() - t}
        r = results[method]
        print(f"{method:10s} largest x without an empty layer: {largest}  first collapse: {r['first_collapse_x']} "
              f"{r['empty_at_first_collapse'][:3]}  ({r['seconds']:.1f} s)", flush=True)
    atomic_write_json(hydra_run_dir() / "collapse.json", {"model": cfg.model.name, "dataset": cfg.dataset.name,
                                                          "grid_step": cfg.collapse.step, "results": results})


if __name__ == "__main__":
    main()
