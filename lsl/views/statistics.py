"""The counts behind the views: prediction against noisy label, and accuracy per class."""

from __future__ import annotations

import torch
from torch import Tensor


def prediction_vs_noisy_label(predictions: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """``M[i, j] = P(noisy label = j | predicted = i)``, row-normalised counts (rows never predicted stay 0).

    A model that predicts the clean class gives M close to T; one that memorised its labels gives M = I.
    """
    counts = torch.bincount(predictions * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.view(num_classes, num_classes).double()
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def per_class_accuracy(predictions: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The accuracy on each class's samples (0 for a class with none) and each class's sample count."""
    counts = torch.bincount(targets, minlength=num_classes).double()
    hits = torch.bincount(targets, weights=(predictions == targets).double(), minlength=num_classes)
    return hits / counts.clamp(min=1), counts
