"""The ``ticketlab`` command (installed with the package): small tools around the runs ``train.py`` makes.

    ticketlab runs                          # every run under outputs/runs, newest first
    ticketlab runs pruner.name=snip seed=0  # filtered by config keys (or summary fields: status=failed)
    ticketlab runs --root /scratch/outputs --csv runs.csv
    ticketlab export RUN_DIR [--out DIR]    # the found ticket as plain PyTorch files (scripts/export_ticket.py)

Exit status: 0 (``runs``: at least one run listed), 1 no run matched, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from ticketlab.errors import ConfigError


def _runs(args: argparse.Namespace) -> int:
    from ticketlab.runs import COLUMNS, format_table, list_runs, parse_filters

    root = args.root if args.root is not None else Path(os.environ.get("TICKETLAB_OUTPUTS") or "outputs")
    root = root / "runs" if (root / "runs").is_dir() else root
    try:
        rows = list_runs(root, parse_filters(args.filters))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    if not rows:
        print(f"no run under {root}" + (f" matches {' '.join(args.filters)}" if args.filters else ""),
              file=sys.stderr)
        return 1
    print(format_table(rows))
    print(f"{len(rows)} run(s) under {root}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ticketlab.export import export

    out = args.out or args.run_dir / "export"
    try:
        info = export(args.run_dir, out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ticket of {info['source']}: {info['kept']} of {info['prunable']} prunable weights kept "
          f"(sparsity {info['sparsity']:.4f}, density {info['density']:.4f}), test_acc {info['test_acc']}")
    print(f"wrote {out / 'state_dict.pt'}, {out / 'masks.pt'}, {out / 'ticket.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand and run it; returns the exit status."""
    parser = argparse.ArgumentParser(prog="ticketlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", help="list runs with their status, method, density and test accuracy")
    runs.add_argument("filters", nargs="*", help="KEY=VALUE on the run's config or summary (pruner.name=snip)")
    runs.add_argument("--root", type=Path, help="output folder (default: $TICKETLAB_OUTPUTS, else outputs)")
    runs.add_argument("--csv", type=Path, help="also write the listing to this CSV file")
    runs.set_defaults(fn=_runs)
    exp = sub.add_parser("export", help="write a run's ticket as plain PyTorch files")
    exp.add_argument("run_dir", type=Path, help="a completed run's folder (an IMP run's or one of its levels')")
    exp.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/export)")
    exp.set_defaults(fn=_export)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
