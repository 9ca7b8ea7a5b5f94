"""Claims: a paper's headline comparison, tested on an experiment's runs with seeds and a confidence interval.

A claim lives in an experiment's ``report.claims`` list (:class:`Claim`). It names two *arms* of the sweep by
their values of report keys (``method`` and ``baseline``, e.g. ``{report.method: IteRand}`` against
``{report.method: EP}``, or ``{pruner.sparsity: 0.5}`` against ``{pruner.sparsity: 0.9}``), the claimed sign
of ``method - baseline``, and the config keys in which the two arms are allowed to differ (``differs``).

:func:`evaluate` pairs every run of the method arm with the baseline run that has the same seed and the same
value of every other report key (the other rows and the columns), averages the paired differences per seed
(over the cells in ``where``) and gives the t interval over seeds (:mod:`ticketlab.sweeps.stats`). A
``trend`` claim tests a difference of differences per seed instead: the gap at one value of a key minus the
gap at another (e.g. IteRand's gain over edge-popup at width 0.25 minus its gain at width 2).

:func:`arm_differences` diffs the resolved configs of every pair; a key that differs but is not named in
``differs`` means the comparison changes more than the claim is about. Reports print it; ``tests``
fail on it (:func:`planned_jobs` composes the sweep's configs without running anything).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ticketlab.errors import ConfigError
from ticketlab.sweeps.stats import DIRECTIONS, Estimate, describe, mean_ci, verdict

#: Config keys never compared between arms: the report's layout and labels, and the tracking labels (a run
#: shared by two experiments, e.g. one random-pruning baseline, carries the W&B group of the first).
IGNORED_KEYS = ("report.*", "logger.*")


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a runs table whose run completed (none when the table has no ``status`` column)."""
    return df[df["status"] == "completed"] if "status" in df.columns else df.iloc[0:0]


def label(v: Any) -> str:
    """A key value as the tidy table holds it (floats without trailing noise)."""
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


@dataclass
class Claim:
    """One claim of a paper, as a paired comparison between two arms of an experiment.

    Attributes:
        id: a short name, unique within the experiment (e.g. ``gap_grows_as_width_shrinks``).
        text: the claim in one line, as the paper makes it.
        method: the arm the claim is about: config key -> value or list of values (keys of ``report.rows`` /
            ``report.cols`` or any other config key).
        baseline: the arm it is compared with, keyed the same way. A key that both arms select with the same
            value(s) restricts both and must match within a pair (e.g. the same ``pruner.eps`` list in a
            perturbation-against-control claim); every key not selected by either arm must match too.
        direction: the claimed sign of ``method - baseline``: ``greater``, ``less`` or ``two-sided``.
        where: restrict both arms to these values per key (e.g. ``{pruner.sparsity: [0.9, 0.95]}``).
        trend: ``{key, first, last}``: the effect is the per-seed gap ``method - baseline`` at ``key=first``
            minus the gap at ``key=last`` (a difference of differences) instead of the mean gap.
        differs: config keys (``fnmatch`` patterns, e.g. ``pruner.period`` or ``init.*``) in which the arms
            may differ; any other differing key is reported as undeclared.
        metric: the summary field compared (default: the report's ``metric``).
        setting: one line on the setting, for the claims summary (model, data, budget).
    """

    id: str
    text: str
    method: dict[str, Any]
    baseline: dict[str, Any]
    direction: str = "greater"
    where: dict[str, list[Any]] = field(default_factory=dict)
    trend: dict[str, Any] | None = None
    differs: list[str] = field(default_factory=list)
    metric: str | None = None
    setting: str = ""

    def __post_init__(self) -> None:
        if not self.id or not self.text:
            raise ConfigError("a claim needs an id and a one-line text (report.claims[].id / .text).")
        if not self.method or not self.baseline:
            raise ConfigError(f"claim {self.id!r}: method and baseline must each name an arm (key: value).")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"claim {self.id!r}: direction={self.direction!r} is not known; allowed: "
                              f"{', '.join(DIRECTIONS)}.")
        if self.trend is not None:
            missing = {"key", "first", "last"} - set(self.trend)
            if missing:
                raise ConfigError(f"claim {self.id!r}: trend needs key, first and last; missing "
                                  f"{', '.join(sorted(missing))}.")
        self.where = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in (self.where or {}).items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Claim:
        """A claim from one entry of ``report.claims``.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"report.claims: {unknown[0]!r} is not a claim key; allowed: {', '.join(sorted(known))}.")
        return cls(**raw)

    def keys(self) -> list[str]:
        """Every report key the claim reads (its arms, ``where`` and ``trend``)."""
        out = [*self.method, *self.baseline, *self.where]
        if self.trend:
            out.append(str(self.trend["key"]))
        return list(dict.fromkeys(out))


@dataclass
class ClaimResult:
    """The outcome of one claim on one experiment's runs.

    Attributes:
        claim: the claim.
        effect: the per-seed effect's mean and t interval (the metric's unit, e.g. accuracy as a fraction).
        verdict: one of :data:`ticketlab.sweeps.stats.VERDICTS`.
        pairs: number of (method run, baseline run) pairs used.
        method_stats, baseline_stats: ``(mean, sd ddof 1, n)`` of the metric over the paired runs of each arm.
        differences: config key -> ``"<method value> | <baseline value>"`` for every key that differs in at
            least one pair (``report.*`` ignored).
        undeclared: the keys of ``differences`` that the claim's ``differs`` does not name.
    """

    claim: Claim
    effect: Estimate
    verdict: str
    pairs: int
    method_stats: tuple[float, float, int]
    baseline_stats: tuple[float, float, int]
    differences: dict[str, str]
    undeclared: list[str]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record (for ``claims.json`` and the claims summary)."""
        e = self.effect
        return {"id": self.claim.id, "text": self.claim.text, "setting": self.claim.setting,
                "direction": self.claim.direction, "verdict": self.verdict, "pairs": self.pairs,
                "seeds": e.n, "effect": e.mean, "ci_low": e.low, "ci_high": e.high, "p": e.p, "level": e.level,
                "trend": self.claim.trend, "method": self.claim.method, "baseline": self.claim.baseline,
                "method_mean": self.method_stats[0], "method_sd": self.method_stats[1],
                "baseline_mean": self.baseline_stats[0], "baseline_sd": self.baseline_stats[1],
                "differences": self.differences, "undeclared": self.undeclared}


