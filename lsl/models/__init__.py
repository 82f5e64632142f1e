"""Backbones: image classifiers mapping ``x: float [B, C, H, W]`` to logits ``[B, num_classes]``.

Each is picked in YAML by ``class_path`` and built by the classifier as ``backbone(num_classes)``, so
``num_classes`` is the first parameter of every ``__init__``. Plain PyTorch: no Lightning here.

One file per architecture family: ``cifar_resnet.py`` (:class:`CifarResNet`, ``resnet20`` ... ``resnet110``),
``preact_resnet.py`` (:class:`PreActResNet18`), ``small_cnn.py`` (:class:`SmallCNN`), ``resnet50.py``
(:class:`ResNet50`); ``layers.py`` holds the 3x3 convolution and the initialisation they share.
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
