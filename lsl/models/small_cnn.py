"""A small CNN for 28x28 and 8x8 grey images, fast on a CPU."""

from __future__ import annotations

import torch
from torch import nn

from lsl.errors import ConfigError
from lsl.models.layers import conv3x3, init_weights


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
            conv3x3(in_channels, width),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            conv3x3(width, 2 * width),
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
        init_weights(self)
        # channels_last weights let oneDNN skip layout reorders in forward and backward on a CPU.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