# --------------------------------------------------------------------------------------------------
# pairing


def _values(v: Any) -> list[str]:
    return [label(x) for x in v] if isinstance(v, (list, tuple)) else [label(v)]


def _matches(df: pd.DataFrame, selector: dict[str, Any]) -> pd.Series:
    m = pd.Series(True, index=df.index)
    for k, v in selector.items():
        if k not in df.columns:
            raise ConfigError(f"the claim names {k!r}, which is not a column of the runs' table; add it to the "
                              "experiment's report.rows or report.cols.")
        m &= df[k].map(str).isin(_values(v))
    return m


def pair_up(df: pd.DataFrame, claim: Claim, keys: Iterable[str]) -> pd.DataFrame:
    """The (method, baseline) pairs of ``claim`` among the rows of ``df``.

    Args:
        df: one row per run with a column per report key (values as :func:`label` writes them) and ``seed``.
        claim: the claim.
        keys: every report key of the experiment; the ones the arms do not select must match within a pair.

    Returns:
        The merged rows: the matching keys and ``seed`` once, every other column twice with suffixes
        ``_m`` (method) and ``_b`` (baseline).

    Raises:
        ConfigError: the claim names a key that is not a column of ``df``.
    """
    d = df.copy()
    for k, vals in claim.where.items():
        if k not in d.columns:
            raise ConfigError(f"claim {claim.id!r}: where names {k!r}, which is not a column of the runs' table.")
        d = d[d[k].map(str).isin([label(v) for v in vals])]
    selected = {k for k in {*claim.method, *claim.baseline}
                if k not in claim.method or k not in claim.baseline
                or _values(claim.method[k]) != _values(claim.baseline[k])}
    on = [k for k in dict.fromkeys([*keys, *claim.keys()]) if k not in selected and k in d.columns] + ["seed"]
    d = d.assign(seed=d["seed"].map(label))
    m, b = d[_matches(d, claim.method)], d[_matches(d, claim.baseline)]
    return m.merge(b, on=on, suffixes=("_m", "_b"))


def _per_seed_effects(pairs: pd.DataFrame, claim: Claim, metric: str) -> pd.Series:
    gap = pd.to_numeric(pairs[f"{metric}_m"], errors="coerce") - pd.to_numeric(pairs[f"{metric}_b"], errors="coerce")
    p = pairs.assign(__gap=gap)
    if claim.trend is None:
        return p.groupby("seed")["__gap"].mean()
    key = str(claim.trend["key"])
    first, last = label(claim.trend["first"]), label(claim.trend["last"])
    col = key if key in p.columns else f"{key}_m"
    a = p[p[col].map(str) == first].groupby("seed")["__gap"].mean()
    z = p[p[col].map(str) == last].groupby("seed")["__gap"].mean()
    both = a.index.intersection(z.index)
    return a[both] - z[both]


# --------------------------------------------------------------------------------------------------
# config differences between the arms


