"""Comparisons inside an experiment's table, built on :mod:`ticketlab.sweeps.claims`: every claim of a report
evaluated on its runs, a cell's paired difference to the baseline row, the config keys in which each row's
runs differ from the reference row's, and the arms check that composes a sweep's jobs without running them
(``scripts/reproduce.py`` runs it before a claims sweep launches; ``tests/test_claims.py`` on every claim).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ticketlab.errors import ConfigError
from ticketlab.sweeps.claims import (
    Claim,
    ClaimResult,
    arm_differences,
    completed,
    evaluate,
    flat_config,
    label,
    pair_up,
    run_config,
)

if TYPE_CHECKING:
    from ticketlab.sweeps.experiments import ReportSpec


def evaluate_claims(df: pd.DataFrame, spec: ReportSpec) -> list[ClaimResult]:
    """Every claim of ``spec`` tested on the runs of ``df`` (:func:`ticketlab.sweeps.claims.evaluate`)."""
    if df.empty or "seed" not in df.columns:
        return [evaluate(df.iloc[0:0], c, [*spec.rows, *spec.cols], spec.metric) for c in spec.claims]
    return [evaluate(df, c, [*spec.rows, *spec.cols], spec.metric) for c in spec.claims]


def row_differences(df: pd.DataFrame, spec: ReportSpec) -> list[tuple[dict[str, str], dict[str, str]]]:
    """For every row of the table after the reference row (``spec.baseline``, else the first row): the config
    keys in which its runs differ from the reference row's, from one pair of completed runs with the same
    seed and column values (their ``.hydra/config.yaml``; ``report.*`` ignored).

    Returns:
        ``[(row labels, {key: "<row value> | <reference value>"}), ...]``; a row without a completed pair is
        left out.
    """
    d = completed(df)
    if d.empty or "seed" not in d.columns or not all(k in d.columns for k in spec.rows):
        return []
    rows = d[spec.rows].drop_duplicates().to_dict("records")
    ref = next((r for r in rows if all(str(r[k]) == label(v) for k, v in spec.baseline.items())), None) \
        if spec.baseline else None
    ref = ref or rows[0]
    out = []
    for r in rows:
        if r == ref:
            continue
        claim = Claim(id="row", text="row", method=r, baseline=ref)
        pairs = pair_up(d, claim, [*spec.rows, *spec.cols]).head(1)
        if pairs.empty:
            continue
        diffs, _ = arm_differences(pairs, lambda p, s: run_config(p[f"run_dir{s}"]), [])
        out.append((r, {k: v for k, v in diffs.items() if "<absent>" not in v}))
    return out


def row_difference_lines(df: pd.DataFrame, spec: ReportSpec) -> list[str]:
    """The Markdown lines listing :func:`row_differences` under a table (empty when there is one row)."""
    diffs = row_differences(df, spec) if spec.kind != "collapse" else []
    if not diffs:
        return []
    ref = ", ".join(f"{k}={v}" for k, v in (spec.baseline or {}).items()) or "the first row"
    out = ["", f"Config keys in which each row's runs differ from {ref}'s (row value | reference value; options "
           "only one of the two methods has are not listed):"]
    for r, d in diffs:
        label = ", ".join(f"{k}={v}" for k, v in r.items())
        out.append(f"- {label}: " + (", ".join(f"`{k}` ({v})" for k, v in d.items()) or "none"))
    return out


def versus_baseline(df: pd.DataFrame, spec: ReportSpec, row: dict[str, str], col: str | None,
                     cv: Any) -> str:
    """``"; vs baseline +1.23 [+0.45, +2.01]"``: a cell's paired difference to the baseline row at the same
    column value, by seed, in the table's unit (empty for the baseline row itself and when no pair exists).

    Args:
        df: the tidy runs table; ``spec``: its layout; ``row``: the cell's row labels; ``col``, ``cv``: its
            column key and value (``None`` for a table without columns).
    """
    base = {**row, **spec.baseline}
    if all(str(row[k]) == label(v) for k, v in spec.baseline.items()) or df.empty or "seed" not in df.columns:
        return ""
    sel = {col: cv} if col and col != "level" else {}
    claim = Claim(id="cell", text="cell", method={**row, **sel}, baseline={**base, **sel})
    res = evaluate(df, claim, [*spec.rows, *spec.cols], spec.metric, config_of=lambda r, s: None)
    return "" if res.pairs == 0 else f"; vs baseline {res.effect.text(100.0 if spec.percent else 1.0)}"


# --------------------------------------------------------------------------------------------------
# the sweep's planned jobs, composed without running


def planned_jobs(name: str, overrides: Iterable[str] = (), conf_dir: Path | None = None,
                 one_seed: bool = True) -> tuple[pd.DataFrame, list[DictConfig], Any]:
    """Every job of experiment ``name``'s sweep, composed (not run), as a table and its configs.

    Args:
        name: ``<paper>/<table>`` (``conf/experiment/<name>.yaml``).
        overrides: extra overrides (e.g. a narrower grid).
        conf_dir: the config folder (default: the project's ``conf/``).
        one_seed: compose only the jobs of the first seed (seeds change nothing but ``seed`` in the config).

    Returns:
        ``(jobs, configs, spec)``: one row per job with a column per report key and claim key (values as
        the runs' table writes them), ``seed`` and ``overrides`` (the job's swept values, a list);
        ``configs[i]`` is job ``i``'s composed config (as
        ``train.py`` would receive it); the experiment's :class:`~ticketlab.sweeps.experiments.ReportSpec`.

    Raises:
        ConfigError: the experiment has no sweep or no report block.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ticketlab import resolvers
    from ticketlab.sweeps.experiments import ReportSpec

    resolvers.register()
    conf = str(conf_dir or Path(__file__).resolve().parents[3] / "conf")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf, version_base=None):
        overrides = list(overrides)
        job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
        base = compose("config", overrides=[f"experiment={name}", *overrides], return_hydra_config=True)
        spec = ReportSpec.from_config(base)
        params = OmegaConf.to_container(base.hydra.sweeper.params, resolve=False) or {}
        if not params:
            raise ConfigError(f"experiment {name!r} has no hydra.sweeper.params: nothing to compare.")
        if one_seed and "seed" in params:
            params["seed"] = str(params["seed"]).split(",")[0]
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        jobs = [list(j) for batch in BasicSweeper.split_arguments(parsed, None) for j in batch]
        keys = list(dict.fromkeys([*spec.rows, *spec.cols, *(k for c in spec.claims for k in c.keys())]))
        rows, configs = [], []
        for job in jobs:
            cfg = compose("config", overrides=[f"experiment={name}", *job_overrides, *job])
            flat = flat_config(cfg)
            configs.append(cfg)
            rows.append({**{k: label(flat.get(k)) for k in keys if k != "level"}, "seed": label(flat.get("seed")),
                         "status": "completed", "job": len(rows), "overrides": job})
    GlobalHydra.instance().clear()
    return pd.DataFrame(rows), configs, spec


