"""Transition matrices: the convention, their validation, reading one from a file, and the symmetric T.

Convention throughout lsl: a transition matrix is row-stochastic, ``T[i, j] = P(noisy = j | clean = i)``
(Patrini et al., CVPR 2017).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from lsl.errors import ConfigError

TRANSITION_CONVENTION = "T[i, j] = P(noisy = j | clean = i)"
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
    try:
        if path.suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        else:
            matrix = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
    except (OSError, ValueError) as error:
        raise ConfigError(f"transition matrix file {str(path)!r} is unreadable ({error}): give a .npy array, or a "
                          ".csv (comma-separated) or .txt (whitespace-separated) table of numbers") from error
    return validate_transition_matrix(matrix, num_classes, source=f"transition matrix in {str(path)!r}")


def check_convention(convention: str) -> str:
    """``convention`` if it is ``"flip"`` or ``"redraw"``, else ConfigError saying what the two mean."""
    if convention not in ("flip", "redraw"):
        raise ConfigError(
            f"convention={convention!r} is not 'flip' or 'redraw': 'flip' moves a label to another class, "
            "'redraw' draws it again from all classes"
        )
    return convention


def symmetric_transition_matrix(
    rate: float, num_classes: int, convention: Literal["flip", "redraw"] = "redraw"
) -> np.ndarray:
    """The symmetric (uniform) noise T, float64 ``[K, K]``, in one of the two conventions papers mix up.

    - ``"flip"``: with probability ``rate`` the label becomes a uniformly drawn *other* class:
      ``T_ii = 1 - rate``, ``T_ij = rate / (K - 1)`` for ``j != i``.
    - ``"redraw"``: with probability ``rate`` the label is redrawn uniformly from all K classes (so it may
      stay): ``T = (1 - rate) I + (rate / K) J``. This is the alpha of Lukasik et al. (ICML 2020) and of
      label smoothing, hence the default.

    ``rate`` is not range-checked here (the callers check it with their own message).

    Args:
        rate: Probability that a label is corrupted: the flip rate for ``"flip"``, alpha for ``"redraw"``.
        num_classes: Number of classes K (>= 2 for ``"flip"``).
        convention: ``"flip"`` (to another class) or ``"redraw"`` (from all K classes, may stay).

    Returns:
        The row-stochastic matrix ``T[i, j] = P(noisy = j | clean = i)``.
    """
    identity = np.eye(num_classes)
    if check_convention(convention) == "flip":
        return (1.0 - rate) * identity + rate / (num_classes - 1) * (1.0 - identity)
    return (1.0 - rate) * identity + rate / num_classes
