"""List the runs under an output folder: readable name, status, method, density, test accuracy and folder.

``ticketlab runs [KEY=VALUE ...]`` (see :mod:`ticketlab.commands`) prints one line per run folder of
``<output_dir>/runs/`` (``$TICKETLAB_OUTPUTS``, else ``outputs``), newest first, so that a user never greps
folder hashes. ``KEY=VALUE`` filters on the run's config (``pruner.name=snip``, ``model.name=conv6``,
``seed=0``) or on its summary (``status=failed``); several filters must all hold. An IMP run shows its last
finished level's numbers.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ticketlab.errors import ConfigError
from ticketlab.files import read_json

#: The columns of the listing, in order.
COLUMNS = ("name", "status", "method", "model", "dataset", "sparsity", "density", "test_acc", "updated", "folder")


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}
    except Exception:  # noqa: BLE001 -- a damaged record still lists the run, with what else is known
        return {}


def _select(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _status(run_dir: Path, summary: dict[str, Any] | None) -> str:
    if isinstance(summary, dict) and summary.get("status"):
        return str(summary["status"])
    if (run_dir / "summary.json").exists() and summary is None:
        return "damaged summary.json"  # truncated or not JSON
    record = read_json(run_dir / "run.json")
    if isinstance(record, dict) and record.get("attempts"):
        return "running or killed"  # an attempt began and wrote no summary yet
    return "no record"


def run_rows(root: Path) -> list[dict[str, Any]]:
    """One row per run folder under ``root`` (a ``runs/`` folder), newest first.

    Returns:
        Dicts with :data:`COLUMNS` plus ``config`` (the run's composed config) and ``summary``.
    """
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        summary = read_json(run_dir / "summary.json")
        summary = summary if isinstance(summary, dict) else None
        numbers = summary or {}
        levels = sorted(run_dir.glob("level_*/summary.json"))
        if levels and isinstance(read_json(levels[-1]), dict):
            numbers = {**read_json(levels[-1]), "status": (summary or {}).get("status", "running or killed")}
        cfg = _config(run_dir)
        name, _, digest = run_dir.name.rpartition("-")
        stamp = max((p.stat().st_mtime for p in run_dir.iterdir()), default=run_dir.stat().st_mtime)
        rows.append({
            "name": name or run_dir.name, "status": _status(run_dir, summary) if not levels else numbers["status"],
            "method": numbers.get("pruner") or _select(cfg, "pruner.name"),
            "model": numbers.get("model") or _select(cfg, "model.name"),
            "dataset": numbers.get("dataset") or _select(cfg, "dataset.name"),
            "sparsity": numbers.get("sparsity"), "density": numbers.get("density"),
            "test_acc": numbers.get("test_acc"),
            "updated": dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M"),
            "folder": str(run_dir), "config": cfg, "summary": summary or {}, "_mtime": stamp,
        })
    return sorted(rows, key=lambda r: r["_mtime"], reverse=True)


def parse_filters(items: list[str]) -> dict[str, str]:
    """``["pruner.name=snip", ...]`` as ``{key: value}``.

    Raises:
        ConfigError: an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"filter {item!r} is not KEY=VALUE (e.g. pruner.name=snip or status=failed).")
        out[key] = value
    return out


def _matches(row: dict[str, Any], filters: dict[str, str]) -> bool:
    for key, want in filters.items():
        have = _select(row["config"], key)
        if have is None:
            have = row["summary"].get(key, row.get(key))
        if have is None or str(have).lower() != want.lower():
            if not (isinstance(have, int | float) and _same_number(have, want)):
                return False
    return True


def _same_number(have: float, want: str) -> bool:
    try:
        return float(want) == float(have)
    except ValueError:
        return False


def list_runs(root: Path, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The rows of :func:`run_rows` that every filter matches (config first, then summary fields)."""
    return [r for r in run_rows(root) if _matches(r, filters or {})]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table of :data:`COLUMNS` (numbers with 4 decimals, ``-`` when unknown)."""
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    table = [list(COLUMNS)] + [[cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=False)) + "  " + line[-1]
                     for line in table)


__all__ = ["COLUMNS", "format_table", "list_runs", "parse_filters", "run_rows"]
