"""Statistics of a draw of noisy labels: the realised transition matrix and flip rate, and the nominal one."""

from __future__ import annotations

import numpy as np

from lsl.errors import ConfigError
from lsl.noise.checks import as_labels, check_num_classes, check_same_length


def realised_transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised counts of (clean, noisy) pairs; a row whose clean class has no samples stays all-zero.

    Args:
        clean: Clean labels, shape ``[N]``.
        noisy: Noisy labels, shape ``[N]``.
        num_classes: Number of classes K.

    Returns:
        float64 ``[K, K]`` array with ``R[i, j]`` = share of clean-``i`` samples labelled ``j``.
    """
    num_classes = check_num_classes(num_classes)
    clean = as_labels(clean, "clean labels", num_classes)
    noisy = as_labels(noisy, "noisy labels", num_classes)
    check_same_length(clean, noisy)
    counts = np.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    row_totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)


def realised_flip_rate(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Share of samples whose noisy label differs from the clean one: ``mean(noisy != clean)``."""
    clean = as_labels(clean, "clean labels")
    noisy = as_labels(noisy, "noisy labels")
    check_same_length(clean, noisy)
    if clean.size == 0:
        raise ConfigError("no labels given: the flip rate of an empty label set is undefined")
    return float(np.mean(noisy != clean))


def nominal_flip_rate(transition: np.ndarray, clean: np.ndarray) -> float:
    """Expected share of flipped labels, ``mean_n (1 - T[c_n, c_n])``."""
    return float(np.mean(1.0 - np.diag(transition)[clean])) if clean.size else 0.0
