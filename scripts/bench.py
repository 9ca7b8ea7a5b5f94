"""Benchmarks (not tests): training-step time, mask time of pruning at initialization, and a suite.

    python scripts/bench.py model=lenet300_100 dataset=mnist dataset.batch_size=128 trainer.threads=1
    python scripts/bench.py model=conv6 dataset=cifar10 dataset.batch_size=128
    python scripts/bench.py bench.what=pai                # PHEW on vgg19, SynFlow x100 on vgg16 (CIFAR-10 shapes)
    python scripts/bench.py bench.what=suite              # all of it, one Markdown table

``bench.what=step`` (default): for the chosen model, data and batch size, the median time of one optimizer
step (forward, backward, update) of dense training and of edge-popup (TicketLab's selection), taken in
turns (a dense step, an edge-popup step, again, each variant first in its turn) so both see the same
machine, over ``bench.instances`` identical models per variant (default 1; a convnet's memory placement
moves its step time by a few percent for the life of the process: two identical Conv-6 models stepped in
turns differed by up to 3.5 % on a 2-core CPU, so the suite pools 4 there; a small model's instances agree
within 1 %, but more models in turn evict each other from the CPU caches, which a training run never
sees: LeNet-300-100 with 4 instances per variant measured 1.27x instead of 1.24x), their ratio, the ratio to
dense training of edge-popup's masked weights (the same values: the masks' own cost, apart from what the
values do to the speed of the dense kernels),
images per second and the projected time of a 100-epoch run (100 x batches per epoch x median step; data
loading and evaluation not included). ``bench.full_sort=true`` adds edge-popup with the reference code's
full sort per step (allenai/hidden-networks ``GetSubnet``).

``bench.what=pai``: seconds to compute a PHEW mask for ``bench.phew_model`` at each of
``bench.phew_densities``, and SynFlow's ``bench.synflow_iterations`` rounds on ``bench.synflow_model`` to
``bench.synflow_density`` (Kaiming-normal init, CIFAR-10 input shape, no data needed).

``bench.what=suite``: LeNet-300-100 on MNIST at 1 and 2 threads, Conv-6 on CIFAR-10 in the channels-last
layout (``trainer.channels_last=true``, the faster one on the CPU too: 10-20 % for both variants), SynFlow and
PHEW, as one Markdown table (also in ``bench.json``).

``trainer.threads`` (0 = torch's default) sets the CPU threads; ``trainer.device`` the device. Results go to
``bench.json`` in the Hydra run folder. Uses ``train.py``'s config groups (``conf/bench.yaml``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import hydra
import torch
from hydra import compose
from omegaconf import DictConfig

import ticketlab.sparsity.masks as masks
from ticketlab import resolvers
from ticketlab.data import build_data
from ticketlab.files import atomic_write_json
from ticketlab.init.weights import init_weights
from ticketlab.models import build_model
from ticketlab.pruners import PruneContext, build_pruner
from ticketlab.runner import hydra_job
from ticketlab.runner.devices import select_device
from ticketlab.runner.validate import resolve
from ticketlab.training.loop import train_step
from ticketlab.training.optim import build_optimizer


class FullSort:
    """The reference code's selection (sort everything, keep the last k), for comparison only."""

    def __call__(self, key: torch.Tensor, k: int, nonnegative: bool = False) -> torch.Tensor:  # noqa: D102
        flat = key.detach().reshape(-1)
        out = torch.zeros_like(flat, dtype=torch.bool)
        out[flat.sort().indices[flat.numel() - k:]] = True
        return out.view_as(key)

    def reset(self) -> None:  # noqa: D102
        pass


