"""scikit-learn's handwritten digits: real data, offline and tiny, with a fixed train/test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsl.data.sources.image_source import InMemorySource
from lsl.errors import ConfigError


class Digits(InMemorySource):
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes): real data, offline, tiny.

    A fixed, stratified split (seeded by the data set's definition, not by any run seed) holds out
    ``test_fraction`` of the images as the clean test set. Pixel values 0..16 are scaled to 0..255.

    ```yaml
    dataset:
      class_path: lsl.data.Digits
    ```

    Args:
        root: Folder for the noise artifacts (the images themselves ship with scikit-learn).
        test_fraction: Share of the images held out as the test set.
    """

    name = "digits"
    mean = (0.3,)
    std = (0.38,)

    def __init__(self, root: str = "data", test_fraction: float = 0.2) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"test_fraction={test_fraction} must be in (0, 1)")
        self.root = Path(root)
        self.test_fraction = test_fraction

    @property
    def num_classes(self) -> int:
        return 10

    def decode(self, train: bool) -> tuple[Tensor, np.ndarray]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
        splits = train_test_split(images, digits.target.astype(np.int64), test_size=self.test_fraction,
                                  stratify=digits.target, random_state=0)
        images, labels = (splits[0], splits[2]) if train else (splits[1], splits[3])
        return torch.from_numpy(images), labels
