"""conf/experiment/: every experiment composes over its grid, its paper numbers load, every smoke variant runs
end to end through scripts/reproduce.py (table and plots), and the table never drops a run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ticketlab.errors import ConfigError
from ticketlab.runner.validate import resolve
from ticketlab.sweeps.experiments import (
    ReportSpec,
    critical_compression,
    experiment_names,
    matching_level,
    paper_numbers,
    summary_frame,
)
from ticketlab.sweeps.markdown import markdown_table

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
NAMES = experiment_names()
FULL = [n for n in NAMES if not n.endswith("_smoke")]
SMOKE = [n for n in NAMES if n.endswith("_smoke")]


def _grid(name: str) -> dict[str, list[str]]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False) or {}
    out = {}
    for k, v in params.items():
        v = str(v)
        if v.startswith("range("):
            a, b, step = (float(x) for x in v[len("range("):-1].split(","))
            n = int(round((b - a) / step))
            out[k] = [f"{a + i * step:g}" for i in range(n)]
        else:
            out[k] = v.split(",")
    return out


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=[f"experiment={name}", *overrides])


def test_every_paper_has_an_experiment_and_a_smoke_variant():
    papers = {n.split("/")[0] for n in FULL}
    assert {"edge_popup", "iwr", "iterand", "biprop", "nonzero_bias", "eps_perturbation", "phew", "synflow",
            "haroon", "lth"} <= papers
    assert sorted(f"{n}_smoke" for n in FULL) == SMOKE


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("claims/")])
def test_experiment_composes_over_its_grid(name):
    # claims/*: tests/test_claims.py composes and validates every job of each, and runs the smoke variants
    """Every value of every swept key (the others at their first value) gives a valid run config."""
    grid = _grid(name)
    assert grid, f"{name} declares no grid (hydra.sweeper.params)"
    first = {k: v[0] for k, v in grid.items()}
    seen = set()
    for key, values in grid.items():
        for value in values:
            point = {**first, key: value}
            overrides = [f"{k}={v}" for k, v in point.items()]
            if tuple(overrides) in seen:
                continue
            seen.add(tuple(overrides))
            cfg = _compose(name, overrides)
            rc = resolve(cfg)
            spec = ReportSpec.from_config(cfg)
            assert spec.name == name
            assert OmegaConf.select(cfg, "logger.group") == name
            for k in [*spec.rows, *spec.cols]:
                if k != "level":
                    assert OmegaConf.select(cfg, k) is not None, f"{name}: row/column key {k} is not in the config"
            assert rc.seed == int(point.get("seed", rc.seed))


@pytest.mark.parametrize("name", FULL)
def test_paper_numbers_match_the_layout(name):
    spec = ReportSpec.from_config(_compose(name, []))
    paper = paper_numbers(name)
    if paper.empty:  # no published numbers (the report says so in its notes)
        assert any("no" in n.lower() and "number" in n.lower() for n in spec.notes), name
        return
    keys = set(spec.rows) | set(spec.cols)
    assert keys & set(paper.columns) == {k for k in keys if k in paper.columns}
    assert set(spec.rows) <= set(paper.columns), f"{name}: the paper file lacks a row key"
    assert paper["value"].notna().all() and (paper["source"].str.len() > 0).all()


def test_report_spec_rejects_unknown_keys_and_values():
    with pytest.raises(ConfigError, match="report.colour is not a report key"):
        ReportSpec.from_config({"report": {"colour": "red"}})
    with pytest.raises(ConfigError, match="report.kind='table'"):
        ReportSpec(kind="table")
    with pytest.raises(ConfigError, match="no report: block"):
        ReportSpec.from_config({"seed": 0})


def test_critical_compression_is_the_last_x_before_the_first_collapse():
    rows = []
    for x, empty in [(1, 0), (2, 0), (3, 1), (4, 0), (5, 1)]:  # a non-monotone case: 4 does not count
        rows.append({"status": "completed", "__row0": "m", "seed": 0, "target_density": 10.0 ** -x,
                     "empty_layers": empty})
    crit = critical_compression(pd.DataFrame(rows))
    assert crit["critical_x"].tolist() == [2.0] and crit["first_collapse_x"].tolist() == [3.0]


def test_matching_level_uses_the_dense_level_and_its_std():
    spec = ReportSpec(kind="levels", rows=["pruner.rewind_step"])
    cells = pd.DataFrame({"pruner.rewind_step": ["0"] * 4, "level": ["0", "1", "2", "3"],
                          "density": [1.0, 0.8, 0.64, 0.512], "mean": [98.0, 98.2, 97.95, 97.0],
                          "std": [0.1, 0.1, 0.1, 0.1]})
    ml = matching_level(cells, spec)
    assert ml["matching_level"].tolist() == [2] and math.isclose(ml["threshold"].iloc[0], 97.9)


def test_table_lists_runs_that_did_not_complete():
    spec = ReportSpec(rows=["pruner.name"], cols=["pruner.sparsity"])
    df = pd.DataFrame([
        {"job": 0, "status": "completed", "overrides": "seed=0", "pruner.name": "ep", "pruner.sparsity": "0.5",
         "test_acc": 0.8, "density": 0.5, "level": None},
        {"job": 1, "status": "completed", "overrides": "seed=1", "pruner.name": "ep", "pruner.sparsity": "0.5",
         "test_acc": 0.9, "density": 0.5, "level": None},
        {"job": 2, "status": "diverged", "overrides": "seed=2", "pruner.name": "ep", "pruner.sparsity": "0.5",
         "test_acc": 0.1, "density": 0.5, "level": None, "reason": "loss nan"},
        {"job": 3, "status": "no record", "overrides": "seed=3", "pruner.name": "ep", "pruner.sparsity": "0.5",
         "level": None},
    ])
    paper = pd.DataFrame({"pruner.name": ["ep"], "pruner.sparsity": ["0.5"], "value": [86.0], "std": [math.nan],
                          "source": ["x"]})
    cells = summary_frame(df, spec, paper)
    assert cells["n"].tolist() == [2] and math.isclose(cells["mean"].iloc[0], 85.0)
    assert math.isclose(cells["diff"].iloc[0], -1.0)
    text = markdown_table(df, spec, paper)
    assert "Runs not completed: 2" in text
    assert "job 2 seed=2: diverged — loss nan" in text and "job 3 seed=3: no record" in text
    assert "85.00 ± 7.07 (n=2); paper 86.00; Δ -1.00" in text  # sample std (ddof 1)


def _run_reproduce(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TICKETLAB_OUTPUTS": str(tmp_path / "outputs"), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "scripts/reproduce.py", *args, "logger=none", "trainer.progress=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


#: Folders whose smoke variants run end to end here, one `reproduce.py <folder> --smoke` each. The others are
#: left to tests/test_claims.py, whose claims smoke variants run the same methods end to end (edge-popup with
#: biases, looks-linear inits, annealing and scaling; biprop and recycling; IteRand; PHEW, SynFlow, SNIP,
#: GraSP; K-starts and dissipating gradients; eps-perturbation; the iwr presets EP, EP+Recycle, Biprop,
#: Biprop+Recycle, IteRand); their grids are composed and validated above.
SMOKE_FOLDERS = ["edge_popup", "lth", "synflow"]
#: Folders whose tables are checked without their plots (edge_popup, lth and synflow draw every plot kind).
TABLES_ONLY: set[str] = set()


@pytest.mark.slow
@pytest.mark.parametrize("folder", SMOKE_FOLDERS)
def test_smoke_variant_end_to_end(folder, tmp_path):
    """The whole pipeline for each smoke variant of a folder: sweep, tidy CSV with one row per job (per IMP
    level), table, plots."""
    p = _run_reproduce([folder, "--smoke", *(["--no-plots"] if folder in TABLES_ONLY else [])], tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    names = [n.removesuffix("_smoke") for n in SMOKE if n.startswith(folder + "/")]
    assert names
    for name in names:
        out = tmp_path / "outputs" / "experiments" / f"{name}_smoke"
        grid = _grid(f"{name}_smoke")
        n_jobs = math.prod(len(v) for v in grid.values())
        df = pd.read_csv(out / "runs.csv")
        assert df["job"].nunique() == n_jobs and (df["status"] == "completed").all()
        table = (out / "table.md").read_text()
        assert table.startswith(f"## {name}_smoke: smoke run of {name} on ") and "Runs not completed: 0" in table
        assert "(n=" in table
        # a smoke report shows no paper it was not run against: no paper column, source or notes
        full = ReportSpec.from_config(compose_cfg(f"experiment={name}"))
        assert "paper" not in table.split("\n")[4] and "; paper " not in table and "Δ" not in table
        assert "Differences from the paper" not in table and full.source not in table and full.title not in table
        assert table.strip() in p.stdout.replace("\r", "")
        if folder not in TABLES_ONLY:
            pngs = sorted(x.name for x in (out / "plots").glob("*.png"))
            assert pngs and len(pngs) == len(list((out / "plots").glob("*.pdf")))


@pytest.mark.slow
def test_reproduce_reports_invalid_and_skips_completed_runs(tmp_path):
    """An invalid grid value is listed (exit 1); the same command again skips the completed runs."""
    args = ["edge_popup/conv_cifar10", "--smoke", "pruner.sparsity=0.5,1.5", "init.scale_fan=false"]
    p = _run_reproduce(args, tmp_path)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    # the overrides narrow the grid: their own folder and table, labelled; the full table is not written
    out = tmp_path / "outputs" / "experiments" / "edge_popup" / \
        "conv_cifar10_smoke-narrowed-pruner.sparsity_0.5_1.5_init.scale_fan_false"
    table = (out / "table.md").read_text()
    assert "Runs not completed: 1" in table and "pruner.sparsity=1.5" in table and "invalid" in table
    assert table.startswith("> **Narrowed grid**: `pruner.sparsity=0.5,1.5 init.scale_fan=false`")
    assert not (tmp_path / "outputs" / "experiments" / "edge_popup/conv_cifar10_smoke").exists()
    again = _run_reproduce(args, tmp_path)
    assert again.returncode == 1
    report = json.loads((out / "report.json").read_text())
    assert sorted(j["status"] for j in report["jobs"]) == ["invalid", "skipped"]


def test_reproduce_refuses_an_unknown_experiment(tmp_path):
    p = _run_reproduce(["edge_popup/nope"], tmp_path)
    assert p.returncode == 2 and "no experiment 'edge_popup/nope'" in p.stderr and "synflow/layer_collapse" in p.stderr
    assert not (tmp_path / "outputs").exists()



@pytest.mark.slow
def test_report_only_finds_runs_started_by_hand_and_shows_missing_cells(tmp_path):
    """Runs started with train.py (no sweep) are tabulated by their settings; the grid points nobody ran read
    `missing`, are listed, and make the command exit 1 unless --allow-partial."""
    env = {**os.environ, "TICKETLAB_OUTPUTS": str(tmp_path / "outputs"), "WANDB_MODE": "disabled"}
    for s in ("0.5", "0.9"):
        r = subprocess.run([sys.executable, "train.py", "experiment=edge_popup/conv_cifar10_smoke", "model=conv2",
                            "init=signed_constant", "init.scale_fan=false", f"pruner.sparsity={s}", "seed=0",
                            "logger=none", "trainer.progress=false"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    p = _run_reproduce(["edge_popup/conv_cifar10", "--smoke", "--report-only", "--no-plots"], tmp_path)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    table = (tmp_path / "outputs" / "experiments" / "edge_popup/conv_cifar10_smoke" / "table.md").read_text()
    rows = {ln.split("|")[3].strip(): ln for ln in table.splitlines() if ln.startswith("| conv2")}
    assert "(n=1)" in rows["False"] and rows["True"].count(" missing ") == 2
    assert "Missing cells: 2" in table and "init.scale_fan=True, pruner.sparsity=0.9" in table
    assert "the table is partial (2 missing cell(s)" in p.stderr
    again = _run_reproduce(["edge_popup/conv_cifar10", "--smoke", "--report-only", "--no-plots", "--allow-partial"],
                           tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]

    # a damaged run folder: listed as damaged with its file and what is wrong, its cell missing, the rest written
    runs = {d.name.split("-s")[1].split("-")[0]: d for d in (tmp_path / "outputs" / "runs").iterdir()}
    summary = runs["0.5"] / "summary.json"
    summary.write_text(summary.read_text()[:40])  # truncated
    (runs["0.9"] / ".hydra" / "config.yaml").write_text("model: [unclosed\n  - {")
    damaged = _run_reproduce(["edge_popup/conv_cifar10", "--smoke", "--report-only", "--no-plots"], tmp_path)
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr, damaged.stderr[-3000:]
    table = (tmp_path / "outputs" / "experiments" / "edge_popup/conv_cifar10_smoke" / "table.md").read_text()
    assert "Missing cells: 4" in table and "-inf" not in table
    assert f"{summary} is not valid JSON (truncated or damaged)" in table
    assert f"{runs['0.9'] / '.hydra' / 'config.yaml'} cannot be read as YAML" in table


@pytest.mark.slow
def test_partial_evaluation_is_marked_in_summary_log_and_table(tmp_path):
    """trainer.limit_eval_batches evaluates part of the test set: the run says so everywhere it reports."""
    p = _run_reproduce(["edge_popup/conv_cifar10", "--smoke", "--no-plots",
                        "trainer.limit_eval_batches=1", "dataset.eval_batch_size=50"], tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = tmp_path / "outputs" / "experiments" / "edge_popup/conv_cifar10_smoke"
    table = (out / "table.md").read_text()
    assert "Partial evaluation: 4 run(s)" in table and table.count("†") >= 4
    run_dir = Path(pd.read_csv(out / "runs.csv")["run_dir"].iloc[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["partial_eval"] is True and summary["test_images_evaluated"] == 50
    assert "partial evaluation: 50 test images" in (run_dir / "train.log").read_text()


def test_an_override_of_a_swept_key_gets_its_own_table_and_leaves_the_full_one_alone(tmp_path):
    experiments = tmp_path / "outputs" / "experiments" / "synflow"
    full = experiments / "layer_collapse_smoke" / "table.md"
    full.parent.mkdir(parents=True)
    full.write_text("the full table")
    p = _run_reproduce(["synflow/layer_collapse", "--smoke", "--no-plots", "pruner=random"], tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    narrowed = (experiments / "layer_collapse_smoke-narrowed-pruner_random" / "table.md").read_text()
    assert narrowed.startswith("> **Narrowed grid**: `pruner=random`") and str(full) in narrowed
    assert full.read_text() == "the full table"
