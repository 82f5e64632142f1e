"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings"), the CIFAR variant common in noisy-label papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lsl.models.layers import conv3x3, init_weights


class _PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut projection (where the shape changes) reads the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
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
        self.conv1 = conv3x3(in_channels, 64)
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
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))
