"""An experiment's table as Markdown, in the paper's layout: ours as mean ± std (n) over seeds beside the
paper's number and the difference, every planned cell (``missing`` where no run completed), the claims, the
runs that did not complete and the notes on what differs from the paper (none for a smoke variant, which
names the setting it ran instead). The numbers come from :func:`ticketlab.sweeps.experiments.summary_frame`.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from ticketlab.sweeps.claims import claims_markdown, completed
from ticketlab.sweeps.comparisons import evaluate_claims, row_difference_lines, versus_baseline
from ticketlab.sweeps.experiments import ReportSpec, _fmt, matching_level, summary_frame


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _num(x: float, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def not_completed(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose run did not complete (failed, diverged, invalid, stopped, never ran)."""
    if df.empty:
        return df
    return df[df["status"] != "completed"]


def _collapse_table(cells: pd.DataFrame, spec: ReportSpec) -> str:
    """Layer collapse: the largest compression exponent without an empty layer, against the paper's."""
    t = pd.DataFrame({**{k: cells[k] for k in spec.rows},
                      "ours: largest x without an empty layer": [
                          _fmt(m, s, n, False) for m, s, n in zip(cells["mean"], cells["std"], cells["n"],
                                                                  strict=True)],
                      "largest x tested": cells["tested_max_x"].map(_num),
                      "paper": [_num(p) + ("" if math.isnan(s) else f" ± {s:.2f}")
                                for p, s in zip(cells["paper"], cells["paper_std"], strict=True)],
                      "Δ": cells["diff"].map(_num)})
    if cells["paper"].isna().all():  # no paper number for this setting (a smoke run): no paper column
        t = t.drop(columns=["paper", "Δ"])
    return _md(t)


def _cell_text(c: pd.DataFrame, spec: ReportSpec) -> str:
    """One cell: ours as mean ± std (n), and the paper's number with the difference when there is one."""
    if c.empty:
        return "—"
    r = c.iloc[0]
    mark = "†" if bool(r.get("partial_eval", False)) else ""
    text = mark + _fmt(r["mean"] / 100 if spec.percent else r["mean"], r["std"] / 100 if spec.percent
                else r["std"], int(r["n"]), spec.percent)
    if not math.isnan(r["paper"]):
        text += f"; paper {r['paper']:.2f}; Δ {r['diff']:+.2f}"
    return text


def _grid_table(cells: pd.DataFrame, spec: ReportSpec, df: pd.DataFrame | None = None) -> str:
    """Rows by ``spec.rows``, one column per value of ``spec.cols[0]`` (IMP levels: ``L<k>``). Every row and
    column of the grid that ``df`` plans is shown; a cell without a completed run reads ``missing``."""
    col = spec.cols[0] if spec.cols else None
    grid = _grid_points(df, spec) if df is not None else None
    rows_labels = (grid if grid is not None and not grid.empty else cells)[spec.rows].drop_duplicates()
    table = []
    source = grid if grid is not None and not grid.empty else cells
    col_values = [v for v in dict.fromkeys(source[col]) if isinstance(v, str) and v] if col else [None]
    for _, rl in rows_labels.iterrows():
        rec = {k: rl[k] for k in spec.rows}
        for cv in col_values:
            m = (cells[spec.rows] == rl[spec.rows]).all(axis=1) if not cells.empty else pd.Series(dtype=bool)
            if col and not cells.empty:
                m &= cells[col] == cv
            c = cells[m] if not cells.empty else cells
            head = (f"L{cv}" if col == "level" else f"{col}={cv}") if col else spec.metric
            if col == "level" and len(rows_labels) == 1 and not c.empty and not math.isnan(c["density"].iloc[0]):
                head = f"L{cv} (d={c['density'].iloc[0]:.3f})"
            rec[head] = _cell_text(c, spec) if not c.empty else MISSING
            if spec.baseline and df is not None and not c.empty:
                rec[head] += versus_baseline(df, spec, {k: rl[k] for k in spec.rows}, col, cv)
        table.append(rec)
    return _md(pd.DataFrame(table))


#: What a table cell without any completed run reads.
MISSING = "missing"


def _grid_points(df: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """The grid's row (and column) labels of every job in ``df``, completed or not (levels: as strings)."""
    keys = [k for k in [*spec.rows, *spec.cols] if k in df.columns]
    if df.empty or len(keys) < len(spec.rows) + len(spec.cols):
        return pd.DataFrame(columns=[*spec.rows, *spec.cols])
    g = df[keys].copy()
    if "level" in g:
        g["level"] = g["level"].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                    else str(int(v)))
    return g.dropna(subset=list(spec.rows))


def missing_cells(df: pd.DataFrame, spec: ReportSpec) -> list[str]:
    """The grid cells (``row keys [| column]``) of ``df``'s jobs without any completed run: a table with them is
    partial (``reproduce.py`` then exits 1 unless ``--allow-partial``)."""
    grid = _grid_points(df, spec)
    ok = _grid_points(completed(df), spec) if not df.empty else grid
    done = {tuple(r) for r in ok.itertuples(index=False)}
    out = []
    for r in grid.drop_duplicates().itertuples(index=False):
        if spec.cols and spec.cols[0] == "level" and r[-1] == "":  # an IMP run's own row, not a level:
            if not any(d[:-1] == tuple(r)[:-1] for d in done):  # missing only when no level of it completed
                out.append(", ".join(f"{k}={v}" for k, v in zip(spec.rows, r[:-1], strict=True)) + ", every level")
            continue
        if tuple(r) not in done:
            out.append(", ".join(f"{k}={v}" for k, v in zip([*spec.rows, *spec.cols], r, strict=True)))
    return out