def set_threads(threads: int) -> None:
    """``torch.set_num_threads`` when ``threads > 0``."""
    if threads > 0:
        torch.set_num_threads(threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(overrides: list[str], batch, device: torch.device, full_sort: bool = False,
              baked_from: torch.nn.Module | None = None) -> tuple[Callable[[], None], torch.nn.Module]:
    """One optimizer step of the run ``overrides`` describe, on one fixed batch, as a function (and its model).

    The step is the trainer's own (:func:`ticketlab.training.loop.train_step`, no loss check inside the step),
    under ``trainer.amp`` (bf16 autocast on CUDA), ``trainer.channels_last`` and ``trainer.compile`` as
    the trainer applies them. With ``baked_from`` (a masked model of the same architecture), the model is
    a plain one (``overrides`` should say ``pruner=dense``) whose weights are the masked weights of
    ``baked_from``: dense training on the same values, which separates the masks' own cost from what the
    values do to the dense kernels' speed.
    """
    rc = resolve(compose(config_name="bench", overrides=overrides), ("bench",))
    x, y = batch
    if rc.trainer.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    model = build_model(rc.model, tuple(x.shape[1:]), int(y.max()) + 1)
    pruner = build_pruner(rc.pruner)
    init_weights(model, rc.init, rc.seed, pruner.densities(model))
    model.to(device)
    if rc.trainer.channels_last and x.dim() == 4:
        model.to(memory_format=torch.channels_last)
    if baked_from is not None:
        with torch.no_grad():
            for (_, dst), (_, src) in zip(masks.prunable_layers(model), masks.prunable_layers(baked_from),
                                          strict=True):
                dst.weight.copy_(src.weight)
                if dst.bias is not None:
                    dst.bias.copy_(src.bias)
        trainable = list(model.parameters())
    else:
        pruner.prepare(model, PruneContext(rc.seed, rc.init, device))
        if full_sort:
            for mt in masks.masked_tensors(model):
                if isinstance(mt.mask, masks.ScoreMask):
                    mt.mask.select = FullSort()
        trainable = pruner.trainable_parameters(model)
    opt = build_optimizer(trainable, rc.optimizer)
    loss_fn = torch.nn.CrossEntropyLoss()
    use_amp = rc.trainer.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    train_model = torch.compile(model) if rc.trainer.compile else model
    model.train()
    return (lambda: train_step(train_model, (x, y), loss_fn, opt, autocast, check_loss=False)), model


def step_times(steps_by_name: dict[str, Callable[[], None]], device: torch.device, steps: int,
               warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each named step function, taken in turns (one step of each, then again, each
    function first in its turn), so that every variant sees the same state of a shared, noisy machine;
    ``warmup`` rounds are not timed."""
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    order = list(steps_by_name.items())
    for i in range(warmup + steps):
        for name, step in order[i % len(order):] + order[:i % len(order)]:  # each variant goes first in turn
            _sync(device)
            t = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def bench_step(base: list[str], steps: int, warmup: int, full_sort: bool, instances: int = 1) -> dict[str, Any]:
    """Dense vs edge-popup median step for the config ``base`` (overrides) describes (steps taken in turns).

    Each variant is built ``instances`` times (identical models: the same config and seed) and the median is
    over the steps of all of them: where a model's buffers land in memory changes its step time by a few
    percent for the life of the process, which one instance per variant would put into the ratio.
    """
    rc = resolve(compose(config_name="bench", overrides=base), ("bench",))
    set_threads(rc.trainer.threads)
    device = select_device(rc.trainer.device)
    torch.manual_seed(rc.seed)
    data = build_data(rc.dataset, device, rc.seed)
    x, y = next(iter(data.train))
    batch = (x.to(device), (y % data.num_classes).to(device))
    per_epoch = len(data.train)
    keep = [o for o in base if not o.startswith("pruner")]
    res: dict[str, Any] = {"model": rc.model.name, "dataset": rc.dataset.name, "batch_size": len(y),
                           "device": str(device), "threads": torch.get_num_threads(), "steps": steps,
                           "amp": bool(rc.trainer.amp and device.type == "cuda"),
                           "channels_last": bool(rc.trainer.channels_last), "compile": bool(rc.trainer.compile),
                           "batches_per_epoch": per_epoch}
    variants = {"dense": keep + ["pruner=dense"], "edge_popup": keep + ["pruner=edge_popup"] +
                [o for o in base if o.startswith("pruner.")]}
    res["instances"] = instances
    fns = {}
    for j in range(instances):
        fns[f"dense#{j}"] = make_step(variants["dense"], batch, device)[0]
        fns[f"edge_popup#{j}"], masked = make_step(variants["edge_popup"], batch, device)
        fns[f"same_weights#{j}"] = make_step(variants["dense"], batch, device, baked_from=masked)[0]
        if full_sort:
            fns[f"full_sort#{j}"] = make_step(variants["edge_popup"], batch, device, full_sort=True)[0]
    per_instance = step_times(fns, device, steps, warmup)
    times: dict[str, list[float]] = {}
    for key, ts in per_instance.items():
        name = key.split("#")[0]
        times.setdefault(name, []).extend(ts)
        res.setdefault(f"{name}_instances_s", []).append(statistics.median(ts))
    for name in ("dense", "edge_popup", "same_weights"):
        t = statistics.median(times[name])
        res[f"{name}_s"] = t
        res[f"{name}_images_per_s"] = len(y) / t
        res[f"{name}_100_epochs_h"] = 100 * per_epoch * t / 3600
    res["ratio"] = res["edge_popup_s"] / res["dense_s"]
    res["mask_ratio"] = res["edge_popup_s"] / res["same_weights_s"]
    if full_sort:
        res["full_sort_s"] = statistics.median(times["full_sort"])
        res["full_sort_ratio"] = res["full_sort_s"] / res["dense_s"]
    return res


def print_step(res: dict[str, Any]) -> None:
    """The step benchmark as lines."""
    flags = [k for k in ("amp", "channels_last", "compile") if res.get(k)]
    print(f"{res['model']} on {res['dataset']}, batch {res['batch_size']}, {res['device']} ({res['threads']} "
          f"threads{', ' + ', '.join(flags) if flags else ''}), median of {res['steps']} steps x "
          f"{res['instances']} instance(s) per variant:")
    for name in ("dense", "edge_popup"):
        each = ", ".join(f"{t * 1e3:.2f}" for t in res[f"{name}_instances_s"])
        print(f"  {name:<11} {res[f'{name}_s'] * 1e3:9.2f} ms  {res[f'{name}_images_per_s']:9.0f} img/s  "
              f"100 epochs ~ {res[f'{name}_100_epochs_h']:.2f} h  (instances: {each} ms)")
    print(f"  edge-popup / dense: {res['ratio']:.2f}x")
    print(f"  dense training on edge-popup's masked weights: {res['same_weights_s'] * 1e3:.2f} ms "
          f"(edge-popup / that: {res['mask_ratio']:.2f}x, the masks' own cost)")
    if "full_sort_s" in res:
        print(f"  edge-popup with the reference's full sort: {res['full_sort_s'] * 1e3:.2f} ms "
              f"({res['full_sort_ratio']:.2f}x)")


def bench_pai(cfg: DictConfig) -> dict[str, Any]:
    """Seconds to compute PHEW masks and SynFlow's iterations (see the module docstring)."""
    from ticketlab.config import InitConfig, ModelConfig
    from ticketlab.data import DataBundle
    from ticketlab.pruners.phew import phew_masks
    from ticketlab.pruners.synflow import SynflowConfig

    set_threads(int(cfg.trainer.threads))
    shape, init = (3, 32, 32), InitConfig(name="kaiming_normal")
    res: dict[str, Any] = {"threads": torch.get_num_threads(), "phew": {}, "synflow": {}}
    model = build_model(ModelConfig(name=cfg.bench.phew_model, batch_norm=True), shape, 10)
    init_weights(model, init, 0)
    weights = [layer.weight.detach() for _, layer in masks.prunable_layers(model)]
    for d in cfg.bench.phew_densities:
        t = time.perf_counter()
        found, walks = phew_masks(weights, d, seed=0)
        res["phew"][str(d)] = {"seconds": time.perf_counter() - t, "walks": walks,
                               "kept": sum(int(m.sum()) for m in found)}
        print(f"PHEW {cfg.bench.phew_model} density {d:g}: {res['phew'][str(d)]['seconds']:.2f} s "
              f"({walks} walks, {res['phew'][str(d)]['kept']} weights kept)", flush=True)
    model = build_model(ModelConfig(name=cfg.bench.synflow_model, batch_norm=True), shape, 10)
    init_weights(model, init, 0)
    pruner = build_pruner(SynflowConfig(sparsity=1 - cfg.bench.synflow_density,
                                        iterations=cfg.bench.synflow_iterations))
    bundle = DataBundle("shape-only", [], [], shape, 10, 0, 0)
    t = time.perf_counter()
    pruner.prepare(model, PruneContext(0, init, torch.device("cpu"), bundle, 0))
    kept = sum(int(fm.mask.sum()) for fm in pruner.masks)
    res["synflow"] = {"seconds": time.perf_counter() - t, "iterations": cfg.bench.synflow_iterations,
                      "density": cfg.bench.synflow_density, "kept": kept}
    print(f"SynFlow {cfg.bench.synflow_model}, {cfg.bench.synflow_iterations} iterations to density "
          f"{cfg.bench.synflow_density:g}: {res['synflow']['seconds']:.1f} s ({kept} weights kept)", flush=True)
    return res


def bench_suite(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """LeNet-300-100 (1 and 2 threads), Conv-6, SynFlow and PHEW; returns the results and a Markdown table."""
    res: dict[str, Any] = {}
    rows = ["| benchmark | threads | dense step | edge-popup step | edge-popup / dense | edge-popup / dense on the "
            "same weights | edge-popup img/s | 100 epochs (edge-popup) |", "|---|---|---|---|---|---|---|---|"]
    cases = [("lenet300_100 mnist", ["model=lenet300_100", "dataset=mnist"], t, cfg.bench.steps, cfg.bench.instances)
             for t in (1, 2)]
    cases.append(("conv6 cifar10 (channels-last)", ["model=conv6", "dataset=cifar10", "trainer.channels_last=true"],
                  int(cfg.trainer.threads) or 2, cfg.bench.conv_steps, cfg.bench.conv_instances))
    for label, over, threads, steps, instances in cases:
        r = bench_step([*over, "dataset.batch_size=128", f"trainer.threads={threads}"], steps, cfg.bench.warmup,
                       False, instances)
        res[f"{label} {threads}t"] = r
        print_step(r)
        rows.append(f"| {label}, batch 128 | {r['threads']} | {r['dense_s'] * 1e3:.2f} ms | "
                    f"{r['edge_popup_s'] * 1e3:.2f} ms | {r['ratio']:.2f}x | {r['mask_ratio']:.2f}x | "
                    f"{r['edge_popup_images_per_s']:.0f} | "
                    f"{r['edge_popup_100_epochs_h']:.2f} h |")
    pai = bench_pai(cfg)
    res["pai"] = pai
    s = pai["synflow"]
    rows.append(f"| SynFlow {cfg.bench.synflow_model}, {s['iterations']} rounds to density {s['density']:g} | "
                f"{pai['threads']} | | {s['seconds']:.1f} s | | | | |")
    for d, p in pai["phew"].items():
        rows.append(f"| PHEW {cfg.bench.phew_model} at density {d} | {pai['threads']} | | {p['seconds']:.2f} s | "
                    "| | | |")
    return res, "\n".join(rows)


resolvers.register()  # every schema and resolver, before Hydra composes conf/bench.yaml


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    """Run the benchmark described in the module docstring."""
    from hydra.core.hydra_config import HydraConfig

    for key in ("steps", "conv_steps", "instances", "conv_instances"):
        if not isinstance(cfg.bench[key], int) or cfg.bench[key] < 1:
            raise SystemExit(f"bench.{key}={cfg.bench[key]!r} is not allowed; allowed: an integer >= 1.")
    out = hydra_job.run_dir() / "bench.json"
    if cfg.bench.what == "pai":
        atomic_write_json(out, bench_pai(cfg))
        return
    if cfg.bench.what == "suite":
        res, table = bench_suite(cfg)
        print(f"\n{torch.__version__}, {torch.get_num_threads()} default threads, "
              f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}\n\n{table}")
        atomic_write_json(out, {**res, "table": table})
        return
    if cfg.bench.what != "step":
        raise SystemExit(f"bench.what={cfg.bench.what!r} is not known; allowed: step, pai, suite.")
    base = [o for o in HydraConfig.get().overrides.task if not o.startswith("bench.")]
    res = bench_step(base, cfg.bench.steps, cfg.bench.warmup, cfg.bench.full_sort, cfg.bench.instances)
    print_step(res)
    atomic_write_json(out, res)


if __name__ == "__main__":
    main()
