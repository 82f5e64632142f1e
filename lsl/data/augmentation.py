"""The standard augmentation (pad + random crop, horizontal flip) on a whole batch of tensors, on any device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> Tensor:
    """Pad each image by ``padding`` zeros, crop it back at a random offset, and flip half of them.

    Works on a whole batch [B, C, H, W] at once, on any device; each image gets its own offset and coin.
    """
    batch, channels, height, width = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (batch, 1, 1, 1), device=device, generator=generator)
        left = torch.randint(0, 2 * padding + 1, (batch, 1, 1, 1), device=device, generator=generator)
        rows = top + torch.arange(height, device=device).view(1, 1, height, 1)
        cols = left + torch.arange(width, device=device).view(1, 1, 1, width)
        padded = padded.gather(2, rows.expand(batch, channels, height, padded.shape[-1]))
        images = padded.gather(3, cols.expand(batch, channels, height, width))
    if flip:
        coins = torch.rand(batch, 1, 1, 1, device=device, generator=generator) < 0.5
        images = torch.where(coins, images.flip(-1), images)
    return images
