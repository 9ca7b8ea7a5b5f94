"""Published tables as experiments: collect a sweep's runs into one tidy table, lay it out as the paper did,
and put the paper's numbers beside ours.

An experiment is a config file ``conf/experiment/<paper>/<table>.yaml`` (``# @package _global_``) with the
paper's settings, its grid (``hydra.sweeper.params``) and a ``report:`` block (:class:`ReportSpec`) saying how
the paper laid the result out. The paper's numbers live beside it in ``<table>.csv`` (:func:`paper_numbers`),
each row with its source. ``scripts/reproduce.py`` launches the sweep, then calls :func:`collect`,
:func:`ticketlab.sweeps.markdown.markdown_table` and :mod:`ticketlab.sweeps.plots`.

Every job of the sweep becomes at least one row of the tidy table (:func:`collect`): a run that failed,
diverged, was stopped or never ran is a row with its status and is listed under the table, never dropped.
IMP runs give one row per level (``level`` column).

Cells are mean ± sample standard deviation (ddof 1) over seeds. A report may name a baseline row (each
other cell then shows its paired difference to it with a 95 % t interval) and claims, tested by
:mod:`ticketlab.sweeps.claims` with the statistics of :mod:`ticketlab.sweeps.stats`; the config keys in
which the compared rows differ are listed under the table (:mod:`ticketlab.sweeps.comparisons`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ticketlab.errors import ConfigError
from ticketlab.files import read_json
from ticketlab.sweeps.claims import Claim, completed, label
from ticketlab.sweeps.comparisons import evaluate_claims
from ticketlab.sweeps.stats import describe

#: Where ``conf/experiment/`` is (the paper numbers' CSV files live beside the YAML files).
EXPERIMENT_DIR = Path(__file__).resolve().parents[3] / "conf" / "experiment"

KINDS = ("grid", "collapse", "levels")
METRICS = ("test_acc", "best_test_acc", "test_acc_at_best_val")
#: Summary fields copied into the tidy table (when present).
SUMMARY_FIELDS = ("status", "test_acc", "best_test_acc", "test_acc_at_best_val", "best_val_acc", "train_acc",
                  "sparsity", "density", "target_sparsity", "target_density", "effective_sparsity",
                  "effective_density", "compression_ratio", "params_remaining", "params_total", "epochs", "wall_s",
                  "partial_eval", "test_images_evaluated",
                  "model", "dataset", "pruner", "init", "seed", "run_dir", "reason")


@dataclass
class ReportSpec:
    """The ``report:`` block of an experiment config: how the paper laid its result out.

    Attributes:
        name: the experiment, ``<paper>/<table>`` (also the W&B group of its runs).
        title: one line: what the table shows.
        source: the paper and its table or figure.
        paper: a short citation for summaries across experiments (e.g. ``Chijiwa et al. 2021 (IteRand)``).
        kind: ``grid`` (``metric`` per row x column cell), ``collapse`` (per row: the largest compression
            exponent ``x``, density ``10^-x``, at which no masked layer is empty; Tanaka et al. 2020, Fig. 1)
            or ``levels`` (IMP: ``metric`` per level; plus the sparsest level whose mean is within one standard
            deviation of the dense level's mean; Frankle et al. 2020, Table 1).
        rows: config keys (dotted, e.g. ``pruner.name``) whose values label the rows.
        cols: config keys labelling the columns (``level`` for ``kind=levels``); none for ``collapse``.
        metric: the summary field reported, in ``METRICS``: ``test_acc`` (last epoch), ``best_test_acc``
            (best epoch on the test set, as some papers did) or ``test_acc_at_best_val`` (validation-selected).
        percent: report accuracies in percent (papers do).
        notes: what differs from the paper's setting (data, budget, conventions), printed under the table.
        method: the label of a method preset (``+method=<name>``, ``conf/method/``), e.g. ``EP+Recycle``;
            use ``report.method`` as a row key to tell presets of one pruner apart.
        baseline: optional row (row key -> value, e.g. ``{pruner.name: random}``): every other row's cells
            then also show the paired difference to it, by seed, with a 95 % t interval.
        claims: the paper's claims tested on this experiment (:class:`~ticketlab.sweeps.claims.Claim`; each
            entry a mapping with ``id``, ``text``, ``method``, ``baseline``, ``direction``, ``differs``, ...).
    """

    name: str = ""
    title: str = ""
    source: str = ""
    paper: str = ""
    kind: str = "grid"
    rows: list[str] = field(default_factory=lambda: ["pruner.name"])
    cols: list[str] = field(default_factory=lambda: ["pruner.sparsity"])
    metric: str = "test_acc"
    percent: bool = True
    notes: list[str] = field(default_factory=list)
    method: str = ""
    baseline: dict[str, Any] = field(default_factory=dict)
    claims: list[Any] = field(default_factory=list)
    setting: str = ""

    @property
    def smoke_of(self) -> str:
        """The full experiment this is a smoke variant of (``""`` for a full experiment)."""
        return self.name.removesuffix("_smoke") if self.name.endswith("_smoke") else ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"report.kind={self.kind!r} is not known; allowed: {', '.join(KINDS)}.")
        if self.metric not in METRICS:
            raise ConfigError(f"report.metric={self.metric!r} is not known; allowed: {', '.join(METRICS)}.")
        if not self.rows:
            raise ConfigError("report.rows is empty; name at least one config key (e.g. pruner.name).")
        if self.kind == "levels":
            self.cols = ["level"]
        if self.kind == "collapse":
            self.cols = []
        self.claims = [c if isinstance(c, Claim) else Claim.from_dict(dict(c)) for c in self.claims or []]
        ids = [c.id for c in self.claims]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"report.claims: ids repeat ({', '.join(ids)}); give each claim its own id.")
        bad = sorted(set(self.baseline) - set(self.rows))
        if bad:
            raise ConfigError(f"report.baseline names {bad[0]!r}, which is not a row key; row keys: "
                              f"{', '.join(self.rows)}.")

    def keys(self) -> list[str]:
        """Every config key the table reads: rows, columns and the claims' keys."""
        return list(dict.fromkeys([*self.rows, *self.cols, *(k for c in self.claims for k in c.keys())]))

    @classmethod
    def from_config(cls, cfg: DictConfig | dict[str, Any]) -> ReportSpec:
        """The spec of a composed config's ``report:`` node.

        Raises:
            ConfigError: no ``report:`` node (not an experiment), an unknown key, or a bad value.
        """
        node = cfg.get("report") if cfg is not None else None
        if node is None:
            raise ConfigError("this config has no report: block; pick an experiment, e.g. "
                              "experiment=synflow/layer_collapse (see conf/experiment/).")
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"report.{unknown[0]} is not a report key; allowed: {', '.join(sorted(known))}.")
        if "setting" not in raw and isinstance(cfg, DictConfig):  # what ran: the smoke report names it
            sel = {k: OmegaConf.select(cfg, f"{k}.name", default=None) for k in ("model", "dataset", "pruner")}
            raw["setting"] = f"{sel['model']} on {sel['dataset']}" if sel["model"] and sel["dataset"] else ""
        return cls(**raw)


