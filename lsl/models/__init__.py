"""Backbones: image classifiers mapping ``x: float [B, C, H, W]`` to logits ``[B, num_classes]``.

Each is picked in YAML by ``class_path`` and built by the classifier as ``backbone(num_classes)``, so
``num_classes`` is the first parameter of every ``__init__``. Plain PyTorch: no Lightning here.
"""

from lsl.models.cifar_resnet import (
    CifarResNet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from lsl.models.preact_resnet import PreActResNet18
from lsl.models.resnet50 import ResNet50
from lsl.models.small_cnn import SmallCNN

__all__ = ["CifarResNet", "PreActResNet18", "ResNet50", "SmallCNN", "resnet20", "resnet32", "resnet44", "resnet56",
           "resnet110"]
