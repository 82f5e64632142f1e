"""Fashion-MNIST (Xiao et al. 2017), read from its four idx files (LeCun's MNIST format)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsl.data.sources.download import fetch
from lsl.data.sources.image_source import InMemorySource
from lsl.errors import ConfigError


class FashionMNIST(InMemorySource):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of 10 kinds of clothing.

    Reads the four original idx files (``.gz`` or not) from ``root`` itself (Debian's
    ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``) or from torchvision's
    layout ``root/FashionMNIST/raw``.

    ```yaml
    dataset:
      class_path: lsl.data.FashionMNIST
      init_args:
        root: /usr/share/datasets/fashion-mnist
    ```

    Args:
        root: Folder that holds the idx files, or torchvision's ``FashionMNIST/raw`` below it.
        download: Fetch the data through torchvision when it is missing.
        flip: Random horizontal flips during training (the only augmentation; no crop).
    """

    name = "fashion-mnist"
    mean = (0.2860,)
    std = (0.3530,)
    stems = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def __init__(self, root: str = "data", download: bool = False, flip: bool = True) -> None:
        self.root = Path(root)
        self.download = download
        self.flip = flip

    @property
    def num_classes(self) -> int:
        return 10

    def prepare(self) -> None:
        if self._folder() is None and self.download:
            from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

            fetch(lambda: TorchvisionFashionMNIST(str(self.root), download=True), "Fashion-MNIST", self.root,
                  f"put the four idx files (train-images-idx3-ubyte.gz, ...; {TorchvisionFashionMNIST.mirrors[0]}) "
                  f"in {self.root}, or install Debian's dataset-fashion-mnist and use root: "
                  "/usr/share/datasets/fashion-mnist")
        if self._folder() is None:
            raise ConfigError(
                f"Fashion-MNIST not found: looked for train-images-idx3-ubyte(.gz) and the three other idx "
                f"files in {self.root} and {self.root / 'FashionMNIST' / 'raw'}. Set `download: true` on the "
                "dataset, or install Debian's dataset-fashion-mnist and use root: /usr/share/datasets/fashion-mnist"
            )

    def decode(self, train: bool) -> tuple[Tensor, np.ndarray]:
        folder = self._folder()
        image_stem, label_stem = self.stems[train]
        images = _read_idx(_find_idx(folder, image_stem))
        labels = _read_idx(_find_idx(folder, label_stem)).astype(np.int64)
        return torch.from_numpy(images).unsqueeze(1), labels

    def _folder(self) -> Path | None:
        for folder in (self.root, self.root / "FashionMNIST" / "raw"):
            if all(_find_idx(folder, stem) for pair in self.stems.values() for stem in pair):
                return folder
        return None


def _find_idx(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format); an unreadable one is a ConfigError naming it."""
    try:
        return _parse_idx(path)
    except Exception as error:
        raise ConfigError(f"{str(path)!r} is not a readable idx file ({type(error).__name__}: {error}): fetch the "
                          "data again (download: true) or restore the file") from error


def _parse_idx(path: Path) -> np.ndarray:
    """A 4-byte magic whose last byte is the rank, the dims as big-endian uint32, then the values."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        data = file.read()
    rank = data[3]
    shape = np.frombuffer(data, dtype=">u4", count=rank, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape).copy()
