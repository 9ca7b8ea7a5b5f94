"""``pruner=phew``: Paths with Higher Edge Weights (Patil & Dovrolis, ICML 2021, Algorithm 1; code
ShreyasMalakarjunPatil/PHEW ``PHEW/phew.py``; spec ``shared/docs/pruning-at-init.md`` Sec. 3).

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

Feed-forward chains (MLP, Conv-n, VGG) only: the ResNet shortcut handling of the reference is not
implemented yet, and a non-chain model is rejected before training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, check_choice, check_range
from ..init import layer_generator
from ..masks import FixedMask, attach, prunable_layers
from .base import PruneContext, Pruner, PrunerConfig, register_pruner


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
    """

    name: str = "phew"
    sparsity: float = 0.9
    walkers: int = 4096
    kernel_conserved: bool = False
    walk_bias: str = "magnitude"
    reinit: str = "none"
    nested_from: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pruner.walkers", self.walkers, 1, float("inf"))
        check_choice("pruner.walk_bias", self.walk_bias, ("magnitude", "uniform", "inverse"))
        check_choice("pruner.reinit", self.reinit, ("none", "kaiming", "liu", "evci"))


@dataclass
class _Layer:
    weight: Tensor  # (O, I, *k)
    fwd: Tensor  # flat float64 cumulative sums of the (I, O * K) forward transition rows
    bwd: Tensor  # flat float64 cumulative sums of the (O, I * K) backward transition rows
    kernel: int  # K = prod(kernel)
    spread: int  # S: inputs per previous output unit (flatten); 1 otherwise


