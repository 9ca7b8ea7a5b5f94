"""Shared core of the pruning-at-initialization methods: scores in, masks out.

A method subclasses :class:`ScorePruner` and implements :meth:`ScorePruner.score`, returning one
score tensor per prunable weight (same shape; higher = more important). The shared code:

* attaches a :class:`~ticketlab.sparsity.masks.FixedMask` (all ones) to every selected layer, so scores
  are computed on the masked network and the kept weights are then trained by the normal loop;
* runs ``iterations`` rounds of score -> mask, the kept fraction shrinking to the target with the
  ``exponential`` schedule ``d_k = D^(k/n)`` (SynFlow) or the ``linear`` one ``1 - (1 - D) (k/n)``
  (Tanaka et al. 2020, Algorithm 1; ganguli-lab/Synaptic-Flow ``prune.py::prune_loop``), evaluated as
  that code evaluates them, so that a round density that is a round number there is one here; the
  last round keeps exactly the run's own target, ``num_kept(N, pruner.sparsity)`` (:func:`round_sparsity`);
* allocates the kept count globally (one exact top-k over all layers) or per layer, with an
  optional guard ``min_weights_per_layer`` that first reserves each layer's best-scored weights;
  ``kept_count=float`` counts as Synaptic-Flow does (``int((1 - d) N)`` removed, in floats), the
  default ``floor`` with the exact decimal rule (:mod:`ticketlab.sparsity.selection`); a selection
  that keeps some but not all zero-scored weights is logged and listed in the summary;
* sets BatchNorm to ``eval`` (Synaptic-Flow's default) or ``train`` mode while scoring;
* gives data-dependent methods ``data_batches`` training batches, restoring the data generator
  afterwards so the training order is the same as without pruning.

``pruner.sparsity`` keeps its meaning (fraction removed); ``pruner.compression`` is SynFlow's
alternative: density ``10^-compression`` (``compression=2`` is 1% density); when set it wins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ticketlab.errors import ConfigError, NonFiniteError, check_choice, check_range
from ticketlab.pruners.base import PruneContext, Pruner, PrunerConfig, require_layer_biases
from ticketlab.sparsity.masks import FixedMask, attach_dense, select_layers
from ticketlab.sparsity.selection import (
    KEPT_COUNTS,
    density_of,
    global_topk,
    num_kept,
    sparsity_of,
    topk_mask,
    zero_ties,
)

log = logging.getLogger(__name__)


@dataclass
class ScorePrunerConfig(PrunerConfig):
    """Options shared by every pruning-at-init method.

    Attributes:
        sparsity: fraction of prunable weights removed (default 0.9).
        compression: SynFlow's convention, density = 10^-compression; overrides ``sparsity`` when set.
        scope: ``global`` (one top-k over all layers) or ``layerwise``.
        iterations: score -> mask rounds (SynFlow: 100; the others: 1).
        schedule: ``exponential`` or ``linear`` shrinking of the kept fraction over the rounds.
        min_weights_per_layer: guard: every masked layer keeps at least this many weights (0 = off).
        bn_mode: BatchNorm mode while scoring, ``eval`` or ``train``.
        data_batches: training batches given to data-dependent scores.
        first_layer_dense, last_layer_dense: leave the input / output layer unpruned.
        prune_bias: also score and mask layer biases (ranked with the weights); off by default,
            as in Synaptic-Flow (``--prune-bias``). Batch norm is never pruned.
        kept_count: ``floor`` (``n - floor(p n)`` on the decimal ``p``, the convention) or ``float``
            (Synaptic-Flow's ``int((1 - d) n)`` removed, computed in floats, ``Pruners/pruners.py``).
    """

    name: str = "random"
    sparsity: float = 0.9
    compression: float | None = None
    scope: str = "global"
    iterations: int = 1
    schedule: str = "exponential"
    min_weights_per_layer: int = 0
    bn_mode: str = "eval"
    data_batches: int = 0
    first_layer_dense: bool = False
    last_layer_dense: bool = False
    prune_bias: bool = False
    kept_count: str = "floor"

    def __post_init__(self) -> None:
        if self.compression is not None:
            # 10^-15 is the smallest density whose sparsity 1 - 10^-x is still below 1 in float64.
            check_range("pruner.compression", self.compression, 0.0, 15.0)
            self.sparsity = sparsity_of(10.0 ** (-self.compression))
        super().__post_init__()
        check_choice("pruner.kept_count", self.kept_count, ("floor", "float"))
        check_choice("pruner.scope", self.scope, ("global", "layerwise"))
        check_range("pruner.iterations", self.iterations, 1, float("inf"))
        check_choice("pruner.schedule", self.schedule, ("exponential", "linear"))
        check_range("pruner.min_weights_per_layer", self.min_weights_per_layer, 0, float("inf"))
        check_choice("pruner.bn_mode", self.bn_mode, ("eval", "train"))
        check_range("pruner.data_batches", self.data_batches, 0, float("inf"))

    @property
    def density(self) -> float:
        """``10^-compression`` when set (Synaptic-Flow's density), else ``1 - sparsity`` on its decimal."""
        return 10.0 ** (-self.compression) if self.compression is not None else density_of(self.sparsity)


def round_sparsity(k: int, n: int, cfg: ScorePrunerConfig) -> float:
    """The sparsity round ``k`` of ``n`` (1-based) prunes to, for ``cfg.kept_count``'s counting rule.

    The round's density is Synaptic-Flow's (``prune.py::prune_loop``: ``D ** (k / n)`` or
    ``1.0 - (1.0 - D) * (k / n)``, with ``D`` = ``cfg.density``), in floats as there. ``floor`` reads it
    as the decimal it prints as (so a density of 0.505 removes exactly 49.5 %), ``float`` as
    Synaptic-Flow does, ``1.0 - d``. The last round is the run's own target: ``cfg.sparsity`` (``floor``)
    or ``1.0 - D`` (``float``).
    """
    if k == n:
        return cfg.sparsity if cfg.kept_count == "floor" else 1.0 - cfg.density
    target = cfg.density
    d = target ** (k / n) if cfg.schedule == "exponential" else 1.0 - (1.0 - target) * (k / n)
    return min(sparsity_of(d) if cfg.kept_count == "floor" else 1.0 - d, 1.0 - 1e-12)


def allocate(scores: list[Tensor], sparsity: float, scope: str, min_per_layer: int = 0,
             count: Callable[[int, float], int] = num_kept) -> list[Tensor]:
    """Masks keeping the best-scored weights: exact counts, ties broken by lowest index.

    Args:
        scores: one score tensor per layer (any shapes).
        sparsity: fraction removed overall (global) or in every layer (layerwise), in [0, 1).
        scope: ``global`` or ``layerwise``.
        min_per_layer: guard; each layer keeps at least ``min(min_per_layer, numel)`` weights.
        count: the kept-count rule ``count(n, sparsity)`` (:data:`~ticketlab.sparsity.selection.KEPT_COUNTS`).

    Returns:
        Bool masks, shapes of ``scores``. Global: ``count(N, sparsity)`` kept in total.

    Raises:
        ConfigError: the guard needs more weights than the target keeps.
        NonFiniteError: a score is NaN.
    """
    if any(bool(torch.isnan(s).any()) for s in scores):
        raise NonFiniteError("scores", "pruning scores hold NaN, which has no rank")
    if scope == "layerwise":
        return [topk_mask(s, max(count(s.numel(), sparsity), min(min_per_layer, s.numel()))) for s in scores]
    total = count(sum(s.numel() for s in scores), sparsity)
    keys = [s.detach().float() for s in scores]
    if min_per_layer > 0:
        reserved = [topk_mask(s, min(min_per_layer, s.numel())) for s in scores]
        n_reserved = sum(int(r.sum()) for r in reserved)
        if n_reserved > total:
            raise ConfigError(f"the target keeps {total} weights but pruner.min_weights_per_layer={min_per_layer} "
                              f"reserves {n_reserved} over {len(scores)} layers; lower the guard or the sparsity.")
        keys = [torch.where(r, math.inf, k) for k, r in zip(keys, reserved, strict=True)]
    return global_topk(keys, total, nonnegative=all(bool(k.min() >= 0) for k in keys))


def shrink_global(kept_scores: list[Tensor], kept: list[Tensor], total: int) -> list[tuple[Tensor, Tensor]] | None:
    """One global top-``total`` when every entry outside ``kept`` scores exactly 0: selected among the kept
    entries only, the same result as :func:`allocate` at a fraction of the cost once most weights are pruned.

    Args:
        kept_scores: per masked tensor, the scores of its kept entries (1-D, in the order of ``kept``).
        kept: per tensor, the ascending flat indices of the entries kept so far.
        total: entries to keep in all.

    Returns:
        Per tensor, ``(kept, dropped)``: the ascending indices still kept and those this round removes; or
        ``None`` when the answer would involve zero scores (ties with the pruned entries: then
        :func:`allocate` decides, by lowest index).

    Raises:
        NonFiniteError: NaN scores.
    """
    sub = torch.cat([s.detach().reshape(-1).float() for s in kept_scores])
    if total > sub.numel():
        return None
    keep = topk_mask(sub, total, nonnegative=True)
    if total and not bool(sub[keep].min() > 0):
        return None
    return [(i[part], i[~part]) for i, part in zip(kept, keep.split([len(i) for i in kept]), strict=True)]


class ScorePruner(Pruner):
    """Base of the pruning-at-init methods; subclasses implement :meth:`score`.

    Class attribute ``needs_data``: the score uses training batches (``data_batches`` must be > 0).
    """

    cfg: ScorePrunerConfig
    needs_data = False

    def __init__(self, cfg: ScorePrunerConfig) -> None:
        super().__init__(cfg)
        if self.needs_data and cfg.data_batches < 1:
            raise ConfigError(f"pruner={cfg.name} scores weights with training data but pruner.data_batches="
                              f"{cfg.data_batches}; set pruner.data_batches to at least 1.")
        self.masks: list[FixedMask] = []
        self.layers: list[tuple[str, nn.Module]] = []
        self.weights: list[Tensor] = []
        self.zero_ties: list[dict[str, int]] = []  # rounds that kept some, not all, zero-scored weights

    def densities(self, model: nn.Module) -> dict[str, float]:
        """Layerwise scope: ``1 - sparsity`` per masked layer; global: unknown before scoring (none)."""
        if self.cfg.scope != "layerwise":
            return {}
        return {n: self.cfg.density for n, _ in select_layers(model, self.cfg.first_layer_dense,
                                                                     self.cfg.last_layer_dense)}

    def score(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext) -> list[Tensor]:
        """Scores for the masked tensors (``weights[i]``: an unmasked weight, or bias with ``prune_bias``).

        Called with the current masks applied; returns one tensor per input tensor, same shapes.
        """
        raise NotImplementedError

    def batches(self, ctx: PruneContext) -> Iterator[tuple[Tensor, Tensor]]:
        """The first ``data_batches`` training batches, without disturbing the training order."""
        gen = ctx.data.generator
        state = gen.get_state() if gen is not None else None
        try:
            for i, (x, y) in enumerate(ctx.data.train):
                if i >= self.cfg.data_batches:
                    break
                yield x.to(ctx.device), y.to(ctx.device)
        finally:
            if state is not None:
                gen.set_state(state)

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach all-ones masks to the selected weights (and biases with ``prune_bias``); weights stay trainable."""
        dense = attach_dense(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense, self.cfg.prune_bias)
        self.layers, self.masks, self.weights = dense.layers, dense.masks, dense.tensors

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Data for data-dependent scores; a guard the target can meet; a compression the model can hold.

        Raises:
            ConfigError: no data for a data-dependent score, ``prune_bias`` on a model without layer
                biases, or ``min_weights_per_layer`` reserving more weights than the target keeps.
        """
        if self.cfg.prune_bias:
            require_layer_biases(model, "pruner.prune_bias=true")
        if self.needs_data and ctx.data is None:
            raise ConfigError(f"pruner={self.cfg.name} needs training data to score weights.")
        warnings = []
        sizes = [w.numel() for w in self.weights]
        total = sum(sizes)
        target = KEPT_COUNTS[self.cfg.kept_count](total, round_sparsity(1, 1, self.cfg))
        if self.cfg.min_weights_per_layer and self.cfg.scope == "global":
            reserved = sum(min(self.cfg.min_weights_per_layer, n) for n in sizes)
            if reserved > target:
                raise ConfigError(f"the target keeps {target} weights but pruner.min_weights_per_layer="
                                  f"{self.cfg.min_weights_per_layer} reserves {reserved} over {len(sizes)} masked "
                                  "tensors; lower the guard or pruner.sparsity.")
        if self.cfg.compression is not None and (self.cfg.density) * total < 1:
            warnings.append(f"pruner.compression={self.cfg.compression:g} asks for a density of "
                            f"10^-{self.cfg.compression:g}, below one weight of the {total} masked ones; "
                            f"{target} weight(s) will be kept.")
        return warnings

    #: Scores of pruned entries are exactly 0 (SynFlow: ``|W * dR/dW|`` with ``dR/dW = 0`` where ``m = 0``), so a
    #: global round can select among the kept entries only (:func:`shrink_global`).
    zero_outside_mask = False

    def score_kept(self, model: nn.Module, weights: list[Tensor], ctx: PruneContext,
                   kept: list[Tensor]) -> list[Tensor]:
        """The scores of the kept entries only (1-D per tensor, in the order of ``kept``); by default gathered
        from :meth:`score`. Methods with ``zero_outside_mask`` may compute them directly (cheaper)."""
        return [s.reshape(-1)[i] for s, i in zip(self.score(model, weights, ctx), kept, strict=True)]

    def kept_round(self, model: nn.Module, ctx: PruneContext, kept: list[Tensor], total: int) -> list[Tensor] | None:
        """One global round among the kept entries (``zero_outside_mask`` methods): keeps the ``total`` best,
        zeroes the masks at the others, and returns the new kept indices (ascending, per tensor); ``None``
        when the answer would involve zero scores (then every entry is scored and :func:`allocate` decides).

        Raises:
            NonFiniteError: NaN scores.
        """
        return self._apply_kept(self.score_kept(model, self.weights, ctx, kept), kept, total)

    def _apply_kept(self, kept_scores: list[Tensor], kept: list[Tensor], total: int,
                    zero_weights: bool = False) -> list[Tensor] | None:
        """:func:`shrink_global` on the kept entries' scores, applied to the masks (see :meth:`kept_round`);
        with ``zero_weights`` the weights are zeroed at the dropped entries too (masks folded into them)."""
        shrunk = shrink_global(kept_scores, kept, total)
        if shrunk is None:
            return None
        with torch.no_grad():
            for fm, w, (_, dropped) in zip(self.masks, self.weights, shrunk, strict=True):
                fm.mask.view(-1)[dropped] = 0.0
                if zero_weights:
                    w.view(-1)[dropped] = 0.0
        return [k_idx for k_idx, _ in shrunk]

    def begin_scoring(self, model: nn.Module, ctx: PruneContext) -> None:
        """Before the first round (e.g. SynFlow's absolute-valued network); default nothing."""

    def end_scoring(self, model: nn.Module) -> None:
        """After the last round, also when a round fails or a stop is requested; default nothing."""

    def initialize(self, model: nn.Module, ctx: PruneContext) -> None:
        """Run the score -> mask rounds (checking for a stop request between rounds)."""
        n = self.cfg.iterations
        count = KEPT_COUNTS[self.cfg.kept_count]
        was_training = model.training
        track = self.zero_outside_mask and self.cfg.scope == "global" and not self.cfg.min_weights_per_layer
        kept: list[Tensor] | None = None  # with `track`: flat indices of the kept entries of each tensor
        total_n = sum(w.numel() for w in self.weights)
        self.begin_scoring(model, ctx)
        try:
            for k in range(1, n + 1):
                sparsity = round_sparsity(k, n, self.cfg)
                self._set_bn_mode(model)
                shrunk = None
                if kept is not None:  # only entries kept so far can stay: select among them
                    shrunk = self.kept_round(model, ctx, kept, count(total_n, sparsity))
                if shrunk is None:  # the first round, or (rarely) zero scores among the kept: score everything
                    scores = self.score(model, self.weights, ctx)
                with torch.no_grad():
                    if shrunk is not None:
                        kept = shrunk
                    else:
                        new = allocate(scores, sparsity, self.cfg.scope, self.cfg.min_weights_per_layer, count)
                        self._note_ties(k, n, scores, new)
                        for fm, m in zip(self.masks, new, strict=True):
                            fm.mask.copy_(m)
                        if track:
                            kept = [m.reshape(-1).nonzero().squeeze(1) for m in new]
                for w in self.weights:
                    w.grad = None
                model.train(was_training)
                if k < n:
                    ctx.stop.check(f"pruning round {k} of {n}")
        finally:
            self.end_scoring(model)
            model.train(was_training)

    def _note_ties(self, k: int, n: int, scores: list[Tensor], masks: list[Tensor]) -> None:
        """Log and remember a round that kept some but not all zero-scored weights (by lowest index)."""
        tied, kept = zero_ties(scores, masks)
        if tied:
            log.warning("pruner=%s round %d of %d: %d weights score exactly 0 at the threshold and %d of them are "
                        "kept, by lowest index (an arbitrary choice among equals; Synaptic-Flow removes every "
                        "score <= the threshold and would keep fewer)", self.cfg.name, k, n, tied, kept)
            self.zero_ties.append({"round": k, "tied_at_zero": tied, "kept": kept})

    def _set_bn_mode(self, model: nn.Module) -> None:
        model.train(self.cfg.bn_mode == "train")

    def state_dict(self) -> dict[str, Any]:
        """The rounds that broke a tie among zero scores (the masks are in the model)."""
        return {"zero_ties": list(self.zero_ties)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.zero_ties = list(state.get("zero_ties", []))

    def summary(self) -> dict[str, Any]:
        """Scoring settings worth keeping next to the result (and the zero-score ties, if any)."""
        out: dict[str, Any] = {"prune_iterations": self.cfg.iterations, "prune_scope": self.cfg.scope}
        if self.zero_ties:
            out["zero_score_ties"] = self.zero_ties
        return out
