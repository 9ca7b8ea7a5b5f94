"""Model zoo. Every builder is registered in :data:`MODELS` under its config name.

Every module of this package is imported here, so adding a model is one module that registers
its builder (``@MODELS.register("name")``; ``stem_width=True`` when it honours
``model.stem_width``) and one ``conf/model/<name>.yaml``.

A builder takes ``(cfg: ModelConfig, input_shape: (C, H, W), num_classes)`` and returns a plain
``nn.Module``: no custom layer classes, so masks attach through parametrizations
(:mod:`ticketlab.sparsity.masks`) to these and to torchvision's models alike.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.errors import ConfigError, describe
from ticketlab.models.registry import MODELS

__all__ = ["MODELS", "build_model"]

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")


def build_model(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int,
                dataset_name: str = "the dataset") -> nn.Module:
    """Build the model named ``cfg.name`` and check that it accepts ``input_shape``.

    Args:
        cfg: model config.
        input_shape: ``(channels, height, width)`` of one input image.
        num_classes: number of output logits.
        dataset_name: used in the error message.

    Returns:
        The model (on CPU, in training mode) mapping ``(B, C, H, W)`` to ``(B, num_classes)``.

    Raises:
        ConfigError: unknown model name, or a model that does not fit the input shape (checked
            with a forward pass of two zero images).
    """
    builder = MODELS.get(cfg.name)
    shape_txt = "x".join(map(str, input_shape))
    try:
        model = builder(cfg, input_shape, num_classes)
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
        model.train()
    except ConfigError as e:
        raise ConfigError(f"model.name={cfg.name!r} does not fit {dataset_name} (input {shape_txt}): {e}") from e
    except RuntimeError as e:
        raise ConfigError(
            f"model.name={cfg.name!r} does not fit {dataset_name} (input {shape_txt}): the forward pass fails "
            f"with: {describe(e)}. Use a model built for this input size (mlp fits any input)."
        ) from e
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model.name={cfg.name!r} returns shape {tuple(out.shape)} for a batch of 2, "
                          f"expected (2, {num_classes}).")
    return model