def chain_layers(weights: list[Tensor]) -> list[int]:
    """Per layer, how many of its inputs each output unit of the previous layer feeds (1, or S at a flatten).

    Raises:
        ConfigError: consecutive layers that do not form a chain (e.g. ResNet shortcuts).
    """
    spreads = [1]
    for prev, cur in zip(weights, weights[1:], strict=False):
        out, inp = prev.shape[0], cur.shape[1]
        if inp % out:
            raise ConfigError(f"pruner=phew walks feed-forward chains; a layer with {inp} inputs follows one with "
                              f"{out} outputs (residual networks are not supported yet). Use an MLP, Conv-n or VGG.")
        spreads.append(inp // out)
    return spreads


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


def _walks(layers: list[_Layer], starts: Tensor, forward: bool, gen: torch.Generator) -> list[Tensor]:
    """Flat mask indices visited by ``len(starts)`` walks: one (B,) tensor per layer, in layer order."""
    out: list[Tensor | None] = [None] * len(layers)
    u = starts
    order = range(len(layers)) if forward else range(len(layers) - 1, -1, -1)
    for li in order:
        lay = layers[li]
        o_units, i_units = lay.weight.shape[0], lay.weight.shape[1]
        if forward and li > 0 and lay.spread > 1:
            u = u * lay.spread + torch.randint(lay.spread, u.shape, generator=gen).to(u.device)
        if forward:
            # column = o * K + k ; mask index = (o * I + u) * K + k
            pick = _sample(lay.fwd, o_units * lay.kernel, u, gen)
            o, k = pick // lay.kernel, pick % lay.kernel
            out[li] = (o * i_units + u) * lay.kernel + k
            u = o
        else:  # column = i * K + k ; mask index = (u * I + i) * K + k
            pick = _sample(lay.bwd, i_units * lay.kernel, u, gen)
            i, k = pick // lay.kernel, pick % lay.kernel
            out[li] = (u * i_units + i) * lay.kernel + k
            u = i
            if li > 0 and lay.spread > 1:
                u = u // lay.spread
    return out  # type: ignore[return-value]


def phew_masks(weights: list[Tensor], density: float, seed: int = 0, walkers: int = 4096,
               kernel_conserved: bool = False, walk_bias: str = "magnitude",
               start: list[Tensor] | None = None) -> tuple[list[Tensor], int]:
    """PHEW masks for a chain of weights (see the module docstring).

    Args:
        weights: prunable weights in forward order, shapes ``(O, I, *k)``.
        density: target fraction kept, in (0, 1].
        seed: walk seed.
        walkers: walks per batch.
        kernel_conserved: keep whole kernels of visited channel pairs.
        walk_bias: ``magnitude``, ``uniform`` or ``inverse``.
        start: masks to continue from (nested masks: a denser mask contains the sparser one).

    Returns:
        ``(masks, walks)``: bool masks (shapes of ``weights``) and the number of walks taken.

    Raises:
        ConfigError: not a chain, or a density outside (0, 1].
    """
    if not 0 < density <= 1:
        raise ConfigError(f"PHEW density {density} must be in (0, 1].")
    spreads = chain_layers(weights)
    layers = []
    for w, s in zip(weights, spreads, strict=True):
        fwd, bwd = _transitions(w, walk_bias)
        layers.append(_Layer(w, fwd, bwd, math.prod(w.shape[2:]) if w.dim() > 2 else 1, s))
    masks = [m.clone().reshape(-1) for m in start] if start is not None else \
        [torch.zeros(w.numel(), dtype=torch.bool, device=w.device) for w in weights]
    total = sum(w.numel() for w in weights)
    target = int(density * total)
    gen = torch.Generator().manual_seed(seed)
    n_in, n_out = weights[0].shape[1], weights[-1].shape[0]
    count = sum(int(m.sum()) for m in masks)
    walks = 0

    def mark(into: list[Tensor], li: int, idx: Tensor) -> int:
        """Set ``idx`` (whole kernels when conserved) in layer ``li``; returns how many were new."""
        if kernel_conserved and layers[li].kernel > 1:
            k = layers[li].kernel
            idx = ((idx // k)[:, None] * k + torch.arange(k, device=idx.device)).reshape(-1)
        new = int((~into[li][idx]).sum()) if idx.numel() <= layers[li].kernel else 0
        into[li][idx] = True
        return new

    while count < target:
        half = max(1, walkers // 2)
        f_start = (torch.arange(walks // 2, walks // 2 + half) % n_in).to(weights[0].device)
        b_start = (torch.arange(walks // 2, walks // 2 + half) % n_out).to(weights[0].device)
        f_idx = _walks(layers, f_start, True, gen)
        b_idx = _walks(layers, b_start, False, gen)
        trial = [m.clone() for m in masks]
        for li in range(len(layers)):
            mark(trial, li, f_idx[li])
            mark(trial, li, b_idx[li])
        new_count = sum(int(m.sum()) for m in trial)
        if new_count < target:
            masks, count, walks = trial, new_count, walks + 2 * half
            continue
        for j in range(half):  # final batch: replay F_j, B_j in the reference's alternating order
            for idx in (f_idx, b_idx):
                for li in range(len(layers)):
                    count += mark(masks, li, idx[li][j:j + 1])
                walks += 1
                if count >= target:
                    break
            if count >= target:
                break
    return [m.view_as(w) for m, w in zip(masks, weights, strict=True)], walks


@register_pruner("phew", PhewConfig)
class Phew(Pruner):
    """PHEW: data-free masks from magnitude-biased random walks; the kept weights are then trained."""

    cfg: PhewConfig

    def __init__(self, cfg: PhewConfig) -> None:
        super().__init__(cfg)
        self.walks = 0

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Run the walks on the initial weights, attach the masks, optionally re-initialize.

        Raises:
            ConfigError: a model that is not a feed-forward chain.
        """
        layers = prunable_layers(model)
        weights = [layer.weight for _, layer in layers]
        start = None
        if self.cfg.nested_from:
            from pathlib import Path

            path = Path(self.cfg.nested_from)
            path = path / "masks.pt" if path.is_dir() else path
            if not path.exists():
                raise ConfigError(f"pruner.nested_from={self.cfg.nested_from!r}: no masks.pt there.")
            saved = torch.load(path, weights_only=False)["masks"]
            names = [f"{n}.weight" for n, _ in layers]
            if sorted(saved) != sorted(names) or any(saved[n].shape != w.shape for n, w in zip(names, weights,
                                                                                            strict=True)):
                raise ConfigError(f"pruner.nested_from={self.cfg.nested_from!r}: its masks do not match this model's "
                                  "prunable layers.")
            start = [saved[n].to(w.device) for n, w in zip(names, weights, strict=True)]
        masks, self.walks = phew_masks(weights, 1.0 - self.cfg.sparsity, seed=ctx.seed, walkers=self.cfg.walkers,
                                       kernel_conserved=self.cfg.kernel_conserved, walk_bias=self.cfg.walk_bias,
                                       start=start)
        for (_, layer), m in zip(layers, masks, strict=True):
            attach(layer, "weight", FixedMask(m))
        if self.cfg.reinit != "none":
            self._reinit(layers, masks, ctx.seed)

    @torch.no_grad()
    def _reinit(self, layers: list[tuple[str, nn.Module]], masks: list[Tensor], seed: int) -> None:
        for idx, ((_, layer), m) in enumerate(zip(layers, masks, strict=True)):
            w = layer.parametrizations.weight.original
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

    def summary(self) -> dict[str, Any]:
        """Number of walks taken."""
        return {"phew_walks": self.walks}
