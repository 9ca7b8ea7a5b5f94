"""Claims and the statistics of the report machinery: t intervals against values computed by hand on a small
table, the verdict rule, pairing by seed, trends as differences of differences, the per-cell sample std, arms
that differ only in what a claim names, and every claims smoke variant end to end (as `make claims` runs them)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ticketlab.errors import ConfigError
from ticketlab.runner.validate import resolve
from ticketlab.sweeps.claims import Claim, arm_differences, evaluate, pair_up
from ticketlab.sweeps.comparisons import check_arms, planned_jobs
from ticketlab.sweeps.experiments import ReportSpec, evaluate_claims, experiment_names
from ticketlab.sweeps.markdown import markdown_table
from ticketlab.sweeps.stats import VERDICTS, Estimate, mean_ci, paired_difference, verdict

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = [n for n in experiment_names() if n.startswith("claims/") and not n.endswith("_smoke")]
#: Every experiment that states claims (the claims/ folder and reproductions such as iterand/conv6).
WITH_CLAIMS = [n for n in experiment_names() if not n.endswith("_smoke")
               and "\n  claims:" in (ROOT / "conf" / "experiment" / f"{n}.yaml").read_text()]
#: Student's t, 97.5 % quantiles with 4 and 3 degrees of freedom (printed tables: 2.776, 3.182).
T_975 = {4: 2.7764451051977987, 3: 3.182446305284263}


def _hand(values: list[float]) -> tuple[float, float, float]:
    """mean, sample sd (ddof 1) and the 95 % half-width, by the textbook formulas."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, sd, T_975[n - 1] * sd / math.sqrt(n)


def test_t_interval_equals_the_hand_computation():
    x = [0.80, 0.83, 0.78, 0.85, 0.81]
    mean, sd, half = _hand(x)
    est = mean_ci(x)
    assert est.n == 5 and est.mean == pytest.approx(mean) and est.sd == pytest.approx(sd)
    assert (est.low, est.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    d = paired_difference([0.9, 0.8, 0.85, 0.7, 0.95], [0.85, 0.79, 0.8, 0.72, 0.9])
    dm, dsd, dh = _hand([0.05, 0.01, 0.05, -0.02, 0.05])
    assert (d.mean, d.low, d.high) == (pytest.approx(dm), pytest.approx(dm - dh), pytest.approx(dm + dh))
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0, 2.0], [1.0])


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.01, 0.03, "greater", "supported"),
    (-0.01, 0.03, "greater", "not shown at this scale"),
    (-0.03, -0.01, "greater", "contradicted"),
    (-0.03, -0.01, "less", "supported"),
    (0.01, 0.03, "less", "contradicted"),
    (-0.03, -0.01, "two-sided", "supported"),
    (-0.01, 0.01, "two-sided", "not shown at this scale"),
])
def test_verdict_rule(low, high, direction, expected):
    assert verdict(Estimate((low + high) / 2, low, high, 5, 0.01, 0.01), direction) == expected
    assert expected in VERDICTS


def test_verdict_without_an_interval_and_bad_direction():
    assert verdict(mean_ci([0.5]), "greater") == "not shown at this scale"  # n = 1: no interval
    with pytest.raises(ConfigError, match="'up'.*greater, less, two-sided"):
        verdict(mean_ci([0.5, 0.6]), "up")


def _table() -> pd.DataFrame:
    """5 seeds x {edge_popup, iterand} x width {0.25, 2}: iterand's gain is 3 points at 0.25 and 1 at 2 (plus
    per-seed noise); seed 4 of iterand at width 2 failed."""
    noise = [0.004, -0.002, 0.001, -0.003, 0.0]
    rows = []
    for s in range(5):
        for w, gain in (("0.25", 0.03), ("2", 0.01)):
            base = 0.80 + (0.05 if w == "2" else 0.0) + 0.01 * s
            rows.append({"job": len(rows), "overrides": "", "reason": "",
                         "pruner.name": "edge_popup", "model.width_mult": w, "seed": s, "status": "completed",
                         "test_acc": base, "run_dir": "", "level": None})
            failed = s == 4 and w == "2"
            rows.append({"job": len(rows), "overrides": "", "reason": "",
                         "pruner.name": "iterand", "model.width_mult": w, "seed": s,
                         "status": "failed" if failed else "completed",
                         "test_acc": math.nan if failed else base + gain + noise[s] * (1 if w == "0.25" else -1),
                         "run_dir": "", "level": None})
    return pd.DataFrame(rows)


