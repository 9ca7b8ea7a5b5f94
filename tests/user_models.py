"""Models written with plain torch, as a user of TicketLab would: nothing here imports ticketlab."""

from __future__ import annotations

from torch import nn


class TinyConvNet(nn.Module):
    """A small conv net for 8x8 digits: conv, ReLU, conv, ReLU, pool, linear (with biases on the linear)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1, bias=False), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TwoBranchNet(nn.Module):
    """Two parallel convolutions whose outputs are added (neither a chain nor a torchvision-style ResNet)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(in_channels, 8, 1, bias=False)
        self.head = nn.Linear(8, num_classes, bias=False)

    def forward(self, x):
        return self.head((self.a(x) + self.b(x)).relu().mean((2, 3)))
