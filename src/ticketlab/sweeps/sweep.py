"""Sweeps (``python train.py -m ...``) that never lose work.

* **Each job is isolated.** The task (:mod:`ticketlab.cli`) never lets a bad value or a crash
  escape into Hydra's launcher: it records the job's outcome and returns, so the other jobs run.
  Values of the wrong *type* and misspelled keys are still rejected by Hydra for the whole sweep,
  before any job starts.
* **One folder per sweep, the same on every launch.** ``<paths.output_dir>/sweeps/<name>/``, where
  the name is the swept keys plus a hash of the sweep's overrides (:func:`sweep_name`), holds
  Hydra's ``multirun.yaml``, one record per job (``jobs/<num>.json``), a link per job to its run
  folder (``<num> -> ../../runs/<run>``) and the report (``report.md``, ``report.json``).
  The runs themselves live in ``<paths.output_dir>/runs/`` under their identity, so re-launching
  the same sweep (or another one sharing runs) skips every completed run and runs only the
  missing and failed ones.
* **One line per job at the end**: completed, skipped (already done), or failed with its one-line
  reason; the process exits non-zero if any job did not complete (:data:`EXIT`). A sweep over
  ``seed`` also gets the test accuracy's mean ± std over seeds per setting, with its t interval
  (:func:`over_seeds`), in the printed report, ``report.md`` and ``report.json``.

A job that a signal stops (SIGTERM from a scheduler, Ctrl-C) stops the whole sweep after writing
its checkpoint; the report so far is printed and the same command continues it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ticketlab.files import atomic_write_bytes, atomic_write_json, folder_problem, read_json

log = logging.getLogger(__name__)

#: The exit code of the last sweep (``None`` until a sweep ends); :mod:`ticketlab.cli` exits with it.
EXIT: dict[str, int | None] = {"sweep": None}
_CURRENT: dict[str, Any] = {"name": None, "dir": None, "expected": None}

OK_STATUSES = ("completed", "skipped")


def sweep_name(overrides: list[str], sweeper_params: dict[str, Any] | None = None) -> str:
    """``<swept keys>-<hash of the overrides>``: the same sweep command gives the same name.

    Args:
        overrides: the sweep's command-line overrides (e.g. ``["pruner.sparsity=0.3,0.5", "seed=0,1"]``).
        sweeper_params: ``hydra.sweeper.params`` (sweeps declared in a config file).
    """
    params = [f"{k}={v}" for k, v in (sweeper_params or {}).items()]
    everything = sorted([*overrides, *params])
    digest = hashlib.sha256("\n".join(everything).encode()).hexdigest()[:8]
    swept = []
    for o in everything:
        key, _, value = o.partition("=")
        if "," in value or value.startswith(("range(", "choice(", "glob(", "interval(")):
            swept.append(key.lstrip("+~").split(".")[-1] if "." in key else key.lstrip("+~"))
    readable = re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(swept))[:60] or "sweep"
    return f"{readable}-{digest}"


def in_multirun() -> bool:
    """Whether this process is running a job of a Hydra ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name_resolver() -> str:
    """``${tl.sweep_name:}``: the name of the sweep being launched (``sweep`` before one starts)."""
    return _CURRENT["name"] or "sweep"


def _expected_jobs(config: DictConfig) -> list[list[str]] | None:
    """The jobs Hydra's basic sweeper makes of this sweep, in order (``None`` for other sweepers)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
            return None
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        parsed = OverridesParser.create().parse_overrides([*params, *task])
        batches = BasicSweeper.split_arguments(parsed, None)
        return [list(job) for batch in batches for job in batch]
    except Exception:  # a report must never fail a sweep
        return None


def record_job(outcome: dict[str, Any], sweep_dir: Path, num: int) -> None:
    """Write a job's outcome to ``<sweep>/jobs/<num>.json`` and link ``<sweep>/<num>`` to its run folder."""
    try:
        atomic_write_json(sweep_dir / "jobs" / f"{num}.json", {"num": num, **outcome})
        link = sweep_dir / str(num)
        run_dir = Path(outcome["run_dir"]) if outcome.get("run_dir") else None  # None: no run folder, no link
        if run_dir is not None and run_dir.exists() and run_dir.resolve() != link.resolve() and \
                sweep_dir.resolve() not in run_dir.resolve().parents:
            tmp = sweep_dir / f".{num}.link"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(os.path.relpath(run_dir.resolve(), sweep_dir.resolve()), tmp)
            os.replace(tmp, link)
    except OSError as e:
        log.warning("could not record job %d in %s (%s)", num, sweep_dir, e)


