"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), read from their pickled ``python`` batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsl.data.sources.download import fetch
from lsl.data.sources.image_source import InMemorySource
from lsl.errors import ConfigError


class CIFAR10(InMemorySource):
    """CIFAR-10 (Krizhevsky 2009) from its standard ``cifar-10-batches-py`` folder.

    The pickled batches are read directly, so a locally rebuilt copy loads as well as the original.

    ```yaml
    dataset:
      class_path: lsl.data.CIFAR10
      init_args:
        root: data
    ```

    Args:
        root: Folder that holds (or will hold) ``cifar-10-batches-py``.
        download: Fetch the data through torchvision when it is missing.
    """

    name = "cifar10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    crop_padding = 4
    flip = True
    size_mb = 163
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

    def __init__(self, root: str = "data", download: bool = False) -> None:
        self.root = Path(root)
        self.download = download

    @property
    def num_classes(self) -> int:
        return 10

    def prepare(self) -> None:
        if self._missing() and self.download:
            fetch(self._download, type(self).__name__, self.root,
                  f"unpack the python version of the dataset ({self.url}) so that {self.root / self.folder}/ "
                  f"holds {', '.join(self.train_files + self.test_files)}")
        missing = self._missing()
        if missing:
            raise ConfigError(
                f"{type(self).__name__} not found: looked for {missing[0]}. Set "
                f"`download: true` on the dataset to fetch it (about {self.size_mb} MB), or point `root` at "
                f"the folder that holds {self.folder}/"
            )

    def decode(self, train: bool) -> tuple[Tensor, np.ndarray]:
        images, labels = [], []
        for name in self.train_files if train else self.test_files:
            path = self.root / self.folder / name
            try:
                with open(path, "rb") as file:
                    batch = pickle.load(file, encoding="latin1")
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[self.label_key], dtype=np.int64))
            except Exception as error:
                raise ConfigError(f"{str(path)!r} is not a readable {type(self).__name__} batch "
                                  f"({type(error).__name__}: {error}): fetch the data again (download: true) "
                                  "or restore the file") from error
        return torch.from_numpy(np.concatenate(images)), np.concatenate(labels)

    def _missing(self) -> list[Path]:
        files = [self.root / self.folder / name for name in self.train_files + self.test_files]
        return [path for path in files if not path.is_file()]

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        TorchvisionCIFAR10(str(self.root), download=True)


class CIFAR100(CIFAR10):
    """CIFAR-100 (Krizhevsky 2009, 100 fine labels) from its standard ``cifar-100-python`` folder.

    ```yaml
    dataset:
      class_path: lsl.data.CIFAR100
      init_args:
        root: data
    ```

    Args:
        root: Folder that holds (or will hold) ``cifar-100-python``.
        download: Fetch the data through torchvision when it is missing.
    """

    name = "cifar100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    size_mb = 161
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

    def __init__(self, root: str = "data", download: bool = False) -> None:
        super().__init__(root, download)

    @property
    def num_classes(self) -> int:
        return 100

    def _download(self) -> None:
        from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100

        TorchvisionCIFAR100(str(self.root), download=True)
