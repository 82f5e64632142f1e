"""What every image source provides (images, clean labels, statistics, augmentation), and the in-memory kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from lsl.data.sources.image_folder import DecodedImages


class ImageSource(ABC):
    """Where the images and clean labels of a dataset come from.

    Subclasses set ``name`` (used to key noise artifacts), ``mean``/``std`` (per-channel, in [0, 1] units)
    and the standard augmentation of the dataset (``crop_padding``, ``flip``).
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    root: Path

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """The number of classes K."""

    def prepare(self) -> None:
        """Download the data if that was asked for; raise ConfigError if it is still missing."""

    @abstractmethod
    def load(self, train: bool, augment: bool = False) -> tuple[Tensor | DecodedImages, np.ndarray]:
        """Return the images of one split, indexable by a tensor of rows, and its clean labels (int64 [N]).

        In-memory sources return uint8 [N, C, H, W] (augmented later, per batch, on the device); sources
        too large for memory decode each batch when it is fetched, augmenting it when ``augment`` is set.
        """


class InMemorySource(ImageSource):
    """A dataset small enough to decode once into a uint8 tensor."""

    def load(self, train: bool, augment: bool = False) -> tuple[Tensor, np.ndarray]:
        # Kept once decoded: the data module asks for the training labels in prepare_data, the images in setup.
        if train not in self._decoded:
            self._decoded[train] = self.decode(train)
        return self._decoded[train]

    @abstractmethod
    def decode(self, train: bool) -> tuple[Tensor, np.ndarray]:
        """Read one split from disk into uint8 images [N, C, H, W] and int64 labels [N]."""

    @cached_property
    def _decoded(self) -> dict:
        return {}
