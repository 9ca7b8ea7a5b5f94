"""Reproduce one published table or figure: run its sweep, then write the table and the plots.

    python scripts/reproduce.py synflow/layer_collapse
    python scripts/reproduce.py edge_popup/conv_cifar10 --smoke               # the CPU smoke variant
    python scripts/reproduce.py lth/lenet300_mnist hydra/launcher=slurm      # any Hydra override
    python scripts/reproduce.py lth/lenet300_mnist --report-only             # tables and plots only
    python scripts/reproduce.py claims/iterand                               # one paper's claims
    python scripts/reproduce.py claims                                       # every claim, then summary.md
    python scripts/reproduce.py iwr --smoke --no-plots                       # a folder's smoke variants, tables only
    python scripts/reproduce.py --list

The experiment is ``conf/experiment/<paper>/<table>.yaml`` (``--smoke``: ``<table>_smoke.yaml``). Its sweep
runs with ``train.py -m experiment=<name>`` into ``<paths.output_dir>/experiments/<name>/`` (runs already
completed are skipped: each run has its own identity folder under ``<paths.output_dir>/runs/``). Then, in
that folder:

* ``runs.csv``: every job as tidy rows (one per IMP level), failed and missing ones included;
* ``table.md``: the paper's layout, ours (mean ± std, n) beside the paper's number (``<table>.csv``);
* ``plots/*.png`` and ``*.pdf``;
* ``claims.json`` when the experiment tests claims (``report.claims``): each claim's paired effect, interval,
  verdict and the config keys in which its arms differ. Before a claims sweep launches, its arms are checked
  (composed, nothing runs): a config key that differs between the arms of a claim without the claim naming
  it stops the command (exit 2).

A folder of experiments (e.g. ``claims``) runs each of them in turn (``--smoke``: their smoke variants), then
writes ``<paths.output_dir>/experiments/<folder>/summary.md`` (one row per claim).

The exit status is the sweep's (0 only when every run completed); the table is written either way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from ticketlab import resolvers
from ticketlab.errors import ConfigError
from ticketlab.files import atomic_write_bytes, read_json
from ticketlab.runner.identity import compute, runs_root
from ticketlab.sweeps.claims import summary_markdown
from ticketlab.sweeps.comparisons import check_arms, planned_jobs
from ticketlab.sweeps.experiments import (
    ReportSpec,
    collect,
    evaluate_claims,
    experiment_names,
    paper_numbers,
)
from ticketlab.sweeps.markdown import markdown_table, missing_cells, not_completed
from ticketlab.sweeps.plots import all_plots

ROOT = Path(__file__).resolve().parents[1]
resolvers.register()  # every schema and resolver, before an experiment config is composed
CONF = ROOT / "conf"


def config_only(overrides: list[str]) -> list[str]:
    """The overrides that set one value: not launcher settings (``hydra.*``) and not swept values."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]


def _composed(name: str, overrides: list[str]):
    """Experiment ``name`` composed with the single-value ``overrides``, Hydra's own config included."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=[f"experiment={name}", *config_only(overrides)], return_hydra_config=True)


def swept_overrides(name: str, overrides: list[str], cfg=None) -> list[str]:
    """The overrides that set a key experiment ``name`` sweeps (``hydra.sweeper.params``): they narrow its grid.
    ``cfg``: the experiment already composed (:func:`_composed`), else composed here."""
    cfg = cfg if cfg is not None else _composed(name, overrides)
    params = {k.lstrip("+~") for k in (cfg.hydra.sweeper.get("params") or {})}
    return [o.input_line for o in OverridesParser.create().parse_overrides(overrides)
            if o.key_or_group.lstrip("+~") in params]


def sweep_dir_of(name: str, overrides: list[str]) -> tuple[Path, ReportSpec]:
    """The experiment's sweep folder and its report spec (composes the config, nothing runs).

    An override of a swept key narrows the grid: such a sweep gets its own folder,
    ``experiments/<name>-narrowed-<the overrides>``, and its own labelled table, so the experiment's full table in
    ``experiments/<name>/`` is never rewritten with part of the grid.

    Raises:
        ConfigError: the experiment has no ``report:`` block or a bad one.
    """
    cfg = _composed(name, overrides)
    spec = ReportSpec.from_config(cfg)
    base = Path(str(cfg.paths.output_dir)).resolve() / "experiments"
    narrowed = swept_overrides(name, overrides, cfg)
    if not narrowed:
        return base / name, spec
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(narrowed))  # no '=' or ',' (Hydra would parse them)
    if len(slug) > 80:
        slug = slug[:70] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]
    return base / f"{name}-narrowed-{slug}", spec


def run_folder(name: str, overrides: list[str]) -> Path | None:
    """The identity folder of the experiment's job with these overrides, if it exists."""
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose("config", overrides=[f"experiment={name}", *[o for o in overrides if not
                                                                       o.startswith("experiment=")]])
        folder = runs_root(cfg) / compute(cfg).folder
    except Exception:  # an invalid job has no folder
        return None
    return folder if folder.is_dir() else None


