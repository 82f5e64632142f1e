"""The CIFAR ResNets of He et al. 2016 (ResNet-20/32/44/56/110): basic blocks, option A or B shortcuts."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lsl.errors import ConfigError
from lsl.models.layers import conv3x3, init_weights


class _ZeroPadShortcut(nn.Module):
    """He et al.'s option A: subsample by stride-2 slicing and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        # Pad half of the new channels on each side, as the reference implementations do.
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or option A / B) shortcut, post-activation."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Literal["A", "B"]) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _ZeroPadShortcut(planes - in_planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition", Sec. 4.2).

    A 3x3 stem with 16 filters (no max-pool), three stages of ``n`` basic blocks with 16, 32 and 64 filters
    (stride 2 at the start of stages 2 and 3), global average pooling and a linear classifier:
    ``depth = 6n + 2`` layers. With shortcut ``"A"`` and 10 classes, ResNet-20/32/44/56/110 have
    0.27M/0.46M/0.66M/0.85M/1.7M parameters, as in the paper's Table 6.

    ```yaml
    model:
      init_args:
        backbone:
          class_path: lsl.models.CifarResNet
          init_args:
            depth: 32
            shortcut: A
    ```

    Args:
        num_classes: Number of output logits.
        depth: Number of weighted layers, ``6n + 2`` for ``n >= 1``: 20, 32, 44, 56, 110, ...
        shortcut: ``"A"``: parameter-free shortcuts (stride-2 subsampling and zero-padded channels) where the
            shape changes, as in the paper's CIFAR experiments. ``"B"``: 1x1 conv + BN projections there.
        in_channels: Channels of the input images (3 for RGB).
    """

    def __init__(
        self, num_classes: int = 10, depth: int = 32, shortcut: Literal["A", "B"] = "A", in_channels: int = 3
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(
                f"CifarResNet depth={depth} is not 6n+2 with n >= 1: use 20, 32, 44, 56 or 110 (or another 6n+2)"
            )
        if shortcut not in ("A", "B"):
            raise ConfigError(f"CifarResNet shortcut={shortcut!r} is unknown: use 'A' (zero-padding) or 'B' (projection)")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters with shortcut A)."""
    return CifarResNet(num_classes, depth=20, shortcut=shortcut)


def resnet32(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """CIFAR ResNet-32 (0.46M parameters with shortcut A)."""
    return CifarResNet(num_classes, depth=32, shortcut=shortcut)


def resnet44(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """CIFAR ResNet-44 (0.66M parameters with shortcut A)."""
    return CifarResNet(num_classes, depth=44, shortcut=shortcut)


def resnet56(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """CIFAR ResNet-56 (0.85M parameters with shortcut A)."""
    return CifarResNet(num_classes, depth=56, shortcut=shortcut)


def resnet110(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """CIFAR ResNet-110 (1.7M parameters with shortcut A)."""
    return CifarResNet(num_classes, depth=110, shortcut=shortcut)
