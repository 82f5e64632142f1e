"""What the backbones built here share: the 3x3 convolution and He et al.'s initialisation."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, relu), BN weight 1 and bias 0, as in He et al. 2016."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution that keeps the size at stride 1, without a bias (a BatchNorm follows it)."""
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
