"""Plain convolutional networks: Conv-2/4/6/8 and CIFAR VGG-11/16/19.

Conv-n (Frankle & Carbin 2019, Fig. 2; Ramanujan et al. 2020, Sec. 4; reference
allenai/hidden-networks ``models/frankle.py``): pairs of 3x3 convs (padding 1) with a 2x2 max-pool
after each pair (64, 128, 256, 512 channels), then a 256-256-num_classes fully connected head.
Bias-free Conv-2/4/6/8 on 32x32 inputs have 4,300,992 / 2,425,024 / 2,261,184 / 5,275,840
weights (counted from the architecture; Frankle & Carbin 2019, Fig. 2 rounds them to 4.3M / 2.4M /
2.3M for Conv-2/4/6). The head is written with ``nn.Linear``
(the reference code uses 1x1 convolutions: same weights and function).

VGG (Simonyan & Zisserman 2015, CIFAR variant of open_lth / Synaptic-Flow ``lottery_vgg``): the
standard configurations with 3x3 convs, optional batch norm, global average pooling and one
``Linear(512, num_classes)`` classifier.
"""

from __future__ import annotations

from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.errors import ConfigError
from ticketlab.models.registry import MODELS, batch_norm, scaled

CONV_N = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
    "conv8": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"],
}
VGG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512],
}


def conv_stack(plan: list, in_channels: int, height: int, width: int, cfg: ModelConfig
               ) -> tuple[nn.Sequential, int, int, int]:
    """3x3 conv (+BN) + ReLU per int in ``plan``, 2x2 max-pool per ``"M"``.

    Returns:
        ``(layers, channels, height, width)`` of the output feature map.

    Raises:
        ConfigError: if a max-pool would shrink the feature map below 1x1.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for item in plan:
        if item == "M":
            if height < 2 or width < 2:
                raise ConfigError(f"its {plan.count('M')} max-pools need inputs of at least "
                                  f"{2 ** plan.count('M')}x{2 ** plan.count('M')} pixels")
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
            continue
        out = scaled(item, cfg.width_mult)
        layers.append(nn.Conv2d(c, out, 3, padding=1, bias=cfg.bias))
        if cfg.batch_norm:
            layers.append(batch_norm(2, out, cfg.bn_affine))
        layers.append(nn.ReLU(inplace=True))
        c = out
    return nn.Sequential(*layers), c, height, width


class ConvNet(nn.Module):
    """Conv-n: ``conv_stack`` then Flatten -> 256 -> 256 -> num_classes (ReLU between).

    Shapes: input ``(B, C, H, W)``; output ``(B, num_classes)``.
    """

    def __init__(self, plan: list, input_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.features, c, h, w = conv_stack(plan, input_shape[0], input_shape[1], input_shape[2], cfg)
        hidden = scaled(256, cfg.width_mult)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, hidden, bias=cfg.bias), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=cfg.bias), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes, bias=cfg.bias),
        )

    def forward(self, x):  # noqa: D102
        return self.classifier(self.features(x))


class VGGNet(nn.Module):
    """CIFAR VGG: ``conv_stack`` then global average pooling and ``Linear(C, num_classes)``.

    Shapes: input ``(B, C, H, W)``; output ``(B, num_classes)``.
    """

    def __init__(self, plan: list, input_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.features, c, _, _ = conv_stack(plan, input_shape[0], input_shape[1], input_shape[2], cfg)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes, bias=cfg.bias)

    def forward(self, x):  # noqa: D102
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _register(name: str, plan: list, cls: type[nn.Module]) -> None:
    def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return cls(plan, input_shape, num_classes, cfg)

    build.__doc__ = f"``{name}``: {cls.__name__} with plan {plan}."
    MODELS.register(name)(build)


for _name, _plan in CONV_N.items():
    _register(_name, _plan, ConvNet)
for _name, _plan in VGG.items():
    _register(_name, _plan, VGGNet)
