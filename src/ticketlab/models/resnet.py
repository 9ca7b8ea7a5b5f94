"""Residual networks.

* ``resnet18``, ``resnet34``: He et al. 2016 BasicBlock networks ([2,2,2,2] / [3,4,6,3]) with the
  CIFAR stem (3x3 conv, stride 1, no max-pool), 1x1-conv + BN shortcuts, global average pooling
  -- the cResNet18 of Ramanujan et al. 2020 and hidden-networks ``models/resnet_cifar.py``.
* ``resnet20``: He et al. 2016, Sec. 4.2 CIFAR ResNet (16/32/64 channels, 3 blocks per stage),
  with 1x1-conv shortcuts (open_lth ``cifar_resnet_20``).
* ``resnet50``: torchvision's ResNet-50 (ImageNet stem); ``width_mult`` scales the bottleneck width
  (``width_mult=2`` is Wide-ResNet-50-2).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.models.registry import MODELS, scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv-BN shortcut.

    Shapes: ``(B, c_in, H, W) -> (B, c_out, H / stride, W / stride)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, bias: bool, bn: partial) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.bn1 = bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.bn2 = bn(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=bias), bn(c_out))

    def forward(self, x):  # noqa: D102
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """BasicBlock ResNet with a CIFAR stem.

    Args:
        blocks: blocks per stage.
        widths: channels per stage (before ``width_mult``).
        input_shape: ``(C, H, W)``.
        num_classes: outputs.
        cfg: model config (bias, BN affine, width multiplier).

    Shapes: input ``(B, C, H, W)``; output ``(B, num_classes)``.
    """

    def __init__(self, blocks: list[int], widths: list[int], input_shape: tuple[int, int, int],
                 num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        bn = partial(nn.BatchNorm2d, affine=cfg.bn_affine)
        w = [scaled(x, cfg.width_mult) for x in widths]
        stem = cfg.stem_width or w[0]  # IteRand's reference keeps a 64-channel stem at every width factor
        self.conv1 = nn.Conv2d(input_shape[0], stem, 3, 1, 1, bias=cfg.bias)
        self.bn1 = bn(stem)
        self.relu = nn.ReLU(inplace=True)
        stages, c = [], stem
        for i, (n, c_out) in enumerate(zip(blocks, w, strict=True)):
            for j in range(n):
                stages.append(BasicBlock(c, c_out, 2 if (i > 0 and j == 0) else 1, cfg.bias, bn))
                c = c_out
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes, bias=cfg.bias)

    def forward(self, x):  # noqa: D102
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@MODELS.register("resnet18", stem_width=True)
def build_resnet18(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR ResNet-18 (~11.2M weights at width 1)."""
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], input_shape, num_classes, cfg)


@MODELS.register("resnet34", stem_width=True)
def build_resnet34(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR ResNet-34."""
    return CifarResNet([3, 4, 6, 3], [64, 128, 256, 512], input_shape, num_classes, cfg)


@MODELS.register("resnet20", stem_width=True)
def build_resnet20(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016, Sec. 4.2)."""
    return CifarResNet([3, 3, 3], [16, 32, 64], input_shape, num_classes, cfg)


@MODELS.register("resnet50")
def build_resnet50(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision ResNet-50 (ImageNet stem); BN affinity and bottleneck width from ``cfg``.

    ``cfg.bias`` is not used: torchvision's convolutions have no bias and its classifier has one.
    """
    import torchvision  # imported here: it costs about a second of start-up (torch._dynamo)

    model = torchvision.models.resnet50(weights=None, num_classes=num_classes,
                                        width_per_group=scaled(64, cfg.width_mult))
    if not cfg.bn_affine:  # torchvision's constructor initializes BN weights, so drop them afterwards
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.affine = False
                m.register_parameter("weight", None)
                m.register_parameter("bias", None)
    if input_shape[0] != 3:
        model.conv1 = nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False)
    return model
