"""CIFAR-style residual backbones plus torchvision's ResNet-50.

``resnet32`` (MW-Net), ``preact-resnet18`` (Co-teaching+/DivideMix), ``resnet34`` (FINE/DivideMix on CIFAR-100),
``wrn-28-10`` and ``resnet50`` (Clothing1M). Every stem takes ``input_shape[0]`` channels and ends in adaptive
average pooling, so 28x28 and 32x32 (and larger) inputs all work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.models import FeatureModel, register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _init(module: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), BatchNorm to identity; Linear layers keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _PadShortcut(nn.Module):
    """Option-A shortcut of He et al. (2016): subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, add shortcut, ReLU.

    ``shortcut="A"`` is the parameter-free zero-padding shortcut (CIFAR ResNets of He et al.), ``"B"`` a
    1x1 conv + BN projection (ImageNet ResNets, Kuang Liu's CIFAR ResNet-34); both only when the shape changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = _PadShortcut(cin, cout, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016b): BN-ReLU-conv, BN-ReLU-[dropout]-conv, plus shortcut.

    The 1x1 projection (when the shape changes) reads the pre-activated input, as in Kuang Liu's
    ``PreActBlock`` and Zagoruyko & Komodakis' WRN block; ``dropout`` is WRN's dropout between the convs.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + short


def _stage(make, cin: int, cout: int, n: int, stride: int) -> tuple[nn.Sequential, int]:
    blocks = [make(cin, cout, stride)] + [make(cout, cout, 1) for _ in range(n - 1)]
    return nn.Sequential(*blocks), cout


class ResNet(FeatureModel):
    """Generic CIFAR residual net: 3x3 stem conv (no max-pool), stages, [BN-ReLU], global average pool.

    ``make(cin, cout, stride)`` builds one block; stage i has ``depths[i]`` blocks of ``widths[i]`` channels
    (stride 2 from the second stage on). ``post=True`` gives the stem a BN-ReLU (post-activation nets with
    :class:`BasicBlock`); ``final_bn=True`` adds a BN-ReLU after the last stage (pre-activation WRN).
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, ...],
        make,
        widths: list[int],
        depths: list[int],
        stem: int,
        post: bool,
        final_bn: bool,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"residual nets need image inputs (C, H, W), got shape {input_shape}")
        stem_layers: list[nn.Module] = [_conv3x3(input_shape[0], stem)]
        if post:
            stem_layers += [nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem_layers)
        stages, c = [], stem
        for i, (w, n) in enumerate(zip(widths, depths, strict=True)):
            stage, c = _stage(make, c, w, n, 1 if i == 0 else 2)
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True)) if final_bn else nn.Identity()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_classes)
        _init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.final(self.stages(self.stem(x))))


@register_model("resnet32")
def resnet32(num_classes: int, input_shape: tuple[int, ...]) -> ResNet:
    """ResNet-32 of He et al. (2016), Sec. 4.2 (6n+2, n=5), the MW-Net / Meta-Weight-Net backbone.

    Three stages of 5 :class:`BasicBlock` at 16/32/64 channels with the option-A (zero-padding, parameter-free)
    shortcut, as in MW-Net's ``resnet.py`` (after Yerlan Idelbayev's CIFAR ResNets). ~0.46M parameters, d=64.
    """
    make = lambda cin, cout, s: BasicBlock(cin, cout, s, shortcut="A")  # noqa: E731
    return ResNet(num_classes, input_shape, make, [16, 32, 64], [5, 5, 5], stem=16, post=True, final_bn=False)


@register_model("preact-resnet18")
def preact_resnet18(num_classes: int, input_shape: tuple[int, ...]) -> ResNet:
    """PreAct ResNet-18 in Kuang Liu's ``pytorch-cifar`` layout (used by DivideMix, ELR, ...), d=512.

    3x3 stem conv (64), stages of 2 :class:`PreActBlock` at 64/128/256/512, average pool, linear; like the
    original there is no BN-ReLU after the last stage. ~11.2M parameters.
    """
    return ResNet(
        num_classes,
        input_shape,
        PreActBlock,
        [64, 128, 256, 512],
        [2, 2, 2, 2],
        stem=64,
        post=False,
        final_bn=False,
    )


@register_model("resnet34")
def resnet34(num_classes: int, input_shape: tuple[int, ...]) -> ResNet:
    """CIFAR ResNet-34 (Kuang Liu's ``pytorch-cifar`` ``ResNet34``, used by FINE and DivideMix), d=512.

    3x3 stem conv-BN-ReLU (64, no max-pool), [3, 4, 6, 3] :class:`BasicBlock` at 64..512 with 1x1 conv + BN
    projection shortcuts. ~21.3M parameters.
    """
    return ResNet(
        num_classes, input_shape, BasicBlock, [64, 128, 256, 512], [3, 4, 6, 3], stem=64, post=True, final_bn=False
    )


@register_model("wrn-28-10")
def wrn_28_10(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> ResNet:
    """Wide ResNet 28-10 (Zagoruyko & Komodakis 2016; layout of xternalz/WideResNet-pytorch), d=640.

    3x3 stem conv (16), three stages of 4 :class:`PreActBlock` at 160/320/640, final BN-ReLU, average pool.
    Dropout between the convs defaults to 0. ~36.5M parameters.
    """
    make = lambda cin, cout, s: PreActBlock(cin, cout, s, dropout=dropout)  # noqa: E731
    return ResNet(num_classes, input_shape, make, [160, 320, 640], [4, 4, 4], stem=16, post=False, final_bn=True)


class TorchvisionResNet50(FeatureModel):
    """``torchvision.models.resnet50(weights=None)`` (ImageNet layout, 7x7 stem + max-pool), for Clothing1M.

    ``features`` is everything before ``fc`` (through the adaptive average pool, d=2048); ``head`` replaces
    ``fc``. The stem conv is rebuilt when the input does not have 3 channels. No weights are downloaded.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__()
        from torchvision.models import resnet50

        if len(input_shape) != 3:
            raise ValueError(f"resnet50 needs image inputs (C, H, W), got shape {input_shape}")
        body = resnet50(weights=None)
        if input_shape[0] != 3:
            body.conv1 = nn.Conv2d(input_shape[0], 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(body.conv1.weight, mode="fan_out", nonlinearity="relu")
        d = body.fc.in_features
        body.fc = nn.Identity()
        self.body = body
        self.head = nn.Linear(d, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model("resnet50")
def resnet50(num_classes: int, input_shape: tuple[int, ...]) -> TorchvisionResNet50:
    """torchvision's ResNet-50 (ImageNet layout, no pretrained weights), d=2048, for Clothing1M."""
    return TorchvisionResNet50(num_classes, input_shape)
