"""``pruner=phew``: Paths with Higher Edge Weights (Patil & Dovrolis, ICML 2021, Algorithm 1; code
ShreyasMalakarjunPatil/PHEW ``PHEW/phew.py``).

Data-free. Random walks through the network, biased by the initial weight magnitudes, add the
edges they traverse to the mask until ``int(density * N)`` weights are kept:

* forward walks start at the input channels in round-robin order; from unit ``u`` of layer ``l``
  the walk picks one of the weights leaving ``u`` with probability proportional to ``|W|`` (for a
  convolution: any ``(o, h, w)``; the reference's two-stage draw, channel then kernel position, is
  the same distribution), keeps it and moves to its output unit;
* backward walks start at the output classes in round-robin order and pick weights entering the
  current unit, in reverse layer order;
* forward and backward walks alternate; at a conv -> linear flatten a forward walk enters a random
  spatial position of its channel (``u * S + U{0..S-1}``), a backward walk leaves to ``u // S``;
* the loop stops after the walk during which the count reaches the target, so the density
  overshoots by at most one walk's new edges.

Speed: walks run in batches of ``walkers`` on the model's device; each layer step draws every
walker's next edge at once by inverse-CDF sampling (one ``searchsorted`` into the layer's
precomputed float64 cumulative transition weights, O(B log N), no per-row gathers); only the final
batch is replayed walk by walk to find the exact stopping point (the reference's order).

Options: ``kernel_conserved`` keeps every visited channel pair's whole kernel; ``walk_bias`` gives
the paper's ablations (``uniform``: unbiased walks, ``inverse``: probability proportional to
``1/|W|``); ``reinit`` re-initializes the kept weights after selection (ablations; default
``none``, as the paper): ``kaiming`` (a fresh Kaiming-normal draw), ``liu``
(``N(0, 2 / (fan_in * layer density))``), ``evci`` (``N(0, 2 / kept fan-in of the unit)``).

Models: feed-forward chains (MLP, Conv-n, VGG) and ResNets built from BasicBlocks (resnet18/20/34),
whose 1x1-conv shortcuts are walked as in the reference (``resnet_shortcuts=faithful``) or at the
true block input (``clean``); see :func:`model_route`. Other models are rejected before training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ticketlab.errors import ConfigError, check_choice, check_range
from ticketlab.init.weights import layer_generator
from ticketlab.pruners.base import PruneContext, Pruner, PrunerConfig, register_pruner
from ticketlab.sparsity.masks import attach_dense, prunable_layers, underlying


@dataclass
class PhewConfig(PrunerConfig):
    """``pruner=phew``.

    Attributes:
        sparsity: fraction removed (target density ``1 - sparsity``; default 0.9).
        walkers: walks per batch (speed only; the stopping point is exact).
        kernel_conserved: keep the whole kernel of every visited channel pair.
        walk_bias: ``magnitude`` (the method), ``uniform`` or ``inverse`` (ablations).
        reinit: ``none`` (the method), ``kaiming``, ``liu`` or ``evci`` (ablations).
        nested_from: a sparser PHEW run (folder or ``masks.pt``) whose mask the walks continue from,
            so the denser mask contains it (the reference's ``PHEW_Res``); ``null`` starts empty.
        resnet_shortcuts: ``faithful`` (the reference's forward jump, one layer early) or ``clean``
            (at the block input); see :func:`model_route`.
    """

    name: str = "phew"
    sparsity: float = 0.9
    walkers: int = 4096
    kernel_conserved: bool = False
    walk_bias: str = "magnitude"
    reinit: str = "none"
    nested_from: str | None = None
    resnet_shortcuts: str = "faithful"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.walkers", self.walkers, 1, float("inf"))
        check_choice("pruner.walk_bias", self.walk_bias, ("magnitude", "uniform", "inverse"))
        check_choice("pruner.reinit", self.reinit, ("none", "kaiming", "liu", "evci"))
        check_choice("pruner.resnet_shortcuts", self.resnet_shortcuts, ("faithful", "clean"))


@dataclass
class _Layer:
    weight: Tensor  # (O, I, *k)
    fwd: Tensor  # flat float64 cumulative sums of the (I, O * K) forward transition rows
    bwd: Tensor  # flat float64 cumulative sums of the (O, I * K) backward transition rows
    kernel: int  # K = prod(kernel)


@dataclass
class Route:
    """Where walks go: a main path of layer indices, and coin-flip jumps through shortcut layers.

    Attributes:
        seq: indices (into the prunable-layer list) of the main path, input to output.
        spreads: per main-path position, inputs fed by each output unit of the previous main layer
            (``S`` at a conv -> linear flatten, else 1).
        fwd_jumps: ``{pos: (shortcut layer, pos to continue at)}``: a forward walk about to step
            through ``seq[pos]`` takes the shortcut instead with probability 1/2.
        bwd_jumps: the same for backward walks about to step back through ``seq[pos]``.
    """

    seq: list[int]
    spreads: list[int]
    fwd_jumps: dict[int, tuple[int, int]] = field(default_factory=dict)
    bwd_jumps: dict[int, tuple[int, int]] = field(default_factory=dict)


def _spreads(weights: list[Tensor], names: list[str] | None = None) -> list[int]:
    spreads = [1]
    for i, (prev, cur) in enumerate(zip(weights, weights[1:], strict=False)):
        out, inp = prev.shape[0], cur.shape[1]
        if inp % out:
            where = f"layer {names[i + 1]} ({inp} inputs) follows layer {names[i]} ({out} outputs)" if names \
                else f"a layer with {inp} inputs follows one with {out} outputs"
            raise ConfigError(f"pruner=phew: {where} on the walk "
                              "path; PHEW walks feed-forward chains and residual networks built from BasicBlocks "
                              "(MLP, Conv-n, VGG, resnet18/20/34).")
        spreads.append(inp // out)
    return spreads


def chain_route(weights: list[Tensor], names: list[str] | None = None) -> Route:
    """The route of a feed-forward chain (every layer in order, no jumps).

    Raises:
        ConfigError: consecutive layers that do not connect.
    """
    return Route(list(range(len(weights))), _spreads(weights, names))


def model_route(model: nn.Module, shortcuts: str = "faithful") -> Route:
    """The route of ``model``: a chain, or a ResNet of blocks with ``conv1``, ``conv2`` and ``shortcut``.

    ResNets (reference ``PHEW/phew.py``, its ResNet walk): walks follow
    the blocks' main convolutions; identity shortcuts are never used. At a downsampling block with a
    1x1-conv shortcut a forward walk flips a fair coin to take the shortcut instead of the block --
    ``faithful``: one layer early, before the previous block's conv2, as the reference does;
    ``clean``: at the block input -- and then continues after the block; a backward walk about to
    enter the block's conv2 flips a coin to take the shortcut and continue at the previous block's
    conv2 (both variants; this one is topologically exact).

    Raises:
        ConfigError: a model that is neither a chain nor such a ResNet (e.g. torchvision bottlenecks).
    """
    layers = prunable_layers(model)
    index = {id(layer): i for i, (_, layer) in enumerate(layers)}
    blocks = [m for m in model.modules() if hasattr(m, "conv1") and hasattr(m, "conv2") and hasattr(m, "shortcut")]
    if not blocks:
        return chain_route([layer.weight for _, layer in layers], [name for name, _ in layers])
    in_blocks = {id(c) for b in blocks for c in b.modules() if isinstance(c, nn.Conv2d | nn.Linear)}
    seq, fwd, bwd = [], {}, {}
    for _, layer in layers:  # stem and classifier, in order, around the blocks
        if id(layer) in in_blocks:
            continue
        seq.append(index[id(layer)])
    stem, head = seq[:-1], seq[-1:]
    seq = list(stem)
    for b in blocks:
        p1 = len(seq)
        seq += [index[id(b.conv1)], index[id(b.conv2)]]
        convs = [m for m in b.shortcut.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            s = index[id(convs[0])]
            src = p1 - 1 if shortcuts == "faithful" else p1
            if src < 1 and shortcuts == "faithful":
                raise ConfigError("pruner.resnet_shortcuts=faithful cannot jump before the first block; use clean.")
            fwd[src] = (s, p1 + 2)
            bwd[p1 + 1] = (s, p1 - 1)
    seq += head
    weights = [layers[i][1].weight for i in seq]
    route = Route(seq, _spreads(weights, [layers[i][0] for i in seq]), fwd, bwd)
    for src, (s, _) in fwd.items():
        w = layers[s][1].weight
        need_in = weights[src].shape[1] if shortcuts == "faithful" else weights[src - 1].shape[0]
        if w.shape[1] != need_in:
            raise ConfigError(f"pruner=phew: shortcut {layers[s][0]!r} takes {w.shape[1]} channels where the walk has "
                              f"{need_in}.")
    return route


def _transitions(w: Tensor, bias: str) -> tuple[Tensor, Tensor]:
    a = w.detach().abs().double()
    if bias == "uniform":
        a = torch.ones_like(a)
    elif bias == "inverse":
        a = torch.where(a > 0, 1.0 / a.clamp(min=1e-30), torch.zeros_like(a))
    o, i = a.shape[0], a.shape[1]
    fwd = a.transpose(0, 1).reshape(i, -1).clone()  # rows: input unit; columns: (o, *k)
    bwd = a.reshape(o, -1).clone()  # rows: output unit; columns: (i, *k)
    # a unit without any weight walks uniformly (the reference's fallback)
    fwd[fwd.sum(1) == 0] = 1.0
    bwd[bwd.sum(1) == 0] = 1.0
    return fwd.reshape(-1).cumsum(0), bwd.reshape(-1).cumsum(0)


def _sample(cum: Tensor, width: int, rows: Tensor, gen: torch.Generator) -> Tensor:
    """For each row ``u`` in ``rows``, a column drawn with probability proportional to its weight.

    Inverse-CDF sampling on the flat cumulative sums ``cum`` (rows of ``width`` entries): one
    ``searchsorted`` for the whole batch, no per-row gathers.
    """
    start = rows * width
    lo = torch.where(rows > 0, cum[(start - 1).clamp(min=0)], torch.zeros((), dtype=cum.dtype, device=cum.device))
    hi = cum[start + width - 1]
    r = lo + torch.rand(rows.shape, generator=gen, dtype=cum.dtype).to(cum.device) * (hi - lo)
    j = torch.searchsorted(cum, r, right=True)
    return torch.minimum(torch.maximum(j, start), start + width - 1) - start


def _step(lay: _Layer, u: Tensor, forward: bool, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One step of every walker in ``u``: ``(flat mask indices, next units)``."""
    o_units, i_units = lay.weight.shape[0], lay.weight.shape[1]
    if forward:  # column = o * K + k ; mask index = (o * I + u) * K + k
        pick = _sample(lay.fwd, o_units * lay.kernel, u, gen)
        o, k = pick // lay.kernel, pick % lay.kernel
        return (o * i_units + u) * lay.kernel + k, o
    pick = _sample(lay.bwd, i_units * lay.kernel, u, gen)  # column = i * K + k ; index = (u * I + i) * K + k
    i, k = pick // lay.kernel, pick % lay.kernel
    return (u * i_units + i) * lay.kernel + k, i


def _walks(layers: list[_Layer], route: Route, starts: Tensor, forward: bool, gen: torch.Generator) -> list[Tensor]:
    """Flat mask indices visited by ``len(starts)`` walks: one (B,) tensor per layer, -1 where a walk skipped it."""
    b = len(starts)
    out = [torch.full((b,), -1, dtype=torch.long, device=starts.device) for _ in layers]
    n = len(route.seq)
    pending: dict[int, tuple[Tensor, Tensor]] = {0 if forward else n - 1: (torch.arange(b, device=starts.device),
                                                                         starts)}

    def push(pos: int, ids: Tensor, units: Tensor) -> None:
        if pos in pending:
            pid, pu = pending[pos]
            ids, units = torch.cat([pid, ids]), torch.cat([pu, units])
        pending[pos] = (ids, units)

    positions = range(n) if forward else range(n - 1, -1, -1)
    jumps = route.fwd_jumps if forward else route.bwd_jumps
    for pos in positions:
        if pos not in pending:
            continue
        ids, u = pending.pop(pos)
        if pos in jumps:  # fair coin: the shortcut instead of the block
            s, target = jumps[pos]
            heads = (torch.rand(len(ids), generator=gen) < 0.5).to(ids.device)
            if bool(heads.any()):
                idx, nxt = _step(layers[s], u[heads], forward, gen)
                out[s][ids[heads]] = idx
                push(target, ids[heads], nxt)
            ids, u = ids[~heads], u[~heads]
            if len(ids) == 0:
                continue
        li = route.seq[pos]
        spread = route.spreads[pos]
        if forward and spread > 1:
            u = u * spread + torch.randint(spread, u.shape, generator=gen).to(u.device)
        idx, nxt = _step(layers[li], u, forward, gen)
        out[li][ids] = idx
        if not forward and spread > 1:
            nxt = nxt // spread
        nxt_pos = pos + 1 if forward else pos - 1
        if 0 <= nxt_pos < n:
            push(nxt_pos, ids, nxt)
    return out


def _mark(layer: _Layer, kernel_conserved: bool, into: list[Tensor], li: int, idx: Tensor) -> int:
    """Set ``idx`` (whole kernels when conserved) in mask ``li``; returns how many were new."""
    idx = idx[idx >= 0]  # walks that skipped the layer
    if kernel_conserved and layer.kernel > 1:
        k = layer.kernel
        idx = ((idx // k)[:, None] * k + torch.arange(k, device=idx.device)).reshape(-1)
    new = int((~into[li][idx]).sum()) if idx.numel() <= layer.kernel else 0
    into[li][idx] = True
    return new


def _replay_last(layers: list[_Layer], kernel_conserved: bool, masks: list[Tensor],
                 batch: tuple[list[Tensor], list[Tensor]], half: int, count: int, walks: int,
                 target: int) -> tuple[int, int]:
    """The batch that reaches the target: walks ``F_j, B_j`` one at a time in the reference's alternating
    order until ``target`` entries are kept; returns the new ``(count, walks)``."""
    for j in range(half):
        for idx in batch:
            for li in range(len(layers)):
                count += _mark(layers[li], kernel_conserved, masks, li, idx[li][j:j + 1])
            walks += 1
            if count >= target:
                return count, walks
    return count, walks


def phew_masks(weights: list[Tensor], density: float, seed: int = 0, walkers: int = 4096,
               kernel_conserved: bool = False, walk_bias: str = "magnitude",
               start: list[Tensor] | None = None, route: Route | None = None) -> tuple[list[Tensor], int]:
    """PHEW masks (see the module docstring).

    Args:
        weights: prunable weights in forward (module) order, shapes ``(O, I, *k)``.
        density: target fraction kept, in (0, 1].
        seed: walk seed.
        walkers: walks per batch.
        kernel_conserved: keep whole kernels of visited channel pairs.
        walk_bias: ``magnitude``, ``uniform`` or ``inverse``.
        start: masks to continue from (nested masks: a denser mask contains the sparser one).
        route: the walk route (:func:`model_route`); default: ``weights`` form a chain.

    Returns:
        ``(masks, walks)``: bool masks (shapes of ``weights``) and the number of walks taken.

    Raises:
        ConfigError: not a chain, or a density outside (0, 1].
    """
    if not 0 < density <= 1:
        raise ConfigError(f"PHEW density {density} must be in (0, 1].")
    route = route if route is not None else chain_route(weights)
    layers = []
    for w in weights:
        fwd, bwd = _transitions(w, walk_bias)
        layers.append(_Layer(w, fwd, bwd, math.prod(w.shape[2:]) if w.dim() > 2 else 1))
    masks = [m.clone().reshape(-1) for m in start] if start is not None else \
        [torch.zeros(w.numel(), dtype=torch.bool, device=w.device) for w in weights]
    total = sum(w.numel() for w in weights)
    target = int(density * total)
    gen = torch.Generator().manual_seed(seed)
    n_in, n_out = weights[route.seq[0]].shape[1], weights[route.seq[-1]].shape[0]
    count = sum(int(m.sum()) for m in masks)
    walks = 0
    while count < target:
        half = max(1, walkers // 2)
        f_start = (torch.arange(walks // 2, walks // 2 + half) % n_in).to(weights[0].device)
        b_start = (torch.arange(walks // 2, walks // 2 + half) % n_out).to(weights[0].device)
        f_idx = _walks(layers, route, f_start, True, gen)
        b_idx = _walks(layers, route, b_start, False, gen)
        trial = [m.clone() for m in masks]
        for li in range(len(layers)):
            _mark(layers[li], kernel_conserved, trial, li, f_idx[li])
            _mark(layers[li], kernel_conserved, trial, li, b_idx[li])
        new_count = sum(int(m.sum()) for m in trial)
        if new_count < target:
            masks, count, walks = trial, new_count, walks + 2 * half
            continue
        count, walks = _replay_last(layers, kernel_conserved, masks, (f_idx, b_idx), half, count, walks, target)
    return [m.view_as(w) for m, w in zip(masks, weights, strict=True)], walks


@register_pruner("phew", PhewConfig)
class Phew(Pruner):
    """PHEW: data-free masks from magnitude-biased random walks; the kept weights are then trained."""

    cfg: PhewConfig

    def __init__(self, cfg: PhewConfig) -> None:
        super().__init__(cfg)
        self.walks = 0

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach all-ones masks to every prunable weight (the walks fill them in :meth:`initialize`)."""
        dense = attach_dense(model, layers=prunable_layers(model))
        self.layers, self.masks, self.weights = dense.layers, dense.masks, dense.tensors

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """The model must be walkable; ``nested_from`` must hold masks of this model.

        Raises:
            ConfigError: a model that is not a feed-forward chain or BasicBlock ResNet, or a
                ``nested_from`` file that is missing or does not match.
        """
        self.route = model_route(model, self.cfg.resnet_shortcuts)
        self.start = self._nested_start() if self.cfg.nested_from else None
        return []

    def _nested_start(self) -> list[Tensor]:
        from pathlib import Path

        from ticketlab.pruners.from_file import read_masks

        path = Path(self.cfg.nested_from)
        saved = read_masks(path, "pruner.nested_from")
        weights = self.weights
        names = [f"{n}.weight" for n, _ in self.layers]
        if sorted(saved) != sorted(names) or any(saved[n].shape != w.shape for n, w in zip(names, weights,
                                                                                        strict=True)):
            raise ConfigError(f"pruner.nested_from={self.cfg.nested_from!r}: its masks do not match this model's "
                              "prunable layers.")
        return [saved[n].to(w.device) for n, w in zip(names, weights, strict=True)]

    def initialize(self, model: nn.Module, ctx: PruneContext) -> None:
        """Run the walks on the initial weights, set the masks, optionally re-initialize."""
        if not hasattr(self, "route"):
            self.check(model, ctx)
        weights = self.weights
        masks, self.walks = phew_masks(weights, self.cfg.density, seed=ctx.seed, walkers=self.cfg.walkers,
                                       kernel_conserved=self.cfg.kernel_conserved, walk_bias=self.cfg.walk_bias,
                                       start=self.start, route=self.route)
        with torch.no_grad():
            for fm, m in zip(self.masks, masks, strict=True):
                fm.mask.copy_(m)
        if self.cfg.reinit != "none":
            self._reinit(self.layers, masks, ctx.seed)

    @torch.no_grad()
    def _reinit(self, layers: list[tuple[str, nn.Module]], masks: list[Tensor], seed: int) -> None:
        for idx, ((_, layer), m) in enumerate(zip(layers, masks, strict=True)):
            w = underlying(layer, "weight")
            fan_in = math.prod(w.shape[1:])
            gen = layer_generator(seed, idx, "phew-reinit")
            z = torch.randn(tuple(w.shape), generator=gen).to(w.device)
            if self.cfg.reinit == "kaiming":
                std = torch.full((w.shape[0],), math.sqrt(2.0 / fan_in))
            elif self.cfg.reinit == "liu":
                std = torch.full((w.shape[0],), math.sqrt(2.0 / (fan_in * max(float(m.float().mean()), 1e-12))))
            else:  # evci: per output unit, its kept fan-in
                kept = m.reshape(m.shape[0], -1).sum(1).clamp(min=1).float()
                std = torch.sqrt(2.0 / kept)
            w.copy_(z * std.view(-1, *([1] * (w.dim() - 1))).to(w.device))

    def state_dict(self) -> dict[str, Any]:
        """The number of walks taken (the masks are in the model)."""
        return {"walks": self.walks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.walks = state.get("walks", 0)

    def summary(self) -> dict[str, Any]:
        """Number of walks taken."""
        return {"phew_walks": self.walks}
