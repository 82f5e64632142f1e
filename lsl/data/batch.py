"""The batch every data loader of lsl yields: the input, the noisy and the clean target, the sample index."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """One batch: ``input`` (uint8 images before the device-side transform, float after), the targets."""

    input: Tensor
    noisy_target: Tensor
    clean_target: Tensor
    index: Tensor

    @property
    def is_noisy(self) -> Tensor:
        """Which samples are mislabelled (derived on demand: the training step never needs it)."""
        return self.noisy_target != self.clean_target
