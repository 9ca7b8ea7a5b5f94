"""Chaos test of resume: kill runs at random moments, run the same command again, compare with twins.

    python scripts/chaos.py                      # N = 20 runs, 2 at a time, on digits and MNIST
    python scripts/chaos.py --n 5 --seed 3 --out outputs/chaos-small

For each of N runs drawn from a mix of every method (strong tickets, pruning at initialization,
K-starts during selection, epsilon-perturbation in its projected-SGD phase, IMP across levels) on
digits and MNIST with small settings:

1. a **twin** runs uninterrupted (``paths.output_dir=<out>/twins``);
2. the **same command** runs in ``<out>/chaos``, is killed once or twice at a random moment
   (uniform over the twin's duration) by SIGKILL or SIGTERM, and is launched again, unchanged,
   until it exits 0 -- what a scheduler requeue does;
3. the final ``summary.json`` (test accuracy, sparsity), every ``masks.pt`` and the metric history
   (without timings) must equal the twin's, bit for bit (one CPU thread per run).

Prints a Markdown table (one row per run) and a verdict; exits 1 if any run differs. A tool, not a
test: it takes minutes (``DATA_DIR`` must point at the MNIST copy, e.g. ``make data``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["logger=none", "trainer.progress=false", "trainer.threads=1"]
KN = ["init=kaiming_normal", "optimizer.lr=0.05"]
EVERY_03S = "trainer.checkpoint_every_min=0.005"  # a checkpoint every ~0.3 s inside epochs
POOL: list[tuple[str, list[str]]] = [
    ("edge_popup digits", ["trainer.epochs=150"]),
    ("edge_popup digits, mid-epoch checkpoints", ["trainer.epochs=150", EVERY_03S]),
    ("biprop digits", ["pruner=biprop", "init=kaiming_normal", "init.scale_fan=true", "trainer.epochs=150"]),
    ("iterand digits", ["pruner=iterand", "pruner.period=20", "trainer.epochs=150"]),
    ("weight_recycling digits", ["pruner=weight_recycling", "pruner.every=5", "trainer.epochs=150"]),
    ("eps_perturbation digits (long phase A)", ["pruner=eps_perturbation", "pruner.phase_a_epochs=150",
                                                "trainer.epochs=20", EVERY_03S]),
    ("kstarts digits (long selection)", ["pruner=kstarts", "pruner.k=4", "pruner.selection_epochs=40",
                                         "trainer.epochs=10", EVERY_03S, *KN]),
    ("kstarts + dissipating digits", ["pruner=kstarts", "pruner.dissipating=true", "pruner.k=3",
                                      "pruner.selection_epochs=20", "pruner.epochs_to_prune=20", "trainer.epochs=80",
                                      *KN]),
    ("dissipating_gradients digits", ["pruner=dissipating_gradients", "pruner.epochs_to_prune=40",
                                      "trainer.epochs=120", *KN]),
    ("random digits", ["pruner=random", "trainer.epochs=120", *KN]),
    ("magnitude digits", ["pruner=magnitude", "trainer.epochs=120", *KN]),
    ("snip digits", ["pruner=snip", "trainer.epochs=120", *KN]),
    ("grasp digits", ["pruner=grasp", "trainer.epochs=120", *KN]),
    ("synflow digits", ["pruner=synflow", "trainer.epochs=120", *KN]),
    ("phew digits", ["pruner=phew", "trainer.epochs=120", *KN]),
    ("imp digits (4 levels)", ["pruner=imp", "pruner.levels=4", "trainer.epochs=30", *KN]),
    ("edge_popup mnist", ["dataset=mnist", "model=lenet300_100", "trainer.epochs=5", EVERY_03S]),
    ("snip mnist", ["dataset=mnist", "model=lenet300_100", "pruner=snip", "trainer.epochs=5", *KN]),
    ("eps_perturbation mnist", ["dataset=mnist", "model=lenet300_100", "pruner=eps_perturbation",
                                "pruner.phase_a_steps=1500", "trainer.epochs=3", EVERY_03S]),
    ("imp mnist (2 levels)", ["dataset=mnist", "model=lenet300_100", "pruner=imp", "pruner.levels=2",
                              "trainer.epochs=2", "trainer.limit_train_batches=300", EVERY_03S, *KN]),
]


def command(overrides: list[str], out: Path) -> list[str]:
    return [sys.executable, "train.py", *overrides, *COMMON, f"paths.output_dir={out}"]


def run_folder(out: Path) -> Path:
    """The only run folder under ``<out>/runs``."""
    (folder,) = [p for p in (out / "runs").iterdir() if ".moved-" not in p.name]
    return folder


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "WANDB_SILENT": "true"})


def where(out: Path) -> str:
    """Where the newest checkpoint of the run under ``out`` stands (``-`` when there is none)."""
    try:
        ckpts = sorted((out / "runs").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not ckpts:
            return "no checkpoint"
        c = torch.load(ckpts[-1], weights_only=True, map_location="cpu")
        stage = ckpts[-1].parent.name if ckpts[-1].parent.name.startswith("level_") else ""
        inside = f"+{c['position']['batch']} batches" if c.get("position") else ""
        return f"{stage + ' ' if stage else ''}{c['phase']} ep {c['epoch']}{inside}"
    except Exception as e:  # a report must not fail
        return f"? ({type(e).__name__})"


def fingerprint(folder: Path) -> dict:
    """What must not depend on interruptions: summaries, masks and histories of the run (and its stages)."""
    out = {}
    for summary in sorted(folder.rglob("summary.json")):
        if "attempts" in summary.parts:
            continue
        rel = str(summary.parent.relative_to(folder)) or "."
        s = json.loads(summary.read_text())
        out[f"{rel}:summary"] = (s.get("status"), s.get("test_acc"), s.get("sparsity"), s.get("params_remaining"))
        masks = summary.parent / "masks.pt"
        if masks.exists():
            m = torch.load(masks, weights_only=True)["masks"]
            out[f"{rel}:masks"] = {k: v.to(torch.uint8).flatten().tolist() for k, v in m.items()}
        metrics = summary.parent / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            out[f"{rel}:history"] = [{k: v for k, v in r.items() if k not in ("epoch_s", "images_per_s")}
                                     for r in rows]
    return out


def one(i: int, name: str, overrides: list[str], root: Path, rng: random.Random) -> dict:
    twin_out, chaos_out = root / "twins" / str(i), root / "chaos" / str(i)
    twin_out.mkdir(parents=True, exist_ok=True)
    chaos_out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    p = launch(command(overrides, twin_out), twin_out / "stdout.log")
    p.wait()
    duration = time.perf_counter() - t0
    kills, launches = [], 0
    plan = [rng.choice([signal.SIGKILL, signal.SIGTERM]) for _ in range(rng.choice([1, 2]))]
    code = None
    for sig in [*plan, None]:
        launches += 1
        p = launch(command(overrides, chaos_out), chaos_out / "stdout.log")
        if sig is None:
            code = p.wait()
            break
        delay = rng.uniform(0.15, 0.95) * duration
        try:
            code = p.wait(timeout=delay)  # finished before the kill: nothing left to interrupt
            kills.append(f"(done before {signal.Signals(sig).name}@{delay:.1f}s)")
            break
        except subprocess.TimeoutExpired:
            p.send_signal(sig)
            rc = p.wait()
            kills.append(f"{signal.Signals(sig).name}@{delay:.1f}s->{rc} [{where(chaos_out)}]")
    twin_fp, chaos_fp = fingerprint(run_folder(twin_out)), fingerprint(run_folder(chaos_out))
    ts, cs = json.loads((run_folder(twin_out) / "summary.json").read_text()), \
        json.loads((run_folder(chaos_out) / "summary.json").read_text())
    record = json.loads((run_folder(chaos_out) / "run.json").read_text()) if \
        (run_folder(chaos_out) / "run.json").exists() else {}
    return {"i": i, "name": name, "kills": kills, "launches": launches, "final_exit": code,
            "twin_status": ts.get("status"), "status": cs.get("status"), "twin_acc": ts.get("test_acc"),
            "acc": cs.get("test_acc"), "sparsity": cs.get("sparsity"), "twin_sparsity": ts.get("sparsity"),
            "attempts": len(record.get("attempts", [])) or cs.get("attempts"), "twin_s": duration,
            "identical": twin_fp == chaos_fp and bool(twin_fp),
            "differs": sorted(k for k in set(twin_fp) | set(chaos_fp) if twin_fp.get(k) != chaos_fp.get(k))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="number of runs (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="draws the runs, kill times and signals")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "chaos", help="output folder (emptied first)")
    args = ap.parse_args()
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    rng = random.Random(args.seed)
    picks = [POOL[i % len(POOL)] for i in range(args.n)]
    rng.shuffle(picks)
    jobs = [(i, name, [*ov, f"seed={args.seed * 1000 + i}"], random.Random(rng.random()))
            for i, (name, ov) in enumerate(picks)]
    t = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: one(j[0], j[1], j[2], args.out, j[3]), jobs))
    lines = ["| # | run | kills (signal@time->exit code [last checkpoint]) | launches | attempts | twin test_acc "
             "| resumed test_acc | sparsity | identical |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['i']} | {r['name']} | {', '.join(r['kills'])} | {r['launches']} | {r['attempts']} | "
                     f"{r['twin_acc']} | {r['acc']} | {r['sparsity']} | "
                     f"{'yes' if r['identical'] else 'NO: ' + ', '.join(r['differs'][:3])} |")
    same = sum(r["identical"] for r in results)
    print("\n".join(lines))
    print(f"\n{same}/{len(results)} runs identical to their uninterrupted twins (summaries, masks, histories); "
          f"{sum(len([k for k in r['kills'] if not k.startswith('(')]) for r in results)} kills; "
          f"{time.perf_counter() - t:.0f} s.")
    (args.out / "chaos.json").write_text(json.dumps(results, indent=2))
    return 0 if same == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
