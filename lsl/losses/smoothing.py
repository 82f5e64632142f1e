"""Label smoothing and label smearing: losses against softened targets (Lukasik et al., ICML 2020)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lsl.errors import ConfigError
from lsl.losses.base import LogProbLoss


def smeared_loss(log_probs: Tensor, target: Tensor, matrix: Tensor) -> Tensor:
    """Per-example e_y^T M l(f) = sum_j M[y, j] * (-log p_j), gathering one row of M per example."""
    return -(matrix.to(log_probs)[target] * log_probs).sum(dim=-1)


def check_matrix_size(matrix: Tensor, num_classes: int, what: str) -> None:
    """Raise ConfigError naming ``what`` unless the square ``matrix`` is K x K for logits of ``num_classes``."""
    if matrix.shape[0] != num_classes:
        size = matrix.shape[0]
        raise ConfigError(
            f"{what} is {size}x{size} but the logits have {num_classes} classes: "
            f"give a {num_classes}x{num_classes} matrix"
        )


class LabelSmoothing(LogProbLoss):
    """Label smoothing (Szegedy et al., CVPR 2016), studied under label noise by Lukasik et al. (ICML 2020).

    Targets ``(1 - alpha) e_y + alpha / K``; per example
    ``(1 - alpha) * (-log p_y) + alpha * mean_j(-log p_j)``.
    ``alpha < 0`` is negative label smoothing (Wei et al., "To smooth or not?", ICML 2022), which
    ``F.cross_entropy(label_smoothing=...)`` does not support; it is unbounded below and can diverge.

    ```yaml
    loss:
      class_path: lsl.losses.LabelSmoothing
      init_args:
        alpha: 0.1
    ```

    Args:
        alpha: Smoothing weight, any value below 1; 0 is cross-entropy, negative values sharpen the targets.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        super().__init__()
        if not (math.isfinite(alpha) and alpha < 1.0):
            raise ConfigError(
                f"LabelSmoothing alpha={alpha!r} is not allowed: alpha must be a finite number below 1 "
                "(0 is cross-entropy, 0.1 is the usual choice, negative values are negative label smoothing)"
            )
        self.alpha = float(alpha)

    def per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        true_class = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        uniform = -log_probs.mean(dim=-1)
        return (1.0 - self.alpha) * true_class + self.alpha * uniform

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class LabelSmearing(LogProbLoss):
    """Label smearing, the family of Lukasik et al. (ICML 2020, Sec. 3) that holds CE, LS and backward correction.

    Per example: ``e_y^T M l(f) = sum_j M[y, j] * (-log p_j)`` for any K x K matrix M (not necessarily
    row-stochastic). Cross-entropy is ``M = I``, label smoothing ``M = (1 - alpha) I + (alpha / K) J``,
    backward correction ``M = T^-1``.

    ```yaml
    loss:
      class_path: lsl.losses.LabelSmearing
      init_args:
        matrix: [[0.95, 0.05], [0.05, 0.95]]
    ```

    Args:
        matrix: The K x K smearing matrix M, row y weighting the per-class losses of an example labelled y.
    """

    def __init__(self, matrix: list[list[float]]) -> None:
        super().__init__()
        smearing = np.asarray(matrix, dtype=np.float64)
        if smearing.ndim != 2 or smearing.shape[0] != smearing.shape[1]:
            raise ConfigError(
                f"LabelSmearing matrix must be a square K x K matrix, got shape {tuple(smearing.shape)}: "
                "give one row of K numbers per class"
            )
        if not np.isfinite(smearing).all():
            raise ConfigError("LabelSmearing matrix has NaN or infinite entries: give finite numbers")
        self.register_buffer("smearing_matrix", torch.from_numpy(smearing).float(), persistent=False)

    def per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        check_matrix_size(self.smearing_matrix, log_probs.shape[-1], "LabelSmearing matrix")
        return smeared_loss(log_probs, target, self.smearing_matrix)

    def extra_repr(self) -> str:
        return f"num_classes={self.smearing_matrix.shape[0]}"