def experiment_names(root: Path = EXPERIMENT_DIR) -> list[str]:
    """Every experiment (``<paper>/<table>``), smoke variants included, sorted."""
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def paper_numbers(name: str, root: Path = EXPERIMENT_DIR) -> pd.DataFrame:
    """The paper's numbers of experiment ``name`` (``<table>.csv`` beside its YAML; none for a smoke variant,
    which runs another setting than the paper's).

    Returns:
        One row per published value: the row/column key columns, ``value`` (the paper's unit: percent for
        accuracies, the exponent for compression), ``std`` (may be empty) and ``source``. Empty when the
        experiment has no file.

    Raises:
        ConfigError: the file lacks ``value`` or ``source``.
    """
    path = root / f"{name}.csv"
    if name.endswith("_smoke") or not path.exists():
        return pd.DataFrame(columns=["value", "std", "source"])
    df = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    for col in ("value", "source"):
        if col not in df.columns:
            raise ConfigError(f"{path} lacks the column {col!r}; its columns: {', '.join(df.columns)}.")
    df["value"] = pd.to_numeric(df["value"])
    df["std"] = pd.to_numeric(df["std"]) if "std" in df.columns else math.nan
    return df


# --------------------------------------------------------------------------------------------------
# collecting runs


def _select(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _overrides(items: list[str]) -> dict[str, str]:
    """``{key: value}`` of ``key=value`` overrides; a group choice ``pruner=snip`` also gives ``pruner.name``."""
    out = {}
    for o in items or []:
        k, _, v = o.partition("=")
        k = k.lstrip("+~")
        out[k] = v
        if "." not in k and "/" not in k and k != "seed":
            out.setdefault(f"{k}.name", v)
    return out


def _run_rows(run_dir: Path, keys: list[str], base: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per summary in ``run_dir`` (one per IMP level when it has levels)."""
    cfg_file = run_dir / ".hydra" / "config.yaml"
    damage = []  # what is wrong with the folder's files: the run is then listed as damaged, its cell missing
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False) if cfg_file.exists() else {}
        if not isinstance(cfg, dict):
            raise ValueError("not a mapping")
    except Exception as e:
        cfg = {}
        damage.append(f"{cfg_file} cannot be read as YAML ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    keyed = {k: _select(cfg, k) for k in keys if k != "level"}
    for k, v in keyed.items():
        if v is None and k in base:
            keyed[k] = base[k]
    levels = sorted(run_dir.glob("level_*/summary.json"))
    found = [(int(p.parent.name.split("_")[1]), p) for p in levels] or [(None, run_dir / "summary.json")]
    rows = []
    for level, path in found:
        summary = read_json(path) if path.exists() else None
        row = {**base, **keyed, "level": level}
        bad = damage + ([f"{path} is not valid JSON (truncated or damaged)"]
                        if path.exists() and not isinstance(summary, dict) else [])
        if bad:
            row.update(status="damaged", run_dir=str(path.parent),
                       reason="; ".join(bad) + "; move the folder aside and run it again")
        elif isinstance(summary, dict):
            row.update({f: summary[f] for f in SUMMARY_FIELDS if f in summary})
            row["run_dir"] = str(path.parent)
            row["layer_densities"] = json.dumps(summary.get("layer_densities") or {})
            dens = summary.get("layer_densities") or {}
            row["empty_layers"] = sum(1 for d in dens.values() if d == 0)
        else:
            row["run_dir"] = str(run_dir)
        rows.append(row)
    if levels:  # a staged run (IMP): say so when it has not finished all its levels
        parent = read_json(run_dir / "summary.json")
        status = parent.get("status") if isinstance(parent, dict) else None
        if status != "completed":
            rows.append({**base, **keyed, "level": None, "run_dir": str(run_dir), "status": status or "incomplete",
                         "reason": f"{len(levels)} level(s) finished so far"})
    return rows


def collect(sweep_dir: Path, spec: ReportSpec,
            locate: Callable[[list[str]], Path | None] | None = None,
            planned: list[list[str]] | None = None) -> pd.DataFrame:
    """Every job of a sweep as tidy rows (one per run, one per IMP level).

    Args:
        sweep_dir: the sweep folder (``report.json`` and ``jobs/`` written by :mod:`ticketlab.sweeps.sweep`).
        spec: the layout, for the key columns.
        locate: finds the run folder of a job that left no record (a sweep still running, or killed) from
            its overrides, so that its finished part (e.g. IMP levels) is tabulated too.
        planned: every job of the experiment's grid, as its swept overrides (``--report-only``). A planned job
            that no record covers is looked up with ``locate`` (a run started by hand with the same settings
            is found by its identity folder) and is otherwise a row with status ``missing``; with ``planned``,
            a sweep folder without records is no error.

    Returns:
        Columns: ``job``, ``status`` (the run's own status when it wrote a summary, else the job's:
        ``invalid``, ``no record``, ...), ``reason``, ``overrides``, one column per ``spec.rows``/``spec.cols``
        key, ``level``, the :data:`SUMMARY_FIELDS`, ``empty_layers`` and ``layer_densities`` (JSON).

    Raises:
        FileNotFoundError: ``sweep_dir`` has neither ``report.json`` nor job records, and nothing is ``planned``.
    """
    report = read_json(sweep_dir / "report.json")
    jobs = report.get("jobs") if isinstance(report, dict) else None
    if jobs is None and (sweep_dir / "multirun.yaml").exists():  # a sweep still running, or killed
        from ticketlab.sweeps import sweep

        expected = sweep._expected_jobs(OmegaConf.load(sweep_dir / "multirun.yaml"))
        jobs = sweep.report(sweep_dir, expected)[2] if expected else sweep.read_jobs(sweep_dir)
    jobs = list(jobs or [])
    for over in planned or []:  # grid points no record covers: found by identity, or missing
        if not any(set(over) <= set(j.get("overrides") or []) for j in jobs):
            jobs.append({"num": f"p{len(jobs)}", "overrides": list(over), "status": "no record",
                         "reason": "no sweep record; looked up by its identity folder"})
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no sweep report or job records; run the sweep first.")
    keys = spec.keys()
    rows: list[dict[str, Any]] = []
    for job in jobs:
        over = _overrides(job.get("overrides") or [])
        base = {"job": job.get("num"), "status": job.get("status"), "reason": job.get("reason", ""),
                "overrides": " ".join(job.get("overrides") or [])}
        base.update({k: over.get(k) for k in keys if k != "level"})
        run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
        if run_dir is None and locate is not None and job.get("status") == "no record":
            run_dir = locate(job.get("overrides") or [])
        if run_dir is not None and run_dir.is_dir():
            rows.extend(_run_rows(run_dir, keys, base))
        else:
            if base["status"] == "no record":
                base.update(status="missing", reason="no run folder with these settings")
            rows.append({**base, "level": None})
    df = pd.DataFrame(rows)
    for k in keys:
        if k in df.columns:
            df[k] = df[k].map(label)
    return df


# --------------------------------------------------------------------------------------------------
# the paper's layout


def _stats(values: pd.Series) -> tuple[float, float, int]:
    """``(mean, sample std with ddof 1, n)`` of the numeric values."""
    return describe(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float))


def critical_compression(df: pd.DataFrame) -> pd.DataFrame:
    """Per run group (rows x seed): the largest compression exponent ``x`` on the grid such that no run
    at any ``x' <= x`` emptied a masked layer (Tanaka et al. 2020, Fig. 1: "layer collapse").

    Args:
        df: tidy rows with ``compression`` (exponent) or ``target_density``, ``empty_layers`` and ``seed``.

    Returns:
        One row per group with ``critical_x``, ``first_collapse_x`` (NaN if none collapsed) and ``tested_max_x``.
    """
    d = completed(df).copy()
    if d.empty:
        return d
    d["x"] = -pd.to_numeric(d["target_density"], errors="coerce").map(lambda t: math.log10(t) if t > 0 else math.inf)
    d["x"] = d["x"].round(6)
    out = []
    group_keys = [c for c in d.columns if c.startswith("__row")] + ["seed"]
    for key, g in d.groupby(group_keys, dropna=False, sort=False):
        g = g.sort_values("x")
        collapsed = g[g["empty_layers"] > 0]
        first = float(collapsed["x"].min()) if not collapsed.empty else math.nan
        safe = g[g["x"] < first] if not math.isnan(first) else g
        out.append({**dict(zip(group_keys, key if isinstance(key, tuple) else (key,), strict=True)),
                    "critical_x": float(safe["x"].max()) if not safe.empty else math.nan,
                    "first_collapse_x": first, "tested_max_x": float(g["x"].max())})
    return pd.DataFrame(out)


def _fmt(mean: float, std: float, n: int, percent: bool) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    scale = 100.0 if percent else 1.0
    s = f"{mean * scale:.2f}"
    if n > 1 and not math.isnan(std):
        s += f" ± {std * scale:.2f}"
    return s + f" (n={n})"


def _paper(paper: pd.DataFrame, row: dict[str, str], col: str | None, col_key: str | None) -> tuple[float, float]:
    if paper.empty:
        return math.nan, math.nan
    m = pd.Series(True, index=paper.index)
    for k, v in row.items():
        if k in paper.columns:
            m &= paper[k].map(str) == v
    if col_key is not None and col_key in paper.columns:
        m &= paper[col_key].map(lambda s: label(float(s)) if _is_number(s) else s) == col
    hit = paper[m]
    if hit.empty:
        return math.nan, math.nan
    return float(hit["value"].iloc[0]), float(hit["std"].iloc[0]) if "std" in hit else math.nan


def _is_number(s: Any) -> bool:
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def summary_frame(df: pd.DataFrame, spec: ReportSpec, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per table cell: the keys, ours (``mean``, ``std``, ``n``), the paper's (``paper``,
    ``paper_std``) and ``diff`` = ours − paper, in the paper's unit (percent for accuracies when
    ``spec.percent``; compression exponents for ``kind=collapse``)."""
    scale = 100.0 if spec.percent else 1.0
    cells = []
    if spec.kind == "collapse":
        d = completed(df).copy()
        for i, k in enumerate(spec.rows):
            d[f"__row{i}"] = d[k]
        crit = critical_compression(d)
        row_keys = [f"__row{i}" for i in range(len(spec.rows))]
        for key, g in (crit.groupby(row_keys, sort=False) if not crit.empty else []):
            key = key if isinstance(key, tuple) else (key,)
            row = dict(zip(spec.rows, key, strict=True))
            mean, std, n = _stats(g["critical_x"])
            p, ps = _paper(paper, row, None, None)
            cells.append({**row, "mean": mean, "std": std, "n": n, "tested_max_x": g["tested_max_x"].max(),
                          "paper": p, "paper_std": ps, "diff": mean - p})
        return pd.DataFrame(cells)
    d = completed(df)
    groups = [*spec.rows, *spec.cols]
    if d.empty:
        return pd.DataFrame(columns=[*groups, "mean", "std", "n", "paper", "paper_std", "diff"])
    d = d.assign(level=d["level"].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                      else str(int(v))))
    for key, g in d.groupby(groups, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        labels = dict(zip(groups, key, strict=True))
        mean, std, n = _stats(g[spec.metric] if spec.metric in g else pd.Series(dtype=float))
        row = {k: labels[k] for k in spec.rows}
        col = labels[spec.cols[0]] if spec.cols else None
        p, ps = _paper(paper, row, col, spec.cols[0] if spec.cols else None)
        density = _stats(g["density"])[0] if "density" in g else math.nan
        target = _stats(g["target_density"])[0] if "target_density" in g else math.nan
        partial = bool(g["partial_eval"].fillna(False).astype(bool).any()) if "partial_eval" in g else False
        cells.append({**labels, "density": density, "target_density": target, "mean": mean * scale,
                      "std": std * scale, "n": n, "partial_eval": partial,
                      "paper": p, "paper_std": ps, "diff": mean * scale - p})
    return pd.DataFrame(cells)


def matching_level(cells: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """``kind=levels``: per row, the sparsest level whose mean accuracy is at least the dense level's mean
    minus its standard deviation ("matching", after Frankle et al. 2020, Sec. 5)."""
    out = []
    if cells.empty:
        return pd.DataFrame(out)
    for key, g in cells.groupby(spec.rows, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        g = g.assign(lv=g["level"].astype(int)).sort_values("lv")
        dense = g[g["lv"] == 0]
        if dense.empty:
            continue
        bar = float(dense["mean"].iloc[0]) - (float(dense["std"].iloc[0]) if not math.isnan(dense["std"].iloc[0])
                                               else 0.0)
        ok = g[g["mean"] >= bar]
        best = ok.iloc[-1] if not ok.empty else None
        out.append({**dict(zip(spec.rows, key, strict=True)), "dense": float(dense["mean"].iloc[0]),
                    "threshold": bar, "matching_level": int(best["lv"]) if best is not None else None,
                    "matching_density": float(best["density"]) if best is not None else math.nan})
    return pd.DataFrame(out)


__all__ = ["EXPERIMENT_DIR", "KINDS", "METRICS", "ReportSpec", "collect", "critical_compression", "evaluate_claims",
           "experiment_names", "matching_level", "paper_numbers", "summary_frame"]
