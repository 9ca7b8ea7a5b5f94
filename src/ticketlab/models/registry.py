"""The model registry (separate module so model files can import it without cycles)."""

from collections.abc import Callable

from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.registry import Registry

ModelBuilder = Callable[[ModelConfig, tuple[int, int, int], int], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


def scaled(width: int, mult: float) -> int:
    """``width * mult`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(width * mult)))


def batch_norm(dim: int, channels: int, affine: bool) -> nn.Module:
    """``BatchNorm{1,2}d`` with optional affine parameters (edge-popup uses non-affine BN)."""
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(channels, affine=affine)
