"""The figures of an experiment (matplotlib, each as PNG and PDF), from the tidy table of
:func:`ticketlab.sweeps.experiments.collect`.

* ``accuracy_vs_density``: the metric against the configured density (log axis), one line per table row
  (method) with its std band, the paper's points overlaid (Ramanujan et al. 2020, Fig. 2; Tanaka et al. 2020,
  Fig. 6 style); the measured density is in the table and ``runs.csv``;
* ``layer_density``: per-layer density bars per method at one density (Tanaka et al. 2020, Fig. 3 style);
  layers pruned to nothing are drawn at zero and marked "empty";
* ``effective_sparsity``: nominal vs effective sparsity (weights cut off every input-output path count as
  removed; Vysogorets & Kempe 2023, "Connectivity Matters");
* ``mask_diversity``: Jaccard similarity of the masks of every pair of runs at one density (a heat map, the
  pairwise view of ``scripts/compare_masks.py``);
* ``layer_collapse`` (``kind=collapse``): fraction of runs with an empty layer against the compression exponent.

Axes are fixed by the experiment, not zoomed to the data, so two plots of one sweep compare: the density axis
spans the decades of the configured densities up to 1, accuracies 0-100 % (0-1), densities and similarities
0-1. Legends name methods by value and other row keys by their last component (``rate=0.1``).

Every function returns the paths it wrote (none when the table holds nothing to plot).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ticketlab.files import UnsafeFileError, load_tensors  # noqa: E402
from ticketlab.sparsity.similarity import compare_mask_sets  # noqa: E402
from ticketlab.sweeps.experiments import ReportSpec, summary_frame  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _label(key: Any, spec: ReportSpec) -> str:
    """``conv4, scale_fan=True``: values of ``*.name`` keys alone, others as ``<last part of the key>=value``
    (the full key where two row keys end alike)."""
    values = key if isinstance(key, tuple) else (key,)
    short = [k.rsplit(".", 1)[-1] for k in spec.rows]
    names = [s if short.count(s) == 1 else k for k, s in zip(spec.rows, short, strict=True)]
    return ", ".join(str(v) if k.endswith(".name") else f"{n}={v}"
                     for k, n, v in zip(spec.rows, names, values, strict=True))


def _density_limits(df: pd.DataFrame) -> tuple[float, float]:
    """The x range of a density axis: whole decades around every configured density of the sweep, up to 1."""
    t = pd.to_numeric(df.get("target_density", pd.Series(dtype=float)), errors="coerce")
    t = t[t > 0]
    lo = 10 ** math.floor(math.log10(float(t.min()))) if not t.empty else 1e-3
    return (lo if lo < 1 else 0.1), 1.0


def _row_label(r: pd.Series, spec: ReportSpec) -> str:
    return _label(tuple(r[k] for k in spec.rows), spec)


def _completed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "completed"] if "status" in df.columns else df.iloc[0:0]


def accuracy_vs_density(df: pd.DataFrame, spec: ReportSpec, paper: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Mean metric (± std band) against the configured density, log x axis; the paper's values as open
    markers where the paper's rows give a sparsity, density or level column. Plotting against the measured
    density would let a one-weight difference move a point; that density is in the table instead."""
    if spec.kind == "collapse":
        return []
    cells = summary_frame(df, spec, paper)
    x = "target_density" if "target_density" in cells and cells["target_density"].notna().any() else "density"
    if cells.empty or x not in cells or cells[x].isna().all():
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, g in cells.groupby(spec.rows, sort=False):
        label = _label(label, spec)
        g = g.sort_values(x)
        line, = ax.plot(g[x], g["mean"], marker="o", label=f"ours: {label}")
        if g["std"].notna().any():
            ax.fill_between(g[x], g["mean"] - g["std"].fillna(0), g["mean"] + g["std"].fillna(0),
                            color=line.get_color(), alpha=0.2)
        p = g.dropna(subset=["paper"])
        if not p.empty:
            ax.plot(p[x], p["paper"], linestyle="none", marker="s", markerfacecolor="none",
                    color=line.get_color(), label=f"paper: {label}")
    ax.set_xscale("log")
    ax.set_xlim(*_density_limits(df))
    ax.set_ylim(0, 100 if spec.percent else 1)
    ax.set_xlabel("density (fraction of weights kept, as configured; log scale)")
    ax.set_ylabel(f"{spec.metric} (%)" if spec.percent else spec.metric)
    ax.set_title(spec.name, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "accuracy_vs_density")


