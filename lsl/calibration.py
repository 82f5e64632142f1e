"""Expected calibration error, the textbook one, and the binning the reliability diagram shares with it.

ECE (Naeini et al., AAAI 2015; Guo et al., "On calibration of modern neural networks", ICML 2017): the
confidence of a prediction is its largest softmax probability; the samples fall into ``bins`` equal-width
bins of (0, 1], bin ``b`` holding the confidences in ``(b / bins, (b + 1) / bins]``, so a confidence of
exactly 1.0 is in the last bin; then

    ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|.

torchmetrics' ``MulticlassCalibrationError`` puts a confidence of exactly 1.0 in a hidden extra bin of its
own (torchmetrics issue 3510). A float32 softmax saturates to 1.0 for a confident model (cross-entropy,
backward correction) and hardly ever for a smoothed one, and a bin of its own can only raise ECE (merging
two bins never increases the sum of their gaps), so that binning biases exactly the comparison the paper
makes. Both ``test/ece`` and the reliability diagram use :func:`bin_statistics` here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lsl.errors import ConfigError


def confidence_bins(confidence: Tensor, bins: int) -> Tensor:
    """The bin of each confidence: ``b`` for ``(b / bins, (b + 1) / bins]``, 1.0 in the last one, 0 in the first."""
    inner_edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=confidence.device)[1:-1]
    return torch.bucketize(confidence.double(), inner_edges, right=False)


def bin_statistics(confidence: Tensor, correct: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin of :func:`confidence_bins`: the sample count, the accuracy and the mean confidence (0 where
    empty), float64."""
    counts, hits, total_confidence = _bin_sums(confidence, correct, bins)
    safe = counts.clamp(min=1)
    return counts, hits / safe, total_confidence / safe


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int) -> Tensor:
    """ECE of predictions with these confidences and correctness, float64 (NaN for no sample)."""
    counts, hits, total_confidence = _bin_sums(confidence, correct, bins)
    return _ece(counts, hits, total_confidence)


def _bin_sums(confidence: Tensor, correct: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    # A one-hot sum rather than bincount/index_add: deterministic on a GPU too, and cheap at [N, bins].
    members = F.one_hot(confidence_bins(confidence, bins), bins).double()
    return (members.sum(dim=0), members.T @ correct.double(), members.T @ confidence.double())


def _ece(counts: Tensor, hits: Tensor, total_confidence: Tensor) -> Tensor:
    return (hits - total_confidence).abs().sum() / counts.sum()


class ExpectedCalibrationError(Metric):
    """``test/ece``: the textbook ECE of class probabilities against targets, summed over batches and ranks.

    Keeps three float64 sums per bin (count, correct, confidence), so the epoch value is exact whatever the
    batch sizes, and a DDP sync is one sum of ``3 * bins`` numbers.

    Args:
        bins: Equal-width confidence bins over (0, 1]; 15 is the common choice (Guo et al. 2017).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, bins: int = 15) -> None:
        super().__init__()
        if bins < 1:
            raise ConfigError(f"ece_bins={bins} must be a positive number of bins, e.g. 15")
        self.bins = bins
        for name in ("counts", "hits", "total_confidence"):
            self.add_state(name, torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probabilities: Tensor, target: Tensor) -> None:
        """Args: probabilities ``[B, K]`` (softmax outputs), target ``[B]`` class indices."""
        confidence, prediction = probabilities.max(dim=1)
        counts, hits, total_confidence = _bin_sums(confidence, prediction == target, self.bins)
        self.counts += counts
        self.hits += hits
        self.total_confidence += total_confidence

    def compute(self) -> Tensor:
        return _ece(self.counts, self.hits, self.total_confidence).float()
