"""torchvision's ResNet-50 as a class, for ImageFolder (ImageNet-style) data."""

from __future__ import annotations

from torchvision.models.resnet import Bottleneck, ResNet


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
