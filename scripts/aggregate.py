"""Aggregate run folders into a table: mean ± std over seeds of each configuration.

    python scripts/aggregate.py outputs/sweeps/sparsity+seed-1a2b3c4d
    python scripts/aggregate.py outputs/exp3 --metric test_acc --csv table.csv

Finds every ``summary.json`` below the given folders. Runs whose Hydra overrides
(``.hydra/overrides.yaml``) differ only in ``seed`` form one group; each group becomes one row with
the number of runs, the mean ± sample std of the chosen metrics, the measured sparsity and
density, and the mean wall time per run. Reads only local result files (not W&B).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from pathlib import Path

import yaml

DEFAULT_METRICS = ["test_acc", "test_acc_at_best_val", "best_val_acc"]


def summaries_below(root: Path) -> list[Path]:
    """``summary.json`` files below ``root``, following a sweep folder's links to its runs, each run once;
    earlier attempts (``attempts/``) and moved-aside runs (``*.moved-*``) are not runs of their own."""
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "attempts" and ".moved-" not in d)
        if "summary.json" in files:
            path = Path(folder) / "summary.json"
            found.setdefault(path.resolve(), path)
    return sorted(found.values())


def load_runs(roots: list[Path]) -> list[dict]:
    """Every run below ``roots``: its summary plus its overrides (``[]`` when absent)."""
    runs = []
    for root in roots:
        for summary in summaries_below(root):
            overrides_file = summary.parent / ".hydra" / "overrides.yaml"
            overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
            runs.append({"dir": summary.parent, "summary": json.loads(summary.read_text()),
                         "overrides": overrides or []})
    return runs


def group_key(overrides: list[str], drop: tuple[str, ...]) -> str:
    """The overrides without the ones naming a key in ``drop`` (e.g. ``seed``), sorted, space-joined."""
    return " ".join(sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in drop))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally save) the aggregated table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders searched for summary.json")
    parser.add_argument("--metric", action="append", help=f"summary keys to aggregate (default {DEFAULT_METRICS})")
    parser.add_argument("--group-out", action="append", default=["seed"],
                        help="override keys that do not define a group (default: seed)")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    metrics = args.metric or DEFAULT_METRICS
    runs = [r for r in load_runs(args.roots) if r["summary"].get("status") == "completed"]
    if not runs:
        parser.error(f"no completed run (summary.json) below {', '.join(map(str, args.roots))}")
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(group_key(r["overrides"], tuple(args.group_out)), []).append(r)
    rows = []
    for key, members in groups.items():
        s0 = members[0]["summary"]
        row = {"group": key, "pruner": s0["pruner"], "init": s0["init"], "target_sparsity": s0["target_sparsity"],
               "n": len(members)}
        for m in metrics:
            vals = [r["summary"][m] for r in members if r["summary"].get(m) is not None]
            if vals:
                row[f"{m}_mean"], row[f"{m}_std"] = mean_std(vals)
        row["sparsity"] = statistics.mean(r["summary"]["sparsity"] for r in members)
        row["wall_s_mean"] = statistics.mean(r["summary"]["wall_s"] for r in members)
        rows.append(row)
    rows.sort(key=lambda r: (r["target_sparsity"], r["group"]))
    header = ["n"] + [m for m in metrics if f"{m}_mean" in rows[0]] + ["sparsity", "density", "wall_s/run", "group"]
    print(" | ".join(header))
    for r in rows:
        cells = [str(r["n"])] + [f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f}" for m in metrics if f"{m}_mean" in r]
        cells += [f"{r['sparsity']:.4f}", f"{1 - r['sparsity']:.4f}", f"{r['wall_s_mean']:.1f}", r["group"]]
        print(" | ".join(cells))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
