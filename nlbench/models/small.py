"""Small models for 28x28 inputs and vector data: ``mlp`` and ``lenet``."""

from __future__ import annotations

import math

import torch
from torch import nn

from nlbench.models import FeatureModel, register_model


class MLP(FeatureModel):
    """Flatten, then ``depth`` hidden ReLU layers of ``width`` units; the last hidden layer is the feature."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int = 256, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LeNet(FeatureModel):
    """LeNet-5 (LeCun et al. 1998) with BatchNorm after each conv: conv 6 - pool - conv 16 - pool - fc 120 -
    fc 84 (the feature) - fc C.

    BatchNorm gives the meta passes running statistics to protect; the classic widths keep a Fashion-MNIST
    epoch at a few seconds on two CPU cores.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            d = self.body(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(d, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True))
        self.head = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


@register_model("mlp")
def mlp(num_classes: int, input_shape: tuple[int, ...]) -> MLP:
    """MLP with two hidden layers of 256 ReLU units (vector data, the phases study)."""
    return MLP(num_classes, input_shape)


@register_model("mlp512")
def mlp512(num_classes: int, input_shape: tuple[int, ...]) -> MLP:
    """MLP with two hidden layers of 512 ReLU units: it memorises a noisy Fashion-MNIST pool of 4,000 images in
    about 20 epochs (the memorisation protocol's model; ``results/protocol/search.md``)."""
    return MLP(num_classes, input_shape, width=512, depth=2)


@register_model("mlp1024")
def mlp1024(num_classes: int, input_shape: tuple[int, ...]) -> MLP:
    """MLP with two hidden layers of 1024 ReLU units (tried by the protocol search; 2-3x the cost of ``mlp512``)."""
    return MLP(num_classes, input_shape, width=1024, depth=2)


@register_model("lenet")
def lenet(num_classes: int, input_shape: tuple[int, ...]) -> LeNet:
    """LeNet-5 with BatchNorm after each conv, 84-d features (Fashion-MNIST, the leaderboard's model)."""
    if len(input_shape) != 3:
        raise ValueError(f"lenet needs image inputs (C, H, W), got shape {input_shape}")
    return LeNet(num_classes, input_shape)