def _levels_notes(cells: pd.DataFrame, spec: ReportSpec, paper: pd.DataFrame) -> list[str]:
    """IMP: the measured density per level and the sparsest level matching the dense network."""
    dens = cells.groupby("level", sort=False)["density"].mean()
    out = ["", "Measured density of all prunable weights per level: "
           + ", ".join(f"L{lv} {d:.4f}" for lv, d in dens.items())]
    ml = matching_level(cells, spec)
    if not ml.empty:
        paper_md = paper[paper.get("level", pd.Series(dtype=str)) == "matching_density"] \
            if "level" in paper.columns else paper.iloc[0:0]
        out += ["", "Sparsest matching level (mean ≥ dense mean − dense std):", ""]
        ml = ml.assign(paper_matching_density=(float(paper_md["value"].iloc[0]) if not paper_md.empty
                                               else math.nan))
        out.append(_md(ml.assign(**{c: ml[c].map(lambda v: _num(v, 4) if isinstance(v, float) else v)
                                    for c in ml.columns})))
    return out


def _not_completed_lines(df: pd.DataFrame) -> list[str]:
    bad = not_completed(df)
    out = ["", f"Runs not completed: {len(bad)}" + (" (not in the numbers above)" if len(bad) else "")]
    for _, r in bad.iterrows():
        where = r.get("run_dir") if isinstance(r.get("run_dir"), str) else ""
        out.append(f"- job {r['job']} {r['overrides']}: {r['status']}"
                   + (f" — {r['reason']}" if isinstance(r.get("reason"), str) and r.get("reason") else "")
                   + (f" [{where}]" if where else ""))
    return out


def markdown_table(df: pd.DataFrame, spec: ReportSpec, paper: pd.DataFrame) -> str:
    """The paper's layout as Markdown: ours as mean ± std (n) over seeds, the paper's number and the
    difference, then the runs that did not complete and the notes on what differs from the paper."""
    cells = summary_frame(df, spec, paper)
    unit = "compression exponent x (density 10^-x)" if spec.kind == "collapse" else \
        f"{spec.metric}{' (%)' if spec.percent else ''}"
    versus = ("; \"vs baseline\": the paired difference to the baseline row by seed, with its 95 % t interval"
              if spec.baseline else "")
    if spec.smoke_of:
        ran = completed(df)
        if not ran.empty and {"model", "dataset"} <= set(ran.columns):  # what the runs themselves say
            pairs = ran[["model", "dataset"]].dropna().drop_duplicates()
            if not pairs.empty:
                spec = dataclasses.replace(spec, setting="; ".join(f"{m} on {d}" for m, d in pairs.itertuples(
                    index=False)))
        out = [f"## {spec.name}: smoke run of {spec.smoke_of}" + (f" on {spec.setting}" if spec.setting else ""), "",
               f"A reduced CPU check that {spec.smoke_of}'s code path runs end to end"
               + (f" ({spec.setting}, a small grid)" if spec.setting else "") + ", not the paper's setting: "
               f"its numbers say nothing about the paper's claims, and no paper numbers are shown. "
               f"Values: {unit}; mean ± std (sample std, ddof 1) over seeds with n{versus}.", ""]
    else:
        out = [f"## {spec.name}: {spec.title}", "", f"Source: {spec.source}. Values: {unit}; ours is mean ± std "
               f"(sample std, ddof 1) over seeds with n; Δ = ours − paper{versus}.", ""]
    if cells.empty:
        out.append("No completed run yet.")
    elif spec.kind == "collapse":
        out.append(_collapse_table(cells, spec))
    else:
        out.append(_grid_table(cells, spec, df))
        if spec.kind == "levels":
            out += _levels_notes(cells, spec, paper)
    out += claims_markdown(evaluate_claims(df, spec), spec.percent)
    if not spec.claims:
        out += row_difference_lines(df, spec)
    gaps = missing_cells(df, spec) if spec.kind != "collapse" else []
    if gaps:
        out += ["", f"Missing cells: {len(gaps)} (no completed run; this table is partial)",
                *[f"- {g}" for g in gaps]]
    partial = df[df["partial_eval"].fillna(False).astype(bool)] if "partial_eval" in df.columns else df.iloc[0:0]
    if not partial.empty:
        out += ["", f"Partial evaluation: {len(partial)} run(s) were evaluated on part of the test set "
                "(trainer.limit_eval_batches); their cells are marked †."]
    out += _not_completed_lines(df)
    if spec.notes and not spec.smoke_of:
        out += ["", "Differences from the paper:", *[f"- {n}" for n in spec.notes]]
    return "\n".join(out) + "\n"


__all__ = ["MISSING", "markdown_table", "missing_cells", "not_completed"]
