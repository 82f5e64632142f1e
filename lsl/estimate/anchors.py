"""Estimating the noise transition matrix T from a model's outputs: the anchor points of Patrini et al.

Patrini, Rozza, Menon, Nock and Qu, "Making deep neural networks robust to label noise: a loss correction
approach" (CVPR 2017). A model fitted to noisy labels with a proper loss (cross-entropy) estimates the noisy
posterior ``p(noisy | x) = T^T p(clean | x)``. At an anchor point of class i, a sample that is surely of
class i, this is row i of T. The anchor is the sample where ``p(noisy = i | x)`` is largest; taking the
97th percentile instead of the maximum drops outliers. T is row-stochastic,
``T[i, j] = P(noisy = j | clean = i)``, as in :mod:`lsl.noise`.

This module is the estimator, on numpy arrays; :mod:`lsl.estimate.command` is ``lsl estimate-t``, which runs
a checkpoint to get those outputs.
"""

from __future__ import annotations

import numpy as np

from lsl.errors import ConfigError

DEFAULT_PERCENTILE = 97.0


def anchor_points(probabilities: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """The anchor sample of each class: where ``p(noisy = i | x)`` reaches its ``percentile``-th percentile
    among the samples predicted as class ``i`` (see :func:`find_anchors`, which also says which classes had
    to fall back to all samples).

    Args:
        probabilities: The model's softmax outputs on the noisy training set, shape ``[N, K]``.
        percentile: In (0, 100]; 100 takes the maximum (Patrini et al.'s plain anchor), 97 drops the top 3%
            as outliers.

    Returns:
        int64 ``[K]``: row ``i`` of ``probabilities`` is the anchor of class ``i``.
    """
    return find_anchors(probabilities, percentile)[0]


def find_anchors(probabilities: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> tuple[np.ndarray, list[int]]:
    """Each class's anchor, and the classes whose anchor had to be sought among all samples.

    Class ``i``'s anchor is the sample at the ``percentile``-th percentile of ``p(noisy = i | x)`` among the
    samples whose prediction (argmax) is ``i``. Over all samples (Patrini et al.'s code) the percentile fails
    when K is large: with K = 100 each class is about 1% of the data, so the 97th percentile of
    ``p(noisy = i | x)`` lands on a sample of another class. A class that no sample is predicted as falls back
    to all samples; it is listed in the second return value, and its row of T is unreliable.

    Returns:
        int64 ``[K]`` anchor rows, and the sorted list of classes that fell back to all samples.
    """
    probabilities = _check_probabilities(probabilities)
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile={percentile!r} is not in (0, 100]: use 97 to drop outliers, 100 for the maximum")
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    # One stable sort instead of K boolean masks: O(N log N), not O(N K), for ImageNet's K = 1000.
    order = np.argsort(predicted, kind="stable")
    boundaries = np.searchsorted(predicted[order], np.arange(num_classes + 1))
    anchors = np.empty(num_classes, dtype=np.int64)
    fallback: list[int] = []
    for cls in range(num_classes):
        candidates = order[boundaries[cls] : boundaries[cls + 1]]
        if candidates.size == 0:
            candidates = np.arange(len(probabilities))
            fallback.append(cls)
        scores = probabilities[candidates, cls]
        # method="higher" returns a value some candidate actually has, so that candidate is the anchor.
        threshold = np.percentile(scores, percentile, method="higher")
        anchors[cls] = candidates[np.abs(scores - threshold).argmin()]
    return anchors, fallback


def estimate_transition_matrix(
    probabilities: np.ndarray, percentile: float = DEFAULT_PERCENTILE
) -> tuple[np.ndarray, np.ndarray]:
    """Patrini et al.'s anchor-point estimate of T from a model's outputs on noisy training samples.

    Args:
        probabilities: Softmax outputs ``p(noisy | x)``, shape ``[N, K]``, of a model trained on the noisy
            labels with cross-entropy.
        percentile: Where the anchor of each class sits among the samples predicted as that class (see
            :func:`find_anchors`).

    Returns:
        The float64 row-stochastic ``[K, K]`` estimate (row i is the output at class i's anchor,
        renormalised) and the anchors' row indices ``[K]``.
    """
    anchors = anchor_points(probabilities, percentile)
    return rows_at(probabilities, anchors), anchors


def rows_at(probabilities: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The estimate of T from its anchors: row i is the float64 output at class i's anchor, renormalised."""
    rows = np.asarray(probabilities, dtype=np.float64)[anchors]
    return rows / rows.sum(axis=1, keepdims=True)


def estimation_error(estimated: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """How far an estimate is from the true T: the mean absolute entry difference and the largest row L1 error."""
    difference = np.abs(np.asarray(estimated, dtype=np.float64) - np.asarray(true, dtype=np.float64))
    return {"mean_abs_error": float(difference.mean()), "max_row_l1_error": float(difference.sum(axis=1).max())}


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0 or probabilities.shape[1] < 2:
        raise ConfigError(
            f"probabilities of shape {probabilities.shape} cannot give a transition matrix: give the model's "
            "softmax outputs, one row of K >= 2 class probabilities per sample"
        )
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise ConfigError("probabilities have negative or non-finite entries: give softmax outputs, not logits")
    return probabilities
