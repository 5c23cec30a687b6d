"""``cifar-fast``: a small, fast CIFAR network in the style of Keller Jordan's airbench94.

Written from the published description of airbench (github.com/KellerJordan/airbench; Jordan, "94% on CIFAR-10
in 3.29 seconds on a single GPU", arXiv 2404.00498), not from its code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.models import FeatureModel, register_model


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with a learned shift only: the scale is fixed at 1 (``requires_grad=False``), as in airbench.

    The following GELU and the next BatchNorm make a per-channel scale redundant in all but the last block, and a
    frozen scale is one fewer thing for the large learning rates of short schedules to push around.
    """
    bn = nn.BatchNorm2d(channels)
    bn.weight.requires_grad_(False)
    return bn


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """3x3 "same" convolution without bias; its first ``min(cin, cout)`` filters start as the identity."""
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    k = min(cin, cout)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:k])
    return conv


class _Block(nn.Module):
    """conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU; halves the spatial size."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout), _bn(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), _bn(cout)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class CifarFast(FeatureModel):
    """airbench94-style network: 2x2 stem, three conv-pool-BN-GELU blocks, global max pool, scaled linear head.

    Layout (defaults are airbench94's widths, ~1.97M parameters, d = 256):

    - stem: 2x2 convolution without padding to ``stem_width`` channels (default ``2 * C * 2 * 2``, i.e. 24 for
      RGB, the width of airbench's whitening layer), then BatchNorm and GELU; 32x32 becomes 31x31;
    - three :class:`_Block` of ``widths`` = 64 / 256 / 256 channels (31 -> 15 -> 7 -> 3);
    - global max pool (airbench's 3x3 max pool on CIFAR's 3x3 maps; global, so 28x28 and larger inputs work);
    - the features are multiplied by ``scale`` = 1/9 and go to a bias-free linear ``head``. Since the head is
      bias-free, ``head(scale * f) = scale * head(f)``: this is airbench's down-scaled output, placed before the
      head so that ``forward(x) == head(features(x))`` holds with a plain ``nn.Linear`` head.

    Differences from airbench94, all deliberate:

    - **No whitening initialisation.** airbench sets the stem's filters from the eigenvectors of the covariance
      of 2x2 patches of the training images and freezes them. A model factory here never sees the data, so the
      stem is an ordinary trainable convolution with PyTorch's default initialisation, followed by a BatchNorm
      (the airbench author's ablation baseline without the whitening init, KellerJordan/cifar10-zoo, has one there
      too). ``widths`` and ``stem_width`` make small instances for tests.
    - BatchNorm uses PyTorch's default momentum (0.1) and eps; airbench's faster running-statistics momentum goes
      with its lookahead optimiser, which nlbench's harness does not have.
    - Kept from airbench: GELU, frozen BatchNorm scales, identity (Dirac) initialisation of the first
      ``min(c_in, c_out)`` filters of each 3x3 convolution, bias-free convolutions and head, the 1/9 output scale.

    The input must be at least 9x9 (the 2x2 stem, then three halvings).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], widths: Sequence[int] = (64, 256, 256),
                 stem_width: int | None = None, scale: float = 1 / 9):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cifar-fast needs image inputs (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        need = 2 ** len(widths) + 1  # the 2x2 stem takes one pixel, each block halves
        if min(h, w) < need:
            raise ValueError(f"cifar-fast needs inputs of at least {need}x{need}, got {h}x{w}")
        stem_width = 2 * c * 2 * 2 if stem_width is None else stem_width
        self.stem = nn.Sequential(nn.Conv2d(c, stem_width, 2, bias=False), _bn(stem_width), nn.GELU())
        blocks, cin = [], stem_width
        for width in widths:
            blocks.append(_Block(cin, width))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.scale = float(scale)
        self.head = nn.Linear(cin, num_classes, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return F.max_pool2d(x, x.shape[-2:]).flatten(1) * self.scale


@register_model("cifar-fast")
def cifar_fast(num_classes: int, input_shape: tuple[int, ...]) -> CifarFast:
    """airbench94-style net (Jordan 2024): 2x2 stem, 3 conv-pool-BN-GELU blocks 64/256/256, d=256; no whitening.

    See :class:`CifarFast`; ~1.97M parameters. The preset ``cifar10-fast`` trains it on a short schedule.
    """
    return CifarFast(num_classes, input_shape)
