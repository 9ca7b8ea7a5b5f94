"""``pruner=edge_popup``: Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?".

The weights keep their random initialization forever; a score per weight is trained with SGD and the
forward pass uses the weights whose |score| is in the top ``density`` fraction of their layer
(Algorithm 1), with the straight-through gradient of :class:`ticketlab.masks.ScoreMask`.
Reference code: allenai/hidden-networks ``utils/conv_type.py`` (``SubnetConv``, ``GetSubnet``).
Weight decay applies to the scores (the only trained tensors), as in the reference configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import check_choice
from ..init import SCORE_INITS, fans, init_scores
from ..masks import attach_score_masks, prunable_layers, select_layers
from .base import PruneContext, Pruner, PrunerConfig, register_pruner


@dataclass
class EdgePopupConfig(PrunerConfig):
    """``pruner=edge_popup``.

    Attributes:
        sparsity: fraction of each layer's weights removed (default 0.5, i.e. density k = 0.5).
        scope: ``layerwise`` (the paper: same density in every layer) or ``global`` (one top-k).
        rank: ``abs`` ranks ``|S|`` (the paper) or ``raw`` ranks ``S``.
        score_init: ``default`` (PyTorch's Kaiming-uniform a=sqrt(5), the reference code) or
            ``kaiming_uniform``.
        first_layer_dense, last_layer_dense: leave the input / output layer unpruned.
        prune_bias: give layer biases their own scores and top-k (needs ``model.bias=true``).
        train_bn: also train BatchNorm affine parameters (the "+BN" variants; needs
            ``model.bn_affine=true``).
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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("pruner.scope", self.scope, ("layerwise", "global"))
        check_choice("pruner.rank", self.rank, ("abs", "raw"))
        check_choice("pruner.score_init", self.score_init, tuple(SCORE_INITS.names()))


@register_pruner("edge_popup", EdgePopupConfig)
class EdgePopup(Pruner):
    """Edge-popup: frozen weights, trained scores, top-k mask with a straight-through gradient."""

    cfg: EdgePopupConfig

    def densities(self, model: nn.Module) -> dict[str, float]:
        """Density ``1 - sparsity`` for every masked layer (used by ``init.scale_fan``)."""
        layers = select_layers(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        return {name: 1.0 - self.cfg.sparsity for name, _ in layers}

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Freeze every parameter, attach score masks, initialize the scores (seed ``ctx.score_seed``)."""
        for p in model.parameters():
            p.requires_grad_(False)
        index = {id(layer): i for i, (_, layer) in enumerate(prunable_layers(model))}
        layers = select_layers(model, self.cfg.first_layer_dense, self.cfg.last_layer_dense)
        attach_score_masks(model, layers, self.cfg.sparsity, self.cfg.scope, self.cfg.rank, self.cfg.prune_bias)
        named = []
        for _, layer in layers:
            fan_in = fans(tuple(layer.parametrizations.weight.original.shape))[0]
            for tname, plist in layer.parametrizations.items():
                named.append((index[id(layer)], tname, plist[0].scores, fan_in))
        init_scores(named, self.cfg.score_init, ctx.score_seed)
        if self.cfg.train_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                    m.weight.requires_grad_(True)
                    m.bias.requires_grad_(True)