def check_arms(name: str, overrides: Iterable[str] = (), conf_dir: Path | None = None,
               planned: tuple[pd.DataFrame, list[DictConfig], ReportSpec] | None = None) -> dict[str, list[str]]:
    """Claim id -> the undeclared config keys its arms differ in, over the planned jobs of ``name``
    (empty lists when every claim is clean). Nothing runs.

    Args:
        name, overrides, conf_dir: as :func:`planned_jobs`.
        planned: the result of :func:`planned_jobs` when the caller already has it.

    Raises:
        ConfigError: as :func:`planned_jobs`, or a claim names a key that is not in the table.
    """
    jobs, composed, spec = planned or planned_jobs(name, overrides, conf_dir)
    configs = [flat_config(c) for c in composed]
    keys = [*spec.rows, *spec.cols]
    out = {}
    for claim in spec.claims:
        pairs = pair_up(jobs, claim, keys)
        _, undeclared = arm_differences(pairs, lambda row, s: configs[int(row[f"job{s}"])], claim.differs)
        out[claim.id] = undeclared if not pairs.empty else ["<no pair of jobs: the arms select nothing>"]
    return out


__all__ = ["check_arms", "evaluate_claims", "planned_jobs", "row_difference_lines", "row_differences",
           "versus_baseline"]