def _pick_column(ok: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """The completed runs at the sparsest column value (the target density when the table has no column) that
    every row reached (or the sparsest at all)."""
    if ok.empty:
        return ok
    col = spec.cols[0] if spec.cols else "target_density"
    if col not in ok:
        return ok
    by_density = ok.groupby(col)["density"].mean().sort_values()
    rows_per_col = ok.groupby(col).apply(lambda g: g[spec.rows].drop_duplicates().shape[0], include_groups=False)
    full = [c for c in by_density.index if rows_per_col.get(c, 0) == rows_per_col.max()]
    return ok[ok[col] == (full[0] if full else by_density.index[0])]


def layer_density(df: pd.DataFrame, spec: ReportSpec, out_dir: Path) -> list[Path]:
    """Per-layer density bars, one group of bars per method, at the sparsest density all methods reached."""
    ok = _pick_column(_completed(df), spec)
    if ok.empty or "layer_densities" not in ok:
        return []
    per: dict[str, dict[str, list[float]]] = {}
    for _, r in ok.iterrows():
        dens = json.loads(r["layer_densities"]) if isinstance(r["layer_densities"], str) else {}
        for layer, d in dens.items():
            per.setdefault(_row_label(r, spec), {}).setdefault(layer, []).append(d)
    if not per:
        return []
    layers = list(dict.fromkeys(layer for v in per.values() for layer in v))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) * max(1, len(per)) / 2), 4))
    width = 0.8 / len(per)
    floor = 1e-4  # the symlog axis is linear below this, so a layer at density 0 stays on the plot
    for i, (label, d) in enumerate(per.items()):
        xs = [j + i * width for j in range(len(layers))]
        heights = [sum(d.get(layer, [math.nan])) / len(d.get(layer, [1])) for layer in layers]
        bars = ax.bar(xs, heights, width, label=label)
        empty = [x for x, h in zip(xs, heights, strict=True) if h == 0]
        if empty:  # pruned to nothing: the layers that matter most in a collapse plot
            ax.plot(empty, [floor / 2] * len(empty), linestyle="none", marker="x", markersize=7,
                    color=bars.patches[0].get_facecolor())
            for x in empty:
                ax.annotate("empty", (x, floor / 2), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize=5, rotation=90)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=6)
    ax.set_yscale("symlog", linthresh=floor)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"layer density (log scale above {floor:g}; 0 = empty layer)")
    target = ok["target_density"].mean() if "target_density" in ok else math.nan
    ax.set_title(f"{spec.name}: per-layer density at overall density {target:.3g}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "layer_density")


def effective_sparsity(df: pd.DataFrame, spec: ReportSpec, out_dir: Path) -> list[Path]:
    """Nominal sparsity (x) against effective sparsity (y) per method; the diagonal is 'no disconnected weight'."""
    ok = _completed(df)
    if ok.empty or "effective_sparsity" not in ok or ok["effective_sparsity"].isna().all():
        return []
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, g in ok.groupby(spec.rows, sort=False):
        label = _label(label, spec)
        ax.plot(g["sparsity"], g["effective_sparsity"], linestyle="none", marker="o", alpha=0.7, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal sparsity (fraction removed)")
    ax.set_ylabel("effective sparsity")
    ax.set_title(f"{spec.name}: nominal vs effective sparsity", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "effective_sparsity")


def mask_diversity(df: pd.DataFrame, spec: ReportSpec, out_dir: Path, max_runs: int = 24) -> list[Path]:
    """Heat map of the Jaccard similarity (all masked tensors together) between the masks of every pair of
    completed runs at the sparsest density all methods reached (at most ``max_runs`` runs)."""
    ok = _pick_column(_completed(df), spec)
    if "level" in ok and ok["level"].notna().any():
        ok = ok[ok["level"] == ok["level"].max()]
    runs = []
    for _, r in ok.iterrows():
        path = Path(str(r["run_dir"])) / "masks.pt"
        if path.exists():
            runs.append((f"{_row_label(r, spec)} s{r.get('seed', '')}", path))
    runs = runs[:max_runs]
    if len(runs) < 2:
        return []
    masks, readable = [], []
    for run in runs:
        try:
            saved = load_tensors(run[1])  # tensors and plain values only: no code in the file runs
        except (UnsafeFileError, OSError, RuntimeError) as e:
            log.warning("mask similarity: %s is left out (%s)", run[1], e)
            continue
        masks.append(saved.get("masks", {}) if isinstance(saved, dict) else {})
        readable.append(run)
    runs = readable
    if len(runs) < 2:
        return []
    n = len(runs)
    sim = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            try:
                sim[i][j] = sim[j][i] = compare_mask_sets(masks[i], masks[j])["all"].jaccard
            except ValueError:  # different architectures: not comparable
                sim[i][j] = sim[j][i] = math.nan
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * n, 1 + 0.35 * n))
    im = ax.imshow(sim, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([r[0] for r in runs], rotation=70, ha="right", fontsize=6)
    ax.set_yticklabels([r[0] for r in runs], fontsize=6)
    fig.colorbar(im, ax=ax, label="Jaccard similarity")
    ax.set_title(f"{spec.name}: mask similarity", fontsize=9)
    return _save(fig, out_dir, "mask_diversity")


def layer_collapse(df: pd.DataFrame, spec: ReportSpec, out_dir: Path) -> list[Path]:
    """``kind=collapse``: fraction of runs with at least one empty layer against the compression exponent."""
    ok = _completed(df)
    if spec.kind != "collapse" or ok.empty:
        return []
    ok = ok.assign(x=(-pd.to_numeric(ok["target_density"]).map(math.log10)).round(4),
                   collapsed=(ok["empty_layers"] > 0).astype(float))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, g in ok.groupby(spec.rows, sort=False):
        label = _label(label, spec)
        m = g.groupby("x")["collapsed"].mean()
        ax.plot(m.index, m.values, marker="o", label=label)
    ax.set_xlabel("compression exponent x (density 10^-x)")
    ax.set_ylabel("fraction of runs with an empty layer")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{spec.name}: layer collapse", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "layer_collapse")


def all_plots(df: pd.DataFrame, spec: ReportSpec, paper: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Every figure that the table can feed; returns the files written."""
    out: list[Path] = []
    out += accuracy_vs_density(df, spec, paper, out_dir)
    out += layer_collapse(df, spec, out_dir)
    out += layer_density(df, spec, out_dir)
    out += effective_sparsity(df, spec, out_dir)
    out += mask_diversity(df, spec, out_dir)
    return out


__all__ = ["accuracy_vs_density", "all_plots", "effective_sparsity", "layer_collapse", "layer_density",
           "mask_diversity"]
