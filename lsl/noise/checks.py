"""Checks of the inputs every noise model and artifact takes: rate, number of classes, seed, label arrays.

Each check returns the value in its canonical type (float, int, int64 array) or raises
:class:`~lsl.errors.ConfigError` saying what to give instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lsl.errors import ConfigError
from lsl.files import array_sha256

# Labels are stored and checksummed as little-endian int64, so a checksum is the same on every platform.
LABEL_DTYPE = "<i8"


def check_rate(rate: float) -> float:
    """``rate`` as a float in [0, 1]: the probability a label is corrupted."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise ConfigError(f"rate={rate!r} is not a number: give the probability a label is corrupted, in [0, 1]")
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ConfigError(f"rate={rate!r} is outside [0, 1]: it is the probability a label is corrupted")
    return rate


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int >= 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} is not an integer >= 2: give the number of classes")
    return int(num_classes)


def check_seed(seed: int) -> int:
    """``seed`` as a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not a non-negative integer: give the seed of the noise draw, e.g. 0")
    return int(seed)


def as_labels(labels: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """``labels`` as a 1-D int64 array, checked to lie in ``[0, num_classes)``."""
    array = np.asarray(labels)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_):
        raise ConfigError(
            f"{name} must be a 1-D array of integer class indices, got dtype {array.dtype} and shape {array.shape}"
        )
    array = array.astype(np.int64, copy=False)
    if num_classes is not None and array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ConfigError(
            f"{name} has values in [{array.min()}, {array.max()}] but num_classes={num_classes}: "
            f"labels must lie in [0, {num_classes - 1}]; check num_classes or the label file"
        )
    return array


def check_same_length(clean: np.ndarray, noisy: np.ndarray) -> None:
    """Clean and noisy labels describe the same samples."""
    if clean.shape != noisy.shape:
        raise ConfigError(
            f"{clean.size} clean labels but {noisy.size} noisy labels: both must describe the same samples"
        )


def label_sha256(labels: np.ndarray) -> str:
    """sha256 of ``labels`` as little-endian int64, the checksum recorded in sidecars and slugs."""
    return array_sha256(labels, LABEL_DTYPE)