def flat_config(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A config as ``dotted.key -> value`` (interpolations resolved where they resolve; lists kept whole)."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that needs a running job (e.g. a resolver not registered here)
        raw = OmegaConf.to_container(cfg, resolve=False)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(raw, "")
    return out


def run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The flat config a run was launched with (``<run>/.hydra/config.yaml``), or ``None``."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.exists():  # an IMP level folder: its run's config
        path = Path(run_dir).parent / ".hydra" / "config.yaml"
    if not path.exists():
        return None
    return flat_config(OmegaConf.load(path))


def arm_differences(pairs: pd.DataFrame, config_of: Callable[[pd.Series, str], dict[str, Any] | None],
                    declared: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """The config keys in which the two arms of the pairs differ.

    Args:
        pairs: from :func:`pair_up`.
        config_of: ``(pair row, suffix "_m" or "_b") -> flat config`` (``None`` when unknown).
        declared: ``fnmatch`` patterns of the keys the claim names (``Claim.differs``).

    Returns:
        ``(differences, undeclared)``: key -> ``"<method value> | <baseline value>"`` (from the first pair
        that differs; a key present in one arm only shows ``<absent>`` on the other side), and the sorted
        keys no pattern of ``declared`` matches. A key that only one arm has is allowed without being named
        when its component's ``<group>.name`` differs and is named (the option belongs to the component the
        claim changes); a key both arms have must be named to differ.
    """
    out: dict[str, str] = {}
    for _, row in pairs.iterrows():
        a, b = config_of(row, "_m"), config_of(row, "_b")
        if a is None or b is None:
            continue
        for k in sorted(set(a) | set(b)):
            if k in out or any(fnmatch.fnmatchcase(k, p) for p in IGNORED_KEYS):
                continue
            va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
            if va != vb:
                out[k] = f"{va} | {vb}"
    patterns = list(declared)

    def named(k: str) -> bool:
        return any(fnmatch.fnmatchcase(k, p) for p in patterns)

    def allowed(k: str) -> bool:
        # an option only one arm has belongs to a component (pruner, init, ...) whose declared change is the
        # claim: e.g. IteRand's pruner.period when pruner.name differs and is named
        group = k.split(".")[0]
        return named(k) or ("<absent>" in out[k].split(" | ") and f"{group}.name" in out and named(f"{group}.name"))

    return out, sorted(k for k in out if not allowed(k))


def _config_from_run(row: pd.Series, suffix: str) -> dict[str, Any] | None:
    run_dir = row.get(f"run_dir{suffix}")
    return run_config(run_dir) if isinstance(run_dir, str) and run_dir else None


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluate(df: pd.DataFrame, claim: Claim, keys: Iterable[str], metric: str,
             config_of: Callable[[pd.Series, str], dict[str, Any] | None] = _config_from_run) -> ClaimResult:
    """Test ``claim`` on the completed runs of ``df``.

    Args:
        df: the tidy runs table (:func:`ticketlab.sweeps.experiments.collect`); rows whose status is not
            ``completed`` are left out.
        claim: the claim.
        keys: the experiment's report keys (rows and columns).
        metric: the report's metric (used unless the claim names its own).
        config_of: where each arm's config comes from (default: the run folder's ``.hydra/config.yaml``).

    Returns:
        The effect (per-seed mean difference, or difference of differences for a trend) with its t interval,
        the verdict, both arms' mean ± sd, and the config keys in which the arms differ.
    """
    metric = claim.metric or metric
    done = completed(df)
    if done.empty or metric not in done.columns:
        pairs = pd.DataFrame()
    else:
        pairs = pair_up(done, claim, keys)
    if pairs.empty:
        est = mean_ci([])
        return ClaimResult(claim, est, verdict(est, claim.direction), 0, describe([]), describe([]), {}, [])
    effects = _per_seed_effects(pairs, claim, metric)
    est = mean_ci(effects.to_numpy())
    diffs, undeclared = arm_differences(pairs, config_of, claim.differs)
    return ClaimResult(claim, est, verdict(est, claim.direction), len(pairs),
                       describe(pd.to_numeric(pairs[f"{metric}_m"], errors="coerce")),
                       describe(pd.to_numeric(pairs[f"{metric}_b"], errors="coerce")), diffs, undeclared)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (``|`` escaped)."""
    return str(text).replace("|", "\\|")


def _arm(sel: dict[str, Any]) -> str:
    return _cell(", ".join(f"{k}={label(v) if not isinstance(v, (list, tuple)) else '/'.join(_values(v))}"
                           for k, v in sel.items()))


def _pct(x: float, sd: float, n: int, scale: float) -> str:
    if n == 0 or math.isnan(x):
        return "—"
    return f"{x * scale:.2f}" + ("" if math.isnan(sd) else f" ± {sd * scale:.2f}")


def claims_markdown(results: list[ClaimResult], percent: bool = True) -> list[str]:
    """The claims section of an experiment's table: one row per claim, then the config keys each claim's
    arms differ in (undeclared keys flagged)."""
    if not results:
        return []
    scale = 100.0 if percent else 1.0
    unit = "percentage points" if percent else "metric units"
    lines = ["", f"Claims (paired by seed; effect = method − baseline in {unit}, mean over seeds with its 95 % "
             "t interval; arms are mean ± sd, ddof 1):", "",
             "| claim | method | baseline | seeds (pairs) | method | baseline | effect [95 % CI] | p | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.claim
        what = c.text + (f" (trend: gap at {c.trend['key']}={label(c.trend['first'])} minus gap at "
                         f"{label(c.trend['last'])})" if c.trend else "")
        p = "—" if math.isnan(r.effect.p) else f"{r.effect.p:.3g}"
        lines.append(f"| {c.id}: {_cell(what)} | {_arm(c.method)} | {_arm(c.baseline)} | {r.effect.n} ({r.pairs}) | "
                     f"{_pct(*r.method_stats, scale)} | {_pct(*r.baseline_stats, scale)} | "
                     f"{r.effect.text(scale)} | {p} | {r.verdict} |")
    lines += ["", "Config keys in which each claim's arms differ (method | baseline):"]
    for r in results:
        keys = ", ".join(f"`{k}` ({v})" for k, v in r.differences.items()) or "none found (no completed pair)"
        lines.append(f"- {r.claim.id}: {keys}")
        if r.undeclared:
            lines.append(f"  - **UNDECLARED** (not named by the claim, so the comparison changes more than it "
                         f"is about): {', '.join(r.undeclared)}")
    return lines


__all__ = ["IGNORED_KEYS", "Claim", "ClaimResult", "arm_differences", "claims_markdown", "evaluate", "flat_config",
           "completed", "label", "pair_up", "run_config"]


# --------------------------------------------------------------------------------------------------
# the summary over claims experiments


def summary_markdown(records: list[dict[str, Any]], total_wall_s: float | None = None) -> str:
    """``summary.md`` of a group of claims experiments: one row per claim.

    Args:
        records: one per experiment, as ``reproduce.py`` writes them to ``<sweep>/claims.json``: ``experiment``,
            ``paper``, ``percent``, ``wall_s`` (this launch, seconds), ``run_wall_s`` (sum of the runs' own
            wall times, seconds), ``not_completed`` and ``claims`` (:meth:`ClaimResult.as_dict` records).
        total_wall_s: the whole command's wall time, for the last line.
    """
    lines = ["# What holds at small scale: claims summary", "",
             "Each claim is tested on paired runs (same seed in both arms); effect = method − baseline, mean over "
             "seeds with its 95 % t interval, in percentage points of test accuracy. Verdict: supported (the "
             "interval excludes 0 in the claimed direction), not shown at this scale (it contains 0), contradicted "
             "(it excludes 0 the other way); for a two-sided comparison, supported means the arms differ.", "",
             "| paper | claim | setting | effect [95 % CI] | seeds | verdict | wall time (runs' compute) |",
             "|---|---|---|---|---|---|---|"]
    for rec in records:
        scale = 100.0 if rec.get("percent", True) else 1.0
        minutes = [(rec[k] if isinstance(rec.get(k), (int, float)) else math.nan) / 60
                   for k in ("wall_s", "run_wall_s")]
        wall = f"{minutes[0]:.1f} min ({minutes[1]:.1f} min)".replace("nan min", "—")
        for c in rec.get("claims", []):
            est = Estimate(c["effect"] if c["effect"] is not None else math.nan,
                           c["ci_low"] if c["ci_low"] is not None else math.nan,
                           c["ci_high"] if c["ci_high"] is not None else math.nan, int(c["seeds"]), math.nan,
                           math.nan)
            flag = " **arms differ in undeclared keys: " + ", ".join(c["undeclared"]) + "**" if c.get("undeclared") \
                else ""
            lines.append(f"| {rec.get('paper') or rec['experiment']} | {_cell(c['text'])} ({c['id']}) | "
                         f"{_cell(c['setting'])} | "
                         f"{est.text(scale)} | {c['seeds']} | {c['verdict']}{flag} | {wall} |")
        if rec.get("not_completed"):
            lines.append(f"| {rec.get('paper') or rec['experiment']} | {rec['not_completed']} run(s) of "
                         f"{rec['experiment']} did not complete (see its table.md) | | | | | |")
    if total_wall_s is not None:
        lines += ["", f"Wall time of this command: {total_wall_s / 60:.1f} min."]
    lines += ["", "Per experiment: `<experiment>/table.md` (cells, claims with both arms' mean ± sd, and the "
              "config keys in which the arms differ), `runs.csv`, `plots/`."]
    return "\n".join(lines) + "\n"


__all__ += ["summary_markdown"]
