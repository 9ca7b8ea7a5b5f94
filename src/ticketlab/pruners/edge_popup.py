"""``pruner=edge_popup``: Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?".

The weights keep their random initialization; a score per weight is trained with SGD and the
forward pass uses the weights whose |score| is in the top ``density`` fraction of their layer
(Algorithm 1), with the straight-through gradient of :class:`ticketlab.sparsity.masks.ScoreMask`.
Reference code: allenai/hidden-networks ``utils/conv_type.py`` (``SubnetConv``, ``GetSubnet``).
Weight decay applies to the scores (the only trained tensors), as in the reference configs.

The extensions of Fischer & Burkholz 2021 ("Towards strong pruning for lottery tickets with
non-zero biases", arXiv 2110.11150, Sec. 4; code RelationalML/NonZeroBiases ``Edge Pop Up``) are
options of this pruner, so they combine with every method built on it:

* ``prune_bias``: biases get scores and compete with the weights in one top-k per layer;
* ``clamp_scores``: scores are clamped to >= 0 after every optimizer step;
* ``anneal_levels``: density annealing -- the density starts at
  ``anneal_start_density * f`` and is multiplied by ``f = (density / start) ** (1 / levels)`` at
  each level, the epochs being split evenly between levels (pair with ``scheduler.cycles``
  to restart the cosine at each level, as the reference does);
* ``scaling``: "scaled edge-popup" -- after each epoch a scalar ``s`` is fitted by 20 SGD steps
  (lr 0.1) on ``CE(s * logits, y)`` over the last training batch (``s <= 0`` resets to 1); layer
  ``l`` of ``L`` then has its weights multiplied by ``s ** (1 / L)`` and its bias by
  ``s ** (l / L)``, and the base learning rate is divided by ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError, check_choice, check_range
from ticketlab.init.weights import SCORE_INITS, fans, init_scores
from ticketlab.pruners.base import (
    PruneContext,
    Pruner,
    PrunerConfig,
    register_pruner,
    require_affine_bn,
    require_layer_biases,
)
from ticketlab.pruners.phases import TrainState
from ticketlab.sparsity.masks import (
    ScoreMask,
    attach_score_masks,
    prunable_layers,
    score_groups,
    select_layers,
    underlying,
)
from ticketlab.sparsity.selection import KEPT_COUNTS


@dataclass
class EdgePopupConfig(PrunerConfig):
    """``pruner=edge_popup``.

    Attributes:
        sparsity: fraction of each layer's weights removed (default 0.5, i.e. density k = 0.5).
        scope: ``layerwise`` (the paper: same density in every layer) or ``global`` (one top-k).
        rank: ``abs`` ranks ``|S|`` (the paper) or ``raw`` ranks ``S`` (IteRand).
        score_init: ``default`` (PyTorch's Kaiming-uniform a=sqrt(5), the reference code),
            ``kaiming_uniform`` (ReLU gain, IteRand) or ``constant`` (0.5 plus a 1e-4 uniform
            jitter that breaks ties at random; Fischer & Burkholz use 0.5 without jitter).
        first_layer_dense, last_layer_dense: leave the input / output layer unpruned.
        prune_bias: give layer biases scores, ranked jointly with the weights (needs
            ``model.bias=true``).
        train_bn: also train BatchNorm affine parameters (the "+BN" variants; needs
            ``model.bn_affine=true``).
        clamp_scores: clamp scores to >= 0 after every step (Fischer & Burkholz).
        anneal_levels: number of density-annealing levels (0 = off).
        anneal_start_density: density the annealing starts from (default 0.6, as the reference).
        scaling: scaled edge-popup (fit an output scale after every epoch).
        kept_count: ``floor`` keeps ``n - floor(p n)`` weights per layer (allenai/hidden-networks);
            ``percentile`` keeps ``n - round(p (n - 1))`` as IteRand's reference code base computes it
            (dchiji-ntt/iterand, for its edge-popup and IteRand alike;
            :func:`ticketlab.sparsity.selection.num_kept_percentile`). Layerwise scope only; with
            ``prune_bias`` the rule counts the layer's weights and bias together.
    """

    name: str = "edge_popup"
    sparsity: float = 0.5
    scope: str = "layerwise"
    rank: str = "abs"
    score_init: str = "default"
    first_layer_dense: bool = False
    last_layer_dense: bool = False
    prune_bias: bool = False
    train_bn: bool = False
    clamp_scores: bool = False
    anneal_levels: int = 0
    anneal_start_density: float = 0.6
    scaling: bool = False
    kept_count: str = "floor"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("pruner.scope", self.scope, ("layerwise", "global"))
        check_choice("pruner.rank", self.rank, ("abs", "raw"))
        check_choice("pruner.score_init", self.score_init, tuple(SCORE_INITS.names()))
        check_range("pruner.anneal_levels", self.anneal_levels, 0, float("inf"))
        check_choice("pruner.kept_count", self.kept_count, ("floor", "percentile"))
        if self.kept_count == "percentile" and self.scope != "layerwise":
            raise ConfigError("pruner.kept_count=percentile is a per-layer rule; it needs pruner.scope=layerwise "
                              f"(got {self.scope}).")
        if self.anneal_levels:
            check_range("pruner.anneal_start_density", self.anneal_start_density, self.density, 1.0,
                        lo_open=True)


@register_pruner("edge_popup", EdgePopupConfig)
class EdgePopup(Pruner):
    """Edge-popup: frozen weights, trained scores, top-k mask with a straight-through gradient."""

    cfg: EdgePopupConfig
    mask_class: type[ScoreMask] = ScoreMask

    def __init__(self, cfg: EdgePopupConfig) -> None:
        super().__init__(cfg)
        self.masks: list[ScoreMask] = []
        self.level = 0  # density-annealing level
        self.level_ends: list[int] = []
        self.scale = 1.0  # cumulative output scale of scaled edge-popup

    # ----------------------------------------------------------------- set-up
    def densities(self, model: nn.Module) -> dict[str, float]:
        """Density ``1 - sparsity`` for every masked layer (used by ``init.scale_fan``)."""
        layers = select_layers(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        return {name: self.cfg.density for name, _ in layers}

    def level_sparsity(self, level: int) -> float:
        """Sparsity of annealing level ``level`` (0-based); the target at the last level."""
        target = self.cfg.density
        start = self.cfg.anneal_start_density
        factor = (target / start) ** (1.0 / self.cfg.anneal_levels)
        return 1.0 - (target if level == self.cfg.anneal_levels - 1 else start * factor ** (level + 1))

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Freeze every parameter, attach score masks, initialize the scores (seed ``ctx.score_seed``)."""
        for p in model.parameters():
            p.requires_grad_(False)
        index = {id(layer): i for i, (_, layer) in enumerate(prunable_layers(model))}
        layers = select_layers(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        sparsity = self.cfg.sparsity
        if self.cfg.anneal_levels:
            n = self.cfg.anneal_levels
            self.level_ends = [round((j + 1) * ctx.epochs / n) for j in range(n)]
            sparsity = self.level_sparsity(0)
        self.masks = attach_score_masks(model, layers, sparsity, self.cfg.scope, self.cfg.rank,
                                        self.cfg.prune_bias, self.mask_class, KEPT_COUNTS[self.cfg.kept_count])
        named = []
        for _, layer in layers:
            fan_in = fans(tuple(underlying(layer, "weight").shape))[0]
            for tname, plist in layer.parametrizations.items():
                named.append((index[id(layer)], tname, plist[0].scores, fan_in))
        init_scores(named, self.cfg.score_init, ctx.score_seed)
        if self.cfg.train_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                    m.weight.requires_grad_(True)
                    m.bias.requires_grad_(True)

    def check(self, model: nn.Module, ctx: PruneContext) -> list[str]:
        """Annealing needs at least one epoch per level; bias pruning needs biases, BN training affine BN.

        Raises:
            ConfigError: more annealing levels than epochs, ``prune_bias`` on a model without layer
                biases, or ``train_bn`` without affine batch norm.
        """
        if self.cfg.prune_bias:
            require_layer_biases(model, "pruner.prune_bias=true")
        if self.cfg.train_bn:
            require_affine_bn(model, "pruner.train_bn")
        if self.cfg.anneal_levels and ctx.epochs < self.cfg.anneal_levels:
            raise ConfigError(f"pruner.anneal_levels={self.cfg.anneal_levels} needs at least as many epochs; "
                              f"trainer.epochs={ctx.epochs}.")
        return []

    def current_sparsity(self) -> float:
        """The sparsity in force: the annealing level's, or the target."""
        return self.level_sparsity(self.level) if self.cfg.anneal_levels else self.cfg.sparsity

    # ----------------------------------------------------------------- hooks
    def on_step_end(self, state: TrainState) -> None:
        """Clamp scores to >= 0 when ``clamp_scores``."""
        if self.cfg.clamp_scores:
            with torch.no_grad():
                for m in self.masks:
                    m.scores.clamp_(min=0)

    def begin_epoch(self, state: TrainState) -> None:
        """The annealing level of 0-based epoch ``state.epoch``: the epoch trains and is evaluated at it."""
        if not self.cfg.anneal_levels:
            return
        level = sum(1 for end in self.level_ends[:-1] if state.epoch >= end)
        if level != self.level:
            self.level = level
            for unit in score_groups(self.masks):
                unit.set_sparsity(self.level_sparsity(self.level))

    def on_epoch_end(self, state: TrainState) -> None:
        """Fit the output scale (scaled edge-popup); predictions, and so the epoch's accuracy, do not change."""
        if self.cfg.scaling and state.batch is not None:
            self._rescale(state)

    def _rescale(self, state: TrainState) -> None:
        x, y = state.global_batch()  # the whole last batch, on every rank alike
        model = state.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(x).float()
        model.train(was_training)
        s = torch.ones((), device=logits.device, requires_grad=True)
        opt = torch.optim.SGD([s], lr=0.1)
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(s * logits, y).backward()
            opt.step()
        scale = float(s.detach())
        if scale <= 0:
            scale = 1.0
        layers = prunable_layers(model)
        n = len(layers)
        with torch.no_grad():
            for i, (_, layer) in enumerate(layers, start=1):
                underlying(layer, "weight").mul_(scale ** (1.0 / n))
                if getattr(layer, "bias", None) is not None:
                    underlying(layer, "bias").mul_(scale ** (i / n))
        state.scale_lr(1.0 / scale)
        self.scale *= scale

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Annealing level and cumulative output scale."""
        return {"level": self.level, "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the annealing level (and the masks' sparsity) and the output scale."""
        self.level, self.scale = state.get("level", 0), state.get("scale", 1.0)
        if self.cfg.anneal_levels:
            for unit in score_groups(self.masks):
                unit.set_sparsity(self.level_sparsity(self.level))

    def summary(self) -> dict[str, Any]:
        """Annealing level reached and fitted output scale, when used."""
        out: dict[str, Any] = {}
        if self.cfg.anneal_levels:
            out["anneal_level"] = self.level + 1
        if self.cfg.scaling:
            out["output_scale"] = self.scale
        return out


