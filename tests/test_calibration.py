"""test/ece is the textbook ECE (15 equal-width bins over (0, 1], a confidence of 1.0 in the last one), and the
reliability diagram bins exactly as it does."""

from __future__ import annotations

import pytest
import torch

from lsl.calibration import ExpectedCalibrationError, bin_statistics, confidence_bins, expected_calibration_error
from lsl.errors import ConfigError

BINS = 15


def textbook_ece(confidence: list[float], correct: list[bool], bins: int = BINS, own_bin_for_one: bool = False) -> float:
    """By hand, bin by bin; ``own_bin_for_one`` gives confidences of exactly 1.0 a bin of their own, as
    torchmetrics' MulticlassCalibrationError does (its issue 3510)."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(confidence):
        b = bins if (own_bin_for_one and c == 1.0) else next(b for b in range(bins) if c <= (b + 1) / bins)
        groups.setdefault(b, []).append(i)
    total = 0.0
    for members in groups.values():
        accuracy = sum(correct[i] for i in members) / len(members)
        mean_confidence = sum(confidence[i] for i in members) / len(members)
        total += len(members) / len(confidence) * abs(accuracy - mean_confidence)
    return total


def saturated_predictions() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight float32 softmax outputs over 3 classes: half saturated to exactly 1.0 (3 of them right), half at
    about 0.95 (all right): the last bin mixes both kinds, as a cross-entropy model's test set does."""
    saturated = torch.tensor([[200.0, 0.0, 0.0]] * 4)
    confident = torch.tensor([[3.7, 0.0, 0.0]] * 4)
    probabilities = torch.cat([saturated, confident]).softmax(dim=1)
    target = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0])
    return probabilities, target


def test_saturated_predictions_share_the_last_bin_and_ece_is_the_textbook_value() -> None:
    probabilities, target = saturated_predictions()
    confidence = probabilities.max(dim=1).values
    assert (confidence[:4] == 1.0).all() and (confidence[4:] < 1.0).all() and (confidence[4:] > 14 / 15).all()
    correct = (probabilities.argmax(dim=1) == target).tolist()
    expected = textbook_ece(confidence.double().tolist(), correct)
    # The case tells the two binnings apart: a bin of its own for 1.0 would give a larger value.
    assert textbook_ece(confidence.double().tolist(), correct, own_bin_for_one=True) > expected + 0.03

    metric = ExpectedCalibrationError(BINS)
    metric.update(probabilities, target)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


def test_bins_are_right_closed_and_one_is_in_the_last_bin() -> None:
    confidence = torch.tensor([1 / 15, 1 / 15 + 1e-9, 0.5, 14 / 15, 1.0], dtype=torch.float64)
    assert confidence_bins(confidence, BINS).tolist() == [0, 1, 7, 13, 14]


def test_test_ece_equals_the_reliability_diagrams_bins() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = (torch.randn(500, 10, generator=generator) * 4).softmax(dim=1)
    probabilities[:50] = torch.nn.functional.one_hot(torch.arange(50) % 10, 10).float()  # saturated rows
    target = torch.randint(0, 10, (500,), generator=generator)
    confidence, prediction = probabilities.max(dim=1)
    correct = prediction == target

    counts, accuracy, mean_confidence = bin_statistics(confidence, correct, BINS)  # what the diagram draws
    from_diagram = (counts / counts.sum() * (accuracy - mean_confidence).abs()).sum().item()
    metric = ExpectedCalibrationError(BINS)
    for chunk in range(0, 500, 64):  # batches of any size add up to the same epoch value
        metric.update(probabilities[chunk:chunk + 64], target[chunk:chunk + 64])
    assert metric.compute().item() == pytest.approx(from_diagram, abs=1e-6)
    assert expected_calibration_error(confidence, correct, BINS).item() == pytest.approx(from_diagram, abs=1e-12)
    assert from_diagram == pytest.approx(textbook_ece(confidence.double().tolist(), correct.tolist()), abs=1e-9)


def test_no_bins_is_refused() -> None:
    with pytest.raises(ConfigError, match="ece_bins=0"):
        ExpectedCalibrationError(0)
