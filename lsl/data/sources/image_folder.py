"""An ImageNet-style folder tree, too large for memory: images are decoded per sample when fetched."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsl.data.sources.image_source import ImageSource
from lsl.errors import ConfigError


class ImageFolder(ImageSource):
    """An ImageNet-style tree: ``root/<train_dir>/<class>/*.jpg`` and ``root/<test_dir>/<class>/*.jpg``.

    Too large for memory: images are decoded per sample in DataLoader workers, with torchvision's
    RandomResizedCrop + flip for training and Resize + CenterCrop for evaluation (ImageNet statistics).

    ```yaml
    dataset:
      class_path: lsl.data.ImageFolder
      init_args:
        root: /datasets/imagenet
        test_dir: val
    ```

    Args:
        root: The tree's top folder.
        train_dir: Sub-folder with the training images.
        test_dir: Sub-folder with the (clean) evaluation images.
        image_size: Side of the square crops fed to the network.
    """

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, root: str, train_dir: str = "train", test_dir: str = "val", image_size: int = 224) -> None:
        self.root = Path(root)
        self.train_dir = train_dir
        self.test_dir = test_dir
        self.image_size = image_size
        self.name = "imagefolder-" + re.sub(r"[^A-Za-z0-9._-]", "_", self.root.name)

    @cached_property
    def classes(self) -> list[str]:
        self.prepare()
        return sorted(entry.name for entry in (self.root / self.train_dir).iterdir() if entry.is_dir())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare(self) -> None:
        for split in (self.train_dir, self.test_dir):
            if not (self.root / split).is_dir():
                raise ConfigError(
                    f"ImageFolder split not found: {self.root / split} is not a folder. Point `root` at a tree "
                    f"with {self.train_dir}/<class>/*.jpg and {self.test_dir}/<class>/*.jpg"
                )

    def load(self, train: bool, augment: bool = False) -> tuple[DecodedImages, np.ndarray]:
        # The file listing is kept: prepare_data and setup both ask, and an ImageNet tree takes a while to scan.
        if train not in self._scanned:
            self._scanned[train] = self._scan(train)
        folder, labels = self._scanned[train]
        return DecodedImages(folder, self.transform(augment)), labels

    @cached_property
    def _scanned(self) -> dict:
        return {}

    def _scan(self, train: bool):
        from torchvision.datasets import ImageFolder as TorchvisionImageFolder

        folder = TorchvisionImageFolder(str(self.root / (self.train_dir if train else self.test_dir)))
        unknown = sorted(set(folder.classes) - set(self.classes))
        if unknown:
            raise ConfigError(f"{self.root / self.test_dir} has classes that {self.train_dir}/ lacks: {unknown[:5]}")
        # torchvision numbers each split's classes on its own; number them as the training split does.
        to_training_index = np.array([self.classes.index(name) for name in folder.classes], dtype=np.int64)
        return folder, to_training_index[np.asarray(folder.targets)]

    def transform(self, augment: bool):
        from torchvision.transforms import v2

        steps = ([v2.RandomResizedCrop(self.image_size), v2.RandomHorizontalFlip()] if augment
                 else [v2.Resize(self.image_size * 8 // 7), v2.CenterCrop(self.image_size)])
        return v2.Compose([v2.PILToTensor(), *steps, v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(self.mean, self.std)])


class DecodedImages:
    """Lazily decoded ImageFolder images: ``images[index_tensor]`` returns a float batch."""

    def __init__(self, folder, transform) -> None:
        self.folder = folder
        self.transform = transform

    def __getitem__(self, indices: Tensor) -> Tensor:
        return torch.stack([self.transform(self.folder.loader(self.folder.samples[i][0])) for i in indices.tolist()])