def report(name: str, sweep_dir: Path, spec: ReportSpec, wall_s: float | None = None, plots: bool = True,
           overrides: list[str] | None = None, report_only: bool = False) -> tuple[str, tuple[int, int]]:
    """Write ``runs.csv``, ``table.md``, the plots and (with claims) ``claims.json`` in ``sweep_dir``; return
    the table's Markdown and ``(missing cells, runs not completed)``. ``wall_s``: this
    launch's wall time, recorded in ``claims.json``. With ``report_only`` every job of the experiment's grid is
    looked for by its identity folder, so runs started by hand with the same settings are tabulated too."""
    planned = None
    if report_only:
        fixed = config_only(overrides or [])
        planned = [[*fixed, *job] for job in planned_jobs(name, fixed, one_seed=False)[0]["overrides"]]
    df = collect(sweep_dir, spec, locate=lambda over: run_folder(name, over), planned=planned)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(sweep_dir / "runs.csv", index=False)
    if spec.claims:
        run_wall = float(pd.to_numeric(df.get("wall_s"), errors="coerce").sum()) if "wall_s" in df else 0.0
        if wall_s is None:  # --report-only: keep the wall time the last launch measured
            wall_s = (read_json(sweep_dir / "claims.json") or {}).get("wall_s")
        record = {"experiment": name, "paper": spec.paper or spec.source, "percent": spec.percent,
                  "wall_s": wall_s, "run_wall_s": run_wall, "not_completed": len(not_completed(df)),
                  "claims": [r.as_dict() for r in evaluate_claims(df, spec)]}
        atomic_write_bytes(sweep_dir / "claims.json", json.dumps(record, indent=1, default=str).encode())
    paper = paper_numbers(name)
    text = markdown_table(df, spec, paper)
    narrowed = swept_overrides(name, overrides or [])
    if narrowed:
        full = sweep_dir.parent / name.rsplit("/", 1)[-1] / "table.md"
        text = (f"> **Narrowed grid**: `{' '.join(narrowed)}` overrides keys the experiment sweeps, so this table "
                f"covers part of its grid. The experiment's full table is {full} (not changed by this run).\n\n"
                + text)
    plots = all_plots(df, spec, paper, sweep_dir / "plots") if plots else []
    text += "\nFiles: " + ", ".join(str(p.relative_to(sweep_dir)) for p in [sweep_dir / "runs.csv", *plots]) + "\n"
    atomic_write_bytes(sweep_dir / "table.md", text.encode())
    gaps = len(missing_cells(df, spec)) if spec.kind != "collapse" else 0
    return text, (gaps, len(not_completed(df)))


