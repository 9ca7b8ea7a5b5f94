"""``init=torch_default``: PyTorch's own layer initialization.

``nn.Linear`` and ``nn.Conv2d`` ``reset_parameters`` draw the weight with ``kaiming_uniform_(a=sqrt(5))``,
i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (variance ``1 / (3 fan_in)``), and the bias from
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. Networks that keep these defaults, such as the MNIST
fully-connected networks of ganguli-lab/Synaptic-Flow (``Models/mlp.py``), are initialized by this
option; ``conf/init/torch_default.yaml`` pairs it with ``bias_init: default``.

The draw comes from the layer's own seeded generator (:func:`ticketlab.init.weights.layer_generator`),
so the values differ from ``torch.manual_seed``'s stream while the distribution is PyTorch's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ticketlab.init.weights import WEIGHT_INITS


@WEIGHT_INITS.register("torch_default")
def torch_default(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    """``U(-b, b)`` of ``shape``, PyTorch's ``kaiming_uniform_(a=sqrt(5))``.

    Args:
        shape: weight shape ``(out, in, *kernel)``.
        std: what :func:`~ticketlab.init.weights.weight_std` computes, ``gain / sqrt(fan)``; with this
            option's ``nonlinearity: linear`` and ``mode: fan_in`` it is ``1 / sqrt(fan_in)``, PyTorch's
            bound ``b`` (times the density factor under ``scale_fan``), and is used as the bound.
        gen: the layer's generator.

    Returns:
        Float32 tensor of ``shape`` with entries uniform in ``[-b, b)``, variance ``b^2 / 3``.
    """
    return (torch.rand(shape, generator=gen) * 2 - 1) * std