def report(sweep_dir: Path, expected: list[list[str]] | None) -> tuple[str, int, list[dict[str, Any]]]:
    """The sweep's report from its job records.

    Returns:
        ``(text, exit_code, rows)``: one line per job, 0 when every job completed or was skipped
        as already completed, else 1 (a job failed, was invalid, diverged, was stopped, or left no
        record).
    """
    records = {}
    for f in (sweep_dir / "jobs").glob("*.json"):
        rec = read_json(f)
        if isinstance(rec, dict) and "num" in rec:
            records[int(rec["num"])] = rec
    n = len(expected) if expected is not None else (max(records) + 1 if records else 0)
    rows = []
    for num in range(n):
        rec = records.get(num)
        if rec is None:
            rows.append({"num": num, "overrides": expected[num] if expected else [], "status": "no record",
                         "reason": "the job left no record (killed, or never started)"})
        else:
            rows.append(rec)
    counts: dict[str, int] = {}
    lines = []
    listed = [r.get("overrides") or [] for r in rows]
    common = set.intersection(*(set(o) for o in listed)) if listed and len(rows) > 1 else set()
    for r in rows:
        status = r["status"]
        counts[status] = counts.get(status, 0) + 1
        what = " ".join(o for o in (r.get("overrides") or []) if o not in common) or "(no overrides)"
        if status == "completed":
            detail = f"test_acc {_f(r.get('test_acc'))}, sparsity {_f(r.get('sparsity'))}"
        elif status == "skipped":
            detail = f"already {r.get('was', 'completed')} (test_acc {_f(r.get('test_acc'))}); not run again"
        else:
            detail = r.get("reason") or ""
        lines.append(f"  #{r['num']:<3} {status:<12} {what}  --  {detail}" + (f"  [{r['run_dir']}]"
                                                                             if r.get("run_dir") else ""))
    bad = sum(c for s, c in counts.items() if s not in OK_STATUSES)
    head = f"sweep {sweep_dir}: {n} job(s): " + ", ".join(f"{c} {s}" for s, c in sorted(counts.items()))
    if common:
        head += f"\n  every job: {' '.join(o for o in listed[0] if o in common)}"
    seed_lines, _ = over_seeds(rows)
    return "\n".join([head, *lines, *seed_lines]), (1 if bad else 0), rows


