"""Backbones: image classifiers mapping ``x: float [B, C, H, W]`` to logits ``[B, num_classes]``.

Each is picked in YAML by ``class_path`` and built by the classifier as ``backbone(num_classes)``, so
``num_classes`` is the first parameter of every ``__init__``. Plain PyTorch: no Lightning here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from lsl.errors import ConfigError


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, relu), BN weight 1 and bias 0, as in He et al. 2016."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


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
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
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
        self.conv1 = _conv3x3(in_channels, 16)
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
        _init_weights(self)

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


class _PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut projection (where the shape changes) reads the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + identity


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), CIFAR variant.

    A 3x3 stem with 64 filters (no 7x7, no max-pool), four stages of two pre-activation blocks with
    64/128/256/512 filters (stride 2 at the start of stages 2-4), a final BN-ReLU, global average pooling and
    a linear classifier: the 11M-parameter network common in noisy-label papers.

    ```yaml
    model:
      init_args:
        backbone:
          class_path: lsl.models.PreActResNet18
    ```

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images (3 for RGB).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        layers: list[nn.Module] = []
        in_planes = 64
        for stage, planes in enumerate((64, 128, 256, 512)):
            for block in range(2):
                layers.append(_PreActBlock(in_planes, planes, 2 if stage > 0 and block == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


class SmallCNN(nn.Module):
    """A small CNN for 28x28 (Fashion-MNIST) and 8x8 (scikit-learn digits) images, fast on CPU.

    Two conv-BN-ReLU-maxpool blocks (3x3 convs with ``width`` and ``2 * width`` filters), an adaptive average
    pool to ``pooled_size`` x ``pooled_size``, a hidden linear layer with ``hidden`` units and a linear
    classifier. A 28x28 image leaves the convs as 7x7 and an 8x8 one as 2x2: ``pooled_size: 7`` keeps the
    whole Fashion-MNIST map (enough capacity to memorise noisy labels, as a noisy-label study needs);
    the default 2 fits both sizes.

    ```yaml
    model:
      init_args:
        backbone:
          class_path: lsl.models.SmallCNN
          init_args:
            in_channels: 1
            width: 32
    ```

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images (1 for grayscale).
        width: Filters of the first conv; the second has twice as many.
        hidden: Units of the hidden linear layer.
        pooled_size: Side of the feature map fed to the hidden layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, hidden: int = 128,
                 pooled_size: int = 2) -> None:
        super().__init__()
        if width < 1 or hidden < 1 or pooled_size < 1:
            raise ConfigError(f"SmallCNN width={width}, hidden={hidden}, pooled_size={pooled_size}: "
                              "all must be positive integers")
        self.features = nn.Sequential(
            _conv3x3(in_channels, width),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _conv3x3(width, 2 * width),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(pooled_size),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * pooled_size**2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        _init_weights(self)
        # channels_last weights let oneDNN skip layout reorders: about 2x faster forward+backward on CPU.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNet50(ResNet):
    """torchvision's ResNet-50 (He et al. 2016), randomly initialised, for ImageFolder (ImageNet-style) data.

    The same network as ``torchvision.models.resnet50(weights=None, num_classes=num_classes)``, as a class so
    it can be picked by ``class_path``. Expects 224x224 inputs (any size >= 32 works).

    ```yaml
    model:
      init_args:
        backbone:
          class_path: lsl.models.ResNet50
    ```

    Args:
        num_classes: Number of output logits.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