def test_claim_pairs_by_seed_averages_per_seed_and_drops_unpaired_runs():
    df = _table()
    claim = Claim(id="c", text="iterand beats edge-popup", method={"pruner.name": "iterand"},
                  baseline={"pruner.name": "edge_popup"}, differs=["pruner.name"])
    res = evaluate(df, claim, ["pruner.name", "model.width_mult"], "test_acc", config_of=lambda r, s: None)
    assert res.pairs == 9  # seed 4 at width 2 has no completed method run
    per_seed = [((0.03 + n) + (0.01 - n)) / 2 for n in [0.004, -0.002, 0.001, -0.003]] + [0.03]
    mean, _, half = _hand(per_seed)
    assert res.effect.n == 5 and res.effect.mean == pytest.approx(mean)
    assert (res.effect.low, res.effect.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert res.verdict == "supported"


def test_trend_claim_is_a_difference_of_differences_per_seed():
    claim = Claim(id="t", text="gap grows as width shrinks", method={"pruner.name": "iterand"},
                  baseline={"pruner.name": "edge_popup"}, trend={"key": "model.width_mult", "first": 0.25,
                                                                  "last": 2.0}, differs=["pruner.name"])
    res = evaluate(_table(), claim, ["pruner.name", "model.width_mult"], "test_acc", config_of=lambda r, s: None)
    per_seed = [(0.03 + n) - (0.01 - n) for n in [0.004, -0.002, 0.001, -0.003]]  # seed 4 has no gap at 2
    mean, _, half = _hand(per_seed)
    assert res.effect.n == 4 and res.effect.mean == pytest.approx(mean)
    assert (res.effect.low, res.effect.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert res.verdict == "supported"


def test_table_shows_sample_std_paired_deltas_and_the_claims_section():
    spec = ReportSpec(name="x/y", rows=["pruner.name"], cols=["model.width_mult"],
                      baseline={"pruner.name": "edge_popup"},
                      claims=[{"id": "c", "text": "iterand | beats edge-popup", "method": {"pruner.name": "iterand"},
                               "baseline": {"pruner.name": "edge_popup"}, "differs": ["pruner.name"]}])
    df = _table()
    text = markdown_table(df, spec, pd.DataFrame(columns=["value", "std", "source"]))
    base = [0.80 + 0.01 * s for s in range(5)]
    mean, sd, _ = _hand(base)
    assert f"{mean * 100:.2f} ± {sd * 100:.2f} (n=5)" in text  # ddof 1
    it = [b + 0.03 + n for b, n in zip(base, [0.004, -0.002, 0.001, -0.003, 0.0], strict=True)]
    dmean, _, dhalf = _hand([a - b for a, b in zip(it, base, strict=True)])
    assert f"vs baseline {dmean * 100:+.2f} [{(dmean - dhalf) * 100:+.2f}, {(dmean + dhalf) * 100:+.2f}]" in text
    assert "iterand \\| beats edge-popup" in text and "| supported |" in text
    assert "Runs not completed: 1" in text
    [res] = evaluate_claims(df, spec)
    assert res.verdict == "supported"


def test_claim_keys_and_values_are_checked():
    with pytest.raises(ConfigError, match="direction='bigger'"):
        Claim(id="c", text="t", method={"a": 1}, baseline={"a": 2}, direction="bigger")
    with pytest.raises(ConfigError, match="'arms' is not a claim key"):
        ReportSpec(claims=[{"id": "c", "text": "t", "method": {"a": 1}, "baseline": {"a": 2}, "arms": 2}])
    with pytest.raises(ConfigError, match="report.baseline names 'seed'"):
        ReportSpec(rows=["pruner.name"], baseline={"seed": 0})
    claim = Claim(id="c", text="t", method={"pruner.nope": 1}, baseline={"pruner.nope": 2})
    with pytest.raises(ConfigError, match="'pruner.nope', which is not a column"):
        pair_up(_table(), claim, ["pruner.name"])


def test_arm_differences_flag_what_the_claim_does_not_name():
    pairs = pd.DataFrame([{"job_m": 0, "job_b": 1}])
    a = {"pruner.name": "iterand", "pruner.rank": "raw", "pruner.period": 300, "optimizer.lr": 0.3,
         "report.method": "x", "logger.group": "claims/phew"}  # labels never count as a difference
    b = {"pruner.name": "edge_popup", "pruner.rank": "abs", "pruner.scope": "layerwise", "optimizer.lr": 0.1}
    cfgs = [a, b]
    diffs, undeclared = arm_differences(pairs, lambda r, s: cfgs[int(r[f"job{s}"])], ["pruner.name"])
    # an option only one pruner has (period, scope) belongs to the named pruner change; rank and lr do not
    assert set(diffs) == {"pruner.name", "pruner.rank", "pruner.period", "pruner.scope", "optimizer.lr"}
    assert undeclared == ["optimizer.lr", "pruner.rank"]
    _, undeclared = arm_differences(pairs, lambda r, s: cfgs[int(r[f"job{s}"])], ["optimizer.lr", "pruner.r*"])
    assert undeclared == ["pruner.name", "pruner.period", "pruner.scope"]


def test_every_claims_experiment_states_claims():
    assert set(CLAIMS) <= set(WITH_CLAIMS) and "iterand/conv6" in WITH_CLAIMS


@pytest.mark.parametrize("name", WITH_CLAIMS)
def test_every_claims_arms_differ_only_in_what_it_names(name):
    """Composes the sweep's jobs (nothing runs) and diffs the two arms of every claim, pair by pair; every job
    is a valid run config (tests/test_experiments.py composes the other experiments' grids)."""
    planned = planned_jobs(name)
    out = check_arms(name, planned=planned)
    assert out and all(v == [] for v in out.values()), out
    jobs, configs, spec = planned
    assert spec.name == name and len(jobs) == len(configs)
    for cfg in configs:
        resolve(cfg)


def test_a_claim_comparing_unlike_arms_is_caught(tmp_path):
    """The mismatch that once passed for a finding: edge-popup's defaults against IteRand's conventions."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "experiment" / "claims" / "unlike.yaml").write_text("""# @package _global_
defaults:
  - override /dataset: digits
report:
  name: claims/unlike
  rows: [pruner.name]
  cols: [pruner.sparsity]
  claims:
    - {id: unlike, text: t, method: {pruner.name: iterand}, baseline: {pruner.name: edge_popup}, differs: [pruner.name]}
hydra:
  sweeper:
    params:
      pruner: edge_popup,iterand
      seed: 0,1
""")
    assert check_arms("claims/unlike", conf_dir=conf) == {"unlike": ["pruner.rank", "pruner.score_init"]}


@pytest.mark.slow
def test_every_claims_smoke_variant_end_to_end(tmp_path):
    """`reproduce.py claims --smoke`: each claims experiment's sweep, table with its claims section, claims.json,
    and the summary with one row per claim."""
    env = {**os.environ, "TICKETLAB_OUTPUTS": str(tmp_path / "outputs"), "WANDB_MODE": "disabled"}
    p = subprocess.run([sys.executable, "scripts/reproduce.py", "claims", "--smoke", "--no-plots", "logger=none",
                        "trainer.progress=false"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "outputs" / "experiments" / "claims"
    summary = (out / "summary.md").read_text()
    n_claims = 0
    for name in CLAIMS:
        rec = json.loads((out / f"{name.split('/')[1]}_smoke" / "claims.json").read_text())
        table = (out / f"{name.split('/')[1]}_smoke" / "table.md").read_text()
        assert "Runs not completed: 0" in table and "Claims (paired by seed" in table
        assert "UNDECLARED" not in table
        for c in rec["claims"]:
            assert c["verdict"] in VERDICTS and c["pairs"] > 0 and c["seeds"] == 2 and not c["undeclared"]
            assert f"({c['id']})" in summary
            n_claims += 1
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "(" in line.split("|")[2]]
    assert len(rows) == n_claims and "Wall time of this command" in summary