def over_seeds(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Mean ± std of a sweep's test accuracy over its seeds, one row per setting (the job's overrides
    without ``seed=``), with the Student's t 95 % interval of the mean (:func:`ticketlab.sweeps.stats.mean_ci`).

    Only completed (or skipped as completed) jobs with a test accuracy count; a setting lists how many
    of its jobs did not. Returns ``(lines, table)``; both are empty unless the sweep varies ``seed``
    and some setting has two or more completed seeds.
    """
    def key(overrides: list[str]) -> tuple[str, ...]:
        return tuple(o for o in overrides if not o.split("=", 1)[0].lstrip("+~") == "seed")

    listed = [r.get("overrides") or [] for r in rows]
    if not any(len(o) != len(key(o)) for o in listed):
        return [], []
    varying = set().union(*(set(k) for k in map(key, listed))) - set.intersection(*(set(key(o)) for o in listed))
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for r, o in zip(rows, listed, strict=True):
        g = groups.setdefault(tuple(x for x in key(o) if x in varying), {"acc": [], "sparsity": [], "other": 0})
        ok = r.get("status") in OK_STATUSES and isinstance(r.get("test_acc"), (int, float))
        if ok:
            g["acc"].append(float(r["test_acc"]))
            if isinstance(r.get("sparsity"), (int, float)):
                g["sparsity"].append(float(r["sparsity"]))
        else:
            g["other"] += 1
    if max(len(g["acc"]) for g in groups.values()) < 2:
        return [], []
    from ticketlab.sweeps.stats import describe, mean_ci

    table, lines = [], ["test accuracy over seeds: mean ± std (n) [95 % t interval of the mean]"]
    for setting, g in groups.items():
        est = mean_ci(g["acc"])
        sp = describe(g["sparsity"])[0]
        row = {"setting": " ".join(setting) or "(all jobs)", "n": est.n, "mean": est.mean, "std": est.sd,
               "ci_low": est.low, "ci_high": est.high, "sparsity": sp, "density": 1.0 - sp, "not_completed": g["other"]}
        table.append({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()})  # NaN: JSON null
        std = "" if est.n < 2 else f" ± {est.sd:.4f}"
        ci = "" if est.n < 2 else f" [{est.low:.4f}, {est.high:.4f}]"
        acc = "no completed seed" if est.n == 0 else f"{est.mean:.4f}{std} (n={est.n}){ci}"
        dens = "" if sp != sp else f"  sparsity {sp:.4f} (density {1 - sp:.4f})"
        missing = f"  ({g['other']} not completed)" if g["other"] else ""
        lines.append(f"  {row['setting']:<30} {acc}{dens}{missing}")
    return lines, table


def _f(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def write_report(sweep_dir: Path, expected: list[list[str]] | None) -> int:
    """Print the report, write ``report.md`` and ``report.json`` in the sweep folder (rank 0 of a DDP
    sweep only); return the exit code (on every rank)."""
    from ticketlab.distributed import current_rank

    text, code, rows = report(sweep_dir, expected)
    if current_rank() != 0:
        return code
    print(text, flush=True)
    try:
        atomic_write_bytes(sweep_dir / "report.md", (f"```\n{text}\n```\n").encode())
        atomic_write_json(sweep_dir / "report.json", {"exit_code": code, "jobs": rows,
                                                      "over_seeds": over_seeds(rows)[1]})
    except OSError as e:
        log.warning("could not write the sweep report in %s (%s)", sweep_dir, e)
    return code


def partial_report() -> int | None:
    """The report of the sweep in progress (after a signal stopped it), or ``None`` outside a sweep."""
    if _CURRENT["dir"] is None:
        return None
    return write_report(Path(_CURRENT["dir"]), _CURRENT["expected"])


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks.sweep_report`` in ``conf/config.yaml``): names the sweep folder
    and reports every job at the end (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Name the sweep from its overrides (before Hydra creates its folder)."""
        params = OmegaConf.to_container(config.hydra.sweeper.params, resolve=False) \
            if config.hydra.sweeper.get("params") else None
        _CURRENT["name"] = sweep_name(OmegaConf.to_container(config.hydra.overrides.task, resolve=False), params)
        _CURRENT["expected"] = _expected_jobs(config)
        EXIT["sweep"] = None
        from ticketlab.runner.cluster import quiet_sacct_errors, slurm_launcher_problem

        problem = slurm_launcher_problem(config.hydra.launcher) or folder_problem(Path(str(config.hydra.sweep.dir)),
                                                                                  "hydra.sweep.dir")
        if problem:  # before the launcher's own traceback; nothing is submitted or written
            log.error("Invalid configuration: %s", problem)
            sys.exit(2)
        quiet_sacct_errors()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse a ``hydra.run.dir`` that cannot hold the run (a file, a read-only folder) with one message,
        before Hydra creates the folder and fails with a traceback."""
        problem = folder_problem(Path(str(config.hydra.run.dir)), "hydra.run.dir")
        if problem:
            log.error("Invalid configuration: %s", problem)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Print and write the report; set the exit code."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _CURRENT["dir"] = None
        EXIT["sweep"] = write_report(sweep_dir, _CURRENT["expected"])

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Remember the sweep folder (for a partial report if a signal stops the sweep)."""
        if in_multirun():
            _CURRENT["dir"] = str(config.hydra.sweep.dir)


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The job records of a sweep folder, by job number."""
    out = [read_json(f) for f in (Path(sweep_dir) / "jobs").glob("*.json")]
    return sorted((r for r in out if isinstance(r, dict)), key=lambda r: r.get("num", 0))


__all__ = ["EXIT", "SweepReport", "in_multirun", "over_seeds", "partial_report", "read_jobs", "record_job", "report",
           "sweep_name", "write_report"]
