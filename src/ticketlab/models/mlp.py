"""Fully connected networks: ``mlp`` (widths from config) and ``lenet300_100``.

LeNet-300-100 is the MLP 784-300-100-10 of LeCun et al. 1998, as used by Frankle & Carbin 2019
(Fig. 2) and the MNIST FC of Ramanujan et al. 2020: 266,200 weights without biases.
"""

from __future__ import annotations

import math

from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.models.registry import MODELS, batch_norm, scaled


class MLP(nn.Module):
    """Flatten, then ``Linear -> [BN] -> ReLU`` per hidden width, then a ``Linear`` classifier.

    Args:
        in_features: flattened input size (C*H*W).
        widths: hidden widths.
        num_classes: outputs.
        bias: layer biases.
        bn: batch norm after each hidden Linear.
        bn_affine: learnable BN parameters.

    Shapes: input ``(B, *)`` with ``prod(*) == in_features``; output ``(B, num_classes)``.
    """

    def __init__(self, in_features: int, widths: list[int], num_classes: int, bias: bool = False,
                 bn: bool = False, bn_affine: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for w in widths:
            layers.append(nn.Linear(prev, w, bias=bias))
            if bn:
                layers.append(batch_norm(1, w, bn_affine))
            layers.append(nn.ReLU(inplace=True))
            prev = w
        layers.append(nn.Linear(prev, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # noqa: D102
        return self.net(x)


@MODELS.register("mlp")
def build_mlp(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``mlp``: hidden widths ``cfg.widths`` scaled by ``cfg.width_mult``."""
    return MLP(math.prod(input_shape), [scaled(w, cfg.width_mult) for w in cfg.widths], num_classes,
               cfg.bias, cfg.batch_norm, cfg.bn_affine)


@MODELS.register("lenet300_100")
def build_lenet300_100(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``lenet300_100``: the MLP with ``cfg.widths`` (default ``[300, 100]``, see conf/model)."""
    return build_mlp(cfg, input_shape, num_classes)
