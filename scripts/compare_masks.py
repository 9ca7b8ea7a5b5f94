"""Mask diversity between runs: percent-same and Jaccard per layer, next to their chance values.

    python scripts/compare_masks.py outputs/multiruns/2026-11-22/10-00-00/{0,1,2,3,4}
    python scripts/compare_masks.py RUN_A RUN_B --csv pairs.csv

Reads each run folder's ``masks.pt`` (written by every run) and prints, for every pair of runs and
every masked tensor, percent-same (1 - normalized Hamming) and Jaccard, with the values expected
for independent random masks of the same densities, ``k^2 + (1-k)^2`` and ``k / (2 - k)``; then the
mean over pairs. Also reports whether the runs share their weight seed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import sys
from pathlib import Path

from ticketlab.files import UnsafeFileError, load_tensors
from ticketlab.sparsity.similarity import compare_mask_sets


def main(argv: list[str] | None = None) -> int:
    """Compare the masks of the given run folders; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding masks.pt")
    parser.add_argument("--csv", type=Path, help="also write one row per (pair, tensor) to this CSV file")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two run folders")
    loaded = {}
    for run in args.runs:
        path = run / "masks.pt"
        if not path.exists():
            parser.error(f"{path} does not exist (every TicketLab run writes masks.pt at its end)")
        try:
            loaded[run] = load_tensors(path)  # tensors and plain values only: no code in the file runs
        except (UnsafeFileError, OSError, RuntimeError) as e:
            parser.error(str(e))
    seeds = {str(r): (m["weight_seed"], m["score_seed"]) for r, m in loaded.items()}
    same_weights = len({w for w, _ in seeds.values()}) == 1
    print("runs (weight seed, score seed):")
    for r, (w, s) in seeds.items():
        print(f"  {r}: ({w}, {s})")
    print(f"same weight seed: {'yes' if same_weights else 'no'}\n")
    rows = []
    for a, b in itertools.combinations(args.runs, 2):
        sims = compare_mask_sets(loaded[a]["masks"], loaded[b]["masks"])
        print(f"{a.name} vs {b.name}")
        print(f"  {'tensor':32s} {'density':>8s} {'pct-same':>9s} {'chance':>7s} {'jaccard':>8s} {'chance':>7s}")
        for name, s in sims.items():
            print(f"  {name:32s} {s.density_a:8.4f} {s.percent_same:9.4f} {s.chance_percent_same:7.4f} "
                  f"{s.jaccard:8.4f} {s.chance_jaccard:7.4f}")
            rows.append({"run_a": str(a), "run_b": str(b), "tensor": name, "density_a": s.density_a,
                         "density_b": s.density_b, "percent_same": s.percent_same,
                         "chance_percent_same": s.chance_percent_same, "jaccard": s.jaccard,
                         "chance_jaccard": s.chance_jaccard})
    print(f"\nmean over {len(rows) // max(1, len({r['tensor'] for r in rows}))} pairs:")
    print(f"  {'tensor':32s} {'pct-same':>15s} {'chance':>7s} {'jaccard':>15s} {'chance':>7s}")
    for name in dict.fromkeys(r["tensor"] for r in rows):
        sel = [r for r in rows if r["tensor"] == name]
        ps, jc = [r["percent_same"] for r in sel], [r["jaccard"] for r in sel]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
        print(f"  {name:32s} {statistics.mean(ps):7.4f} ± {sd(ps):.4f} {sel[0]['chance_percent_same']:7.4f} "
              f"{statistics.mean(jc):7.4f} ± {sd(jc):.4f} {sel[0]['chance_jaccard']:7.4f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