def main(argv: list[str] | None = None) -> int:
    """Run the experiment's sweep and report it; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Other arguments are Hydra overrides passed to train.py.")
    parser.add_argument("experiment", nargs="?", help="<paper>/<table>, e.g. synflow/layer_collapse")
    parser.add_argument("--smoke", action="store_true", help="run the experiment's CPU smoke variant")
    parser.add_argument("--report-only", action="store_true", help="do not launch; tabulate what exists")
    parser.add_argument("--no-plots", action="store_true", help="tables only (runs.csv, table.md, claims.json)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="exit 0 even when table cells are missing or runs did not complete")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    args, overrides = parser.parse_known_args(argv)
    names = experiment_names()
    if args.list or not args.experiment:
        print("\n".join(n for n in names if not n.endswith("_smoke")))
        return 0 if args.list else 2
    folder = args.experiment.removesuffix("/")
    group = [n for n in names if n.startswith(folder + "/") and n.endswith("_smoke") == args.smoke]
    if group and folder + ("_smoke" if args.smoke else "") not in names:
        return run_group(folder, group, overrides, args.report_only, not args.no_plots, args.allow_partial)
    name = args.experiment.removesuffix(".yaml") + ("_smoke" if args.smoke else "")
    if name not in names:
        full = [n for n in names if not n.endswith("_smoke")]
        print(f"error: no experiment {name!r} (conf/experiment/{name}.yaml); experiments: {', '.join(full)}",
              file=sys.stderr)
        return 2
    try:
        sweep_dir, spec = sweep_dir_of(name, overrides)
    except (ConfigError, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_one(name, sweep_dir, spec, overrides, args.report_only, not args.no_plots, args.allow_partial)


def run_one(name: str, sweep_dir: Path, spec: ReportSpec, overrides: list[str], report_only: bool,
            plots: bool = True, allow_partial: bool = False) -> int:
    """Check a claims experiment's arms, run its sweep (unless ``report_only``) and report it; the exit status."""
    start = time.monotonic()
    code = 0
    if spec.claims and not report_only:
        try:
            bad = {k: v for k, v in check_arms(name, overrides).items() if v}
        except (ConfigError, HydraException) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if bad:
            for cid, keys in bad.items():
                print(f"error: claim {cid!r} of {name}: its arms also differ in {', '.join(keys)}, which the claim "
                      "does not name (report.claims[].differs); a comparison must change only what it is about",
                      file=sys.stderr)
            return 2
    if not report_only:
        cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={name}", f"hydra.sweep.dir={sweep_dir}",
               *overrides]
        print("+ " + " ".join(cmd), flush=True)
        code = subprocess.run(cmd, cwd=ROOT).returncode
        if code not in (0, 1):  # 1: some job did not complete (the table lists it); anything else: no sweep
            print(f"error: the sweep exited with {code}; no table written", file=sys.stderr)
            return code
    try:
        text, gaps = report(name, sweep_dir, spec, wall_s=None if report_only else time.monotonic() - start,
                            plots=plots, overrides=overrides, report_only=report_only)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text)
    print(f"table, runs.csv and plots in {sweep_dir}")
    if any(gaps) and not allow_partial:
        print(f"{name}: the table is partial ({gaps[0]} missing cell(s), {gaps[1]} run(s) not completed; listed "
              "above); exit 1 (--allow-partial accepts a partial table)", file=sys.stderr)
        return max(code, 1)
    return code


def run_group(folder: str, names: list[str], overrides: list[str], report_only: bool, plots: bool = True,
              allow_partial: bool = False) -> int:
    """Run (or, with ``report_only``, tabulate) every experiment of ``folder`` in turn, then write
    ``<output_dir>/experiments/<folder>/summary.md``; the worst exit status of its experiments."""
    start = time.monotonic()
    codes, records, out_dir = [], [], None
    for name in names:
        try:
            sweep_dir, spec = sweep_dir_of(name, overrides)
        except (ConfigError, HydraException) as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            codes.append(2)
            continue
        out_dir = sweep_dir.parent
        print(f"=== {name}", flush=True)
        codes.append(run_one(name, sweep_dir, spec, overrides, report_only, plots, allow_partial))
        record = sweep_dir / "claims.json"
        if record.exists():
            records.append(json.loads(record.read_text()))
    if out_dir is not None and records:  # a folder of claims experiments
        text = summary_markdown(records, None if report_only else time.monotonic() - start)
        atomic_write_bytes(out_dir / "summary.md", text.encode())
        print(text)
        print(f"summary in {out_dir / 'summary.md'}")
    return max(codes, default=0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the sweep's jobs wrote their checkpoints; the same command continues
        print("interrupted (Ctrl-C); run the same command to continue (completed runs are skipped)", file=sys.stderr)
        sys.exit(130)
