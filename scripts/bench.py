"""Benchmarks (not tests): training-step time, and pruning-at-init mask time.

    python scripts/bench.py model=lenet300_100 dataset=mnist dataset.batch_size=128
    python scripts/bench.py model=conv6 dataset=cifar10 dataset.batch_size=128
    python scripts/bench.py bench.what=pai                # PHEW on vgg19, SynFlow x100 on vgg16 (CIFAR-10 shapes)

``bench.what=pai`` times the computation of a PHEW mask for ``bench.phew_model`` at each density of
``bench.phew_densities`` and SynFlow's ``bench.synflow_iterations`` rounds on ``bench.synflow_model``
(Kaiming-normal init, CIFAR-10 input shape, no data needed), in seconds.

``bench.what=step`` (default):
Prints, for the chosen model and batch size, the median time of one optimizer step (forward,
backward, SGD update) of dense training, of edge-popup (kthvalue top-k, TicketLab's), and of
edge-popup with a full sort per step (what allenai/hidden-networks' ``GetSubnet`` does), and the
ratios. Results also go to ``bench.json`` in the Hydra run folder. Uses the config groups of
``train.py`` (``conf/bench.yaml`` extends ``conf/config.yaml``).
"""

from __future__ import annotations

import statistics
import time

import hydra
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import ticketlab.masks as masks
from ticketlab.data import build_data
from ticketlab.init import init_weights
from ticketlab.models import build_model
from ticketlab.optim import build_optimizer
from ticketlab.pruners import PruneContext, build_pruner
from ticketlab.results import atomic_write_json
from ticketlab.run import hydra_run_dir, resolve, select_device


def sort_topk_mask(key: torch.Tensor, k: int, nonnegative: bool = False) -> torch.Tensor:
    """The reference code's top-k: sort the whole tensor, keep the last k (for comparison only)."""
    flat = key.detach().reshape(-1)
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[flat.sort().indices[flat.numel() - k:]] = True
    return out.view_as(key)


def time_steps(pruner_name: str, batch, device, steps: int, warmup: int) -> list[float]:
    """Seconds per optimizer step with ``pruner=<pruner_name>`` and the command line's other overrides."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("pruner")]
    pruner_over = [o for o in HydraConfig.get().overrides.task if o.startswith("pruner.")]
    if pruner_name == "edge_popup":
        overrides += pruner_over
    rc = resolve(compose(config_name="bench", overrides=overrides + [f"pruner={pruner_name}"]), ("bench",))
    x, y = batch
    model = build_model(rc.model, tuple(x.shape[1:]), int(y.max()) + 1)
    pruner = build_pruner(rc.pruner)
    init_weights(model, rc.init, rc.seed, pruner.densities(model))
    model.to(device)
    pruner.prepare(model, PruneContext(rc.seed, rc.init, device))
    opt = build_optimizer(pruner.trainable_parameters(model), rc.optimizer)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def bench_pai(cfg: DictConfig) -> dict:
    """Seconds to compute PHEW masks and SynFlow's iterations (see the module docstring)."""
    from ticketlab.config import InitConfig, ModelConfig
    from ticketlab.data import DataBundle
    from ticketlab.masks import prunable_layers
    from ticketlab.pruners.phew import phew_masks
    from ticketlab.pruners.synflow import SynflowConfig

    shape, init = (3, 32, 32), InitConfig(name="kaiming_normal")
    res = {"threads": torch.get_num_threads(), "phew": {}, "synflow": {}}
    model = build_model(ModelConfig(name=cfg.bench.phew_model, batch_norm=True), shape, 10)
    init_weights(model, init, 0)
    weights = [layer.weight.detach() for _, layer in prunable_layers(model)]
    for d in cfg.bench.phew_densities:
        t = time.perf_counter()
        masks, walks = phew_masks(weights, d, seed=0)
        res["phew"][str(d)] = {"seconds": time.perf_counter() - t, "walks": walks,
                               "kept": sum(int(m.sum()) for m in masks)}
        print(f"PHEW {cfg.bench.phew_model} density {d:g}: {res['phew'][str(d)]['seconds']:.2f} s "
              f"({walks} walks, {res['phew'][str(d)]['kept']} weights kept)", flush=True)
    model = build_model(ModelConfig(name=cfg.bench.synflow_model, batch_norm=True), shape, 10)
    init_weights(model, init, 0)
    pruner = build_pruner(SynflowConfig(sparsity=1 - cfg.bench.synflow_density,
                                        iterations=cfg.bench.synflow_iterations))
    bundle = DataBundle("shape-only", [], [], shape, 10, 0, 0)
    t = time.perf_counter()
    pruner.prepare(model, PruneContext(0, init, torch.device("cpu"), bundle, 0))
    res["synflow"] = {"seconds": time.perf_counter() - t, "iterations": cfg.bench.synflow_iterations,
                      "density": cfg.bench.synflow_density}
    print(f"SynFlow {cfg.bench.synflow_model}, {cfg.bench.synflow_iterations} iterations to density "
          f"{cfg.bench.synflow_density:g}: {res['synflow']['seconds']:.1f} s", flush=True)
    return res


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    """Run the benchmark described in the module docstring."""
    if cfg.bench.what == "pai":
        atomic_write_json(hydra_run_dir() / "bench.json", bench_pai(cfg))
        return
    rc = resolve(cfg, ("bench",))
    device = select_device(rc.trainer.device)
    torch.manual_seed(rc.seed)
    data = build_data(rc.dataset, device, rc.seed)
    x, y = next(iter(data.train))
    y = y % data.num_classes
    steps, warmup = cfg.bench.steps, cfg.bench.warmup
    res = {"model": rc.model.name, "dataset": rc.dataset.name, "batch_size": len(y), "device": str(device),
           "threads": torch.get_num_threads(), "steps": steps}
    res["dense_s"] = statistics.median(time_steps("dense", (x, y), device, steps, warmup))
    res["edge_popup_s"] = statistics.median(time_steps("edge_popup", (x, y), device, steps, warmup))
    res["ratio_edge_popup_over_dense"] = res["edge_popup_s"] / res["dense_s"]
    if cfg.bench.full_sort:
        original = masks.topk_mask
        masks.topk_mask = sort_topk_mask
        try:
            res["edge_popup_full_sort_s"] = statistics.median(
                time_steps("edge_popup", (x, y), device, steps, warmup))
        finally:
            masks.topk_mask = original
        res["ratio_full_sort_over_dense"] = res["edge_popup_full_sort_s"] / res["dense_s"]
    print(f"{rc.model.name} on {rc.dataset.name}, batch {len(y)}, {device} ({torch.get_num_threads()} threads), "
          f"median of {steps} steps:")
    print(f"  dense step        {res['dense_s'] * 1e3:9.2f} ms")
    print(f"  edge-popup step   {res['edge_popup_s'] * 1e3:9.2f} ms   ratio {res['ratio_edge_popup_over_dense']:.2f}x")
    if cfg.bench.full_sort:
        print(f"  ... with full sort {res['edge_popup_full_sort_s'] * 1e3:8.2f} ms   ratio "
              f"{res['ratio_full_sort_over_dense']:.2f}x  (reference code's top-k)")
    atomic_write_json(hydra_run_dir() / "bench.json", res)


if __name__ == "__main__":
    main()
