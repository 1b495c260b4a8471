"""ResNets with torchvision's exact state-dict layout, written without torchvision.

Keeping the names (``conv1``, ``bn1``, ``layerK.i.convJ``, ``downsample.0/1``, ``fc``) lets
torchvision's ImageNet weights load with ``strict=True`` while this package stays free of a
torchvision import. Every activation is an ``nn.ReLU`` *module attribute* (never a functional
call) so that :func:`swap_relu_for_softplus` can smooth the whole network in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SmallResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "small_resnet",
    "swap_relu_for_softplus",
]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut (``downsample.0`` conv, ``downsample.1`` BN) when shapes change."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _shortcut(in_ch, width, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, "ResNet v1.5"), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_stage(
    block: type[BasicBlock] | type[Bottleneck], in_ch: int, width: int, blocks: int, stride: int
) -> tuple[nn.Sequential, int]:
    layers = [block(in_ch, width, stride)]
    out_ch = width * block.expansion
    layers += [block(out_ch, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers), out_ch


def _init_weights(model: nn.Module) -> None:
    """He-normal convs and unit/zero BatchNorm, the usual ResNet initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global pool, ``fc``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got {list(layers)}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        ch = 64
        self.layer1, ch = _make_stage(block, ch, 64, layers[0], 1)
        self.layer2, ch = _make_stage(block, ch, 128, layers[1], 2)
        self.layer3, ch = _make_stage(block, ch, 256, layers[2], 2)
        self.layer4, ch = _make_stage(block, ch, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = ch
        self.fc = nn.Linear(ch, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (globally pooled) features, shape ``[N, num_features]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 with torchvision's layout."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-34 with torchvision's layout."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 (v1.5, stride in the 3x3 conv) with torchvision's layout."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet101(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-101 with torchvision's layout."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels)


def resnet152(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-152 with torchvision's layout."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_channels)


class SmallResNet(nn.Module):
    """ResNet for tiny images: 3x3 stem, no max-pool, BasicBlock stages, global pool, ``fc``.

    The first stage keeps the resolution; each further stage halves it (and doubles the width)
    until the map is 4x4 or smaller, with at most four stages. Layout names follow the
    torchvision convention (``conv1``, ``bn1``, ``layerK``, ``fc``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        image_size: int = 16,
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        if image_size < 1 or width < 1 or blocks_per_stage < 1:
            raise ValueError("image_size, width and blocks_per_stage must be positive")
        n_stages, size = 1, image_size
        while size > 4 and n_stages < 4:
            size = math.ceil(size / 2)
            n_stages += 1
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        ch = width
        for i in range(n_stages):
            stage, ch = _make_stage(
                BasicBlock, ch, width * 2**i, blocks_per_stage, 1 if i == 0 else 2
            )
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = n_stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = ch
        self.fc = nn.Linear(ch, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (globally pooled) features, shape ``[N, num_features]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def small_resnet(
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 32,
    image_size: int = 16,
    blocks_per_stage: int = 1,
) -> SmallResNet:
    """A few-BasicBlock ResNet for toy image sizes (e.g. 16x16 grey-scale)."""
    return SmallResNet(num_classes, in_channels, width, image_size, blocks_per_stage)


def swap_relu_for_softplus(module: nn.Module, beta: float) -> nn.Module:
    """Replace every ``nn.ReLU`` submodule by ``nn.Softplus(beta)`` in place; return the module.

    Softplus with large ``beta`` is a smooth surrogate of ReLU whose input gradients are less
    noisy, which is what classifier guidance needs (the EluCD smoothing trick). Functional
    ``F.relu`` calls cannot be reached this way; the networks here never use them.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if isinstance(module, nn.ReLU):
        return nn.Softplus(beta=beta)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus(beta=beta))
    return module
