"""Label-noise models and the noisy-label artifact.

Convention throughout lsl: a transition matrix is row-stochastic, ``T[i, j] = P(noisy = j | clean = i)``
(Patrini et al., CVPR 2017). Plain numpy: no Lightning here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lsl.errors import ConfigError

ROW_SUM_TOLERANCE = 1e-6


def validate_transition_matrix(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    num_classes: int | None = None,
    source: str = "transition matrix",
) -> np.ndarray:
    """Return ``matrix`` as a float64 K x K array, or raise ConfigError saying what is wrong with it."""
    T = np.asarray(matrix, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ConfigError(f"{source} must be a square K x K matrix, got shape {tuple(T.shape)}")
    if num_classes is not None and T.shape[0] != num_classes:
        raise ConfigError(
            f"{source} is {T.shape[0]}x{T.shape[0]} but the data has {num_classes} classes: "
            f"give a {num_classes}x{num_classes} matrix"
        )
    if not np.isfinite(T).all() or (T < 0).any():
        raise ConfigError(f"{source} has negative or non-finite entries: every T[i, j] is a probability")
    row_sums = T.sum(axis=1)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ConfigError(
            f"{source}: row {row} sums to {row_sums[row]:.6g}, not 1. Row i is P(noisy label | clean label i), "
            "so every row must sum to 1 (T[i, j] = P(noisy = j | clean = i))"
        )
    return T


def load_transition_matrix(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """Read a K x K row-stochastic matrix from ``.npy``, ``.csv`` (comma-separated) or ``.txt`` (whitespace)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"transition matrix file {str(path)!r} does not exist: give the path of a .npy, .csv or .txt file")
    if path.suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
    else:
        matrix = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
    return validate_transition_matrix(matrix, num_classes, source=f"transition matrix in {str(path)!r}")
