"""The samples of one split with their noisy and clean labels, fetched a whole batch at a time."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lsl.data.batch import Batch


class NoisyDataset(Dataset):
    """Samples ``indices`` of a split, with noisy and clean labels; fetches whole batches (``__getitems__``).

    ``image_rows[i]`` says where sample i's image lives in ``images`` (default: row i), so a subset of a
    split can be used without copying or decoding its images.
    """

    def __init__(self, images, noisy: np.ndarray, clean: np.ndarray, indices: np.ndarray,
                 image_rows: np.ndarray | None = None) -> None:
        self.images = images
        self.noisy = torch.as_tensor(noisy[indices], dtype=torch.int64)
        self.clean = torch.as_tensor(clean[indices], dtype=torch.int64)
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        rows = indices if image_rows is None else image_rows[indices]
        self.image_rows = torch.as_tensor(rows, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device) -> NoisyDataset:
        """Move the labels, indices and (if they are a tensor, not already there) the images to ``device``."""
        if isinstance(self.images, Tensor):
            self.images = self.images.to(device)
        self.noisy, self.clean, self.indices, self.image_rows = (
            field.to(device) for field in (self.noisy, self.clean, self.indices, self.image_rows))
        return self

    def __getitems__(self, positions: list[int]) -> Batch:
        positions = torch.as_tensor(positions, dtype=torch.int64)
        if self.noisy.device.type == "cuda":
            # From pinned memory the copy is asynchronous: a pageable one would wait for the GPU every batch.
            positions = positions.pin_memory().to(self.noisy.device, non_blocking=True)
        else:
            positions = positions.to(self.noisy.device)
        # index_select, not [], on tensors: advanced indexing is much slower on a batch of uint8 images.
        noisy, clean = self.noisy.index_select(0, positions), self.clean.index_select(0, positions)
        rows = self.image_rows.index_select(0, positions)
        images = self.images.index_select(0, rows) if isinstance(self.images, Tensor) else self.images[rows]
        return Batch(images, noisy, clean, self.indices.index_select(0, positions))

    def __getitem__(self, position: int) -> Batch:
        return Batch(*(field[0] for field in self.__getitems__([position])))
