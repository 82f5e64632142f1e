"""Losses for learning under label noise: cross-entropy, label smoothing and smearing, loss correction.

Notation: K classes, logits f, p = softmax(f), loss vector l(f)_j = -log p_j, one-hot e_y.
Every loss maps ``logits: Tensor[B, K]`` and ``target: LongTensor[B]`` to the batch mean (a 0-dim tensor).
It computes in float32 with autocast off, from ``log_softmax``, so bf16/fp16 training stays finite.

Transition matrices are row-stochastic, ``T[i, j] = P(noisy = j | clean = i)`` (Patrini et al., CVPR 2017).
Pure PyTorch: no Lightning, no logging.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsl.errors import ConfigError
from lsl.noise import (
    load_transition_matrix,
    symmetric_transition_matrix,
    validate_transition_matrix,
)

# Beyond this condition number T^-1 has entries so large that float32 losses are mostly rounding error.
MAX_CONDITION_NUMBER = 1e6
# Two transition matrices whose entries all agree to this are the same T (alpha given to 7 digits suffices).
SAME_MATRIX_TOLERANCE = 1e-6

__all__ = [
    "CrossEntropy",
    "LabelSmoothing",
    "LabelSmearing",
    "TransitionMatrixLoss",
    "ForwardCorrection",
    "BackwardCorrection",
]


def _smeared_loss(log_probs: Tensor, target: Tensor, matrix: Tensor) -> Tensor:
    """Per-example e_y^T M l(f) = sum_j M[y, j] * (-log p_j), gathering one row of M per example."""
    return -(matrix.to(log_probs)[target] * log_probs).sum(dim=-1)


def _check_matrix_size(matrix: Tensor, num_classes: int, what: str) -> None:
    if matrix.shape[0] != num_classes:
        size = matrix.shape[0]
        raise ConfigError(
            f"{what} is {size}x{size} but the logits have {num_classes} classes: "
            f"give a {num_classes}x{num_classes} matrix"
        )


class _LogProbLoss(nn.Module):
    """Runs ``_per_example_loss`` on float32 log-probabilities with autocast off and returns the batch mean."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            log_probs = F.log_softmax(logits.float(), dim=-1)
            return self._per_example_loss(log_probs, target).mean()

    def _per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError


class CrossEntropy(nn.Module):
    """Cross-entropy, the baseline of Lukasik et al., "Does label smoothing mitigate label noise?" (ICML 2020).

    Per example: ``-log p_y``, in float32 (autocast keeps ``cross_entropy`` in float32).

    ```yaml
    loss:
      class_path: lsl.losses.CrossEntropy
    ```
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        # PyTorch's fused kernel: the same value at half the cost of log_softmax + gather (forward and backward).
        return F.cross_entropy(logits.float(), target)


class LabelSmoothing(_LogProbLoss):
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

    def _per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        true_class = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        uniform = -log_probs.mean(dim=-1)
        return (1.0 - self.alpha) * true_class + self.alpha * uniform

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class LabelSmearing(_LogProbLoss):
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

    def _per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        _check_matrix_size(self.smearing_matrix, log_probs.shape[-1], "LabelSmearing matrix")
        return _smeared_loss(log_probs, target, self.smearing_matrix)

    def extra_repr(self) -> str:
        return f"num_classes={self.smearing_matrix.shape[0]}"


class TransitionMatrixLoss(_LogProbLoss):
    """Base class for losses that need the noise transition matrix T, ``T[i, j] = P(noisy = j | clean = i)``.

    T comes from at most one own source: ``alpha`` (symmetric ``T = (1 - alpha) I + (alpha / K) J``, the
    parametrisation of Lukasik et al., ICML 2020, with K read from the logits), ``matrix`` or ``path``
    (.npy, .csv or .txt). With none of them, the classifier links the data's true T through
    :meth:`use_data_transition_matrix`; an own source always wins over the data's T. ``alpha`` is the redraw
    convention, not ``SymmetricNoise``'s default flip convention: given the data's T, a loss with ``alpha``
    refuses a symmetric data T that is not its own (``alpha: 0.2`` beside ``rate: 0.2`` flip noise), naming
    the ``alpha`` that matches; a deliberately different T goes in ``matrix`` or ``path``.

    T is kept as the non-persistent buffer ``transition_matrix`` (moved by ``.to(device)``, left out of
    ``state_dict``: the saved hyperparameters rebuild it). Subclasses implement ``_derive`` (the matrix their
    loss needs, computed once in float64 from T) and ``_per_example_loss``, reading the buffer
    ``derived_matrix``.

    ```yaml
    loss:
      class_path: lsl.losses.ForwardCorrection   # any subclass
      init_args:
        path: noise/T.npy                        # or alpha: 0.2, or matrix: [[...], ...], or nothing
    ```

    Args:
        alpha: Symmetric noise level in [0, 1), in the redraw convention: T = (1 - alpha) I + (alpha / K) J,
            which changes only ``alpha (K - 1) / K`` of the labels. ``SymmetricNoise(rate)`` defaults to the
            flip convention, whose T is ``alpha = K * rate / (K - 1)`` here (K = 10, rate 0.2: alpha 0.2222...).
            Checked against the data's T: a symmetric data T that differs is refused (ConfigError).
        matrix: An explicit row-stochastic K x K transition matrix.
        path: A file holding the K x K transition matrix (.npy, .csv comma-separated, .txt whitespace).
    """

    def __init__(
        self,
        alpha: float | None = None,
        matrix: list[list[float]] | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__()
        given = [name for name, value in (("alpha", alpha), ("matrix", matrix), ("path", path)) if value is not None]
        if len(given) > 1:
            raise ConfigError(
                f"{type(self).__name__} got {' and '.join(given)}: give at most one of alpha, matrix or path "
                "(or none, to use the data's true transition matrix)"
            )
        if alpha is not None and not (math.isfinite(alpha) and 0.0 <= alpha < 1.0):
            raise ConfigError(
                f"{type(self).__name__} alpha={alpha!r} is not allowed: the symmetric noise level must be in [0, 1)"
            )
        self.alpha = None if alpha is None else float(alpha)
        self.register_buffer("transition_matrix", None, persistent=False)
        self.register_buffer("derived_matrix", None, persistent=False)
        if matrix is not None:
            source = f"{type(self).__name__} matrix"
            self._set_transition_matrix(validate_transition_matrix(matrix, source=source), source=source)
        elif path is not None:
            self._set_transition_matrix(load_transition_matrix(path), source=f"the transition matrix in {path!r}")
        self._has_own_matrix = bool(given)

    @property
    def has_own_matrix(self) -> bool:
        """Whether T comes from this loss's own alpha, matrix or path (then the data's T is ignored)."""
        return self._has_own_matrix

    def use_data_transition_matrix(self, matrix: list[list[float]] | np.ndarray | None) -> None:
        """Give the loss the data module's true T; call it whatever the loss's own source (None: no T known).

        - No own source: the data's T becomes the loss's T.
        - Own ``matrix`` or ``path``: the data's T is ignored (a deliberately different T is allowed).
        - Own ``alpha``: the data's T is only checked. If it has the symmetric form (one value on the diagonal,
          one off it) but is not the redraw matrix of ``alpha``, ConfigError: ``alpha: 0.2`` beside
          ``SymmetricNoise(rate=0.2)`` (flip convention) would otherwise silently be another T.
          A clean T (the identity) is never refused: there ``alpha`` is a regulariser, not a noise model.

        Raises:
            ConfigError: The data's T is not a valid transition matrix, has an all-zero column (forward
                correction), or contradicts ``alpha`` as above.
        """
        if matrix is None:
            return
        transition = validate_transition_matrix(matrix, source="the data's transition matrix")
        if self.alpha is not None:
            self._check_alpha_against(transition)
            return
        if self.has_own_matrix:
            return
        self._set_transition_matrix(transition, source="the data's transition matrix (the noise model's true T)")

    def _check_alpha_against(self, data_transition: np.ndarray) -> None:
        """Refuse an ``alpha`` whose T differs from a symmetric (non-identity) data T: a convention mix-up."""
        num_classes = data_transition.shape[0]
        diagonal = np.diag(data_transition)
        off_diagonal = data_transition[~np.eye(num_classes, dtype=bool)]
        symmetric = np.ptp(diagonal) <= SAME_MATRIX_TOLERANCE and np.ptp(off_diagonal) <= SAME_MATRIX_TOLERANCE
        if not symmetric or off_diagonal.max() <= SAME_MATRIX_TOLERANCE:  # not symmetric, or clean labels
            return
        own = symmetric_transition_matrix(self.alpha, num_classes)
        if np.abs(own - data_transition).max() <= SAME_MATRIX_TOLERANCE:
            return
        flip_rate = 1.0 - float(diagonal.mean())  # share of labels that change under the data's noise
        name = type(self).__name__
        raise ConfigError(
            f"{name} alpha={self.alpha!r} means T = (1 - alpha) I + (alpha / K) J (redraw convention): "
            f"{1.0 - self.alpha + self.alpha / num_classes:.6g} on the diagonal, {self.alpha / num_classes:.6g} "
            f"off it, but the data's noise has T with {1.0 - flip_rate:.6g} on the diagonal and "
            f"{float(off_diagonal.mean()):.6g} off it (flip rate {flip_rate:.6g}; SymmetricNoise's default "
            f"convention is flip). Drop alpha so that {name} uses the data's true T, or give "
            f"alpha: {num_classes * flip_rate / (num_classes - 1):.10g} (K * rate / (K - 1)) for the same T; "
            "a deliberately different T goes in `matrix` or `path`"
        )

    def _set_transition_matrix(
        self, transition: np.ndarray, device: torch.device | str = "cpu", source: str = "the transition matrix"
    ) -> None:
        self._check_transition(np.asarray(transition, dtype=np.float64), source)
        transition64 = torch.as_tensor(transition, dtype=torch.float64)
        self.derived_matrix = self._derive(transition64).float().to(device)
        self.transition_matrix = transition64.float().to(device)

    def _check_transition(self, transition: np.ndarray, source: str) -> None:
        """Refuse a T this loss cannot use (raise ConfigError naming ``source``); any T by default."""

    def _derive(self, transition: Tensor) -> Tensor:
        """The matrix the loss uses, from float64 T (computed once per T)."""
        return transition

    def _derived_matrix_for(self, log_probs: Tensor) -> Tensor:
        num_classes = log_probs.shape[-1]
        if self.alpha is not None and (self.transition_matrix is None or len(self.transition_matrix) != num_classes):
            self._set_transition_matrix(symmetric_transition_matrix(self.alpha, num_classes), log_probs.device,
                                        source=f"{type(self).__name__} alpha={self.alpha}")
        if self.derived_matrix is None:
            raise ConfigError(
                f"{type(self).__name__} has no transition matrix: give alpha, matrix or path, "
                "or train through `lsl fit` so the data's true T is linked"
            )
        _check_matrix_size(self.transition_matrix, num_classes, f"{type(self).__name__} transition matrix")
        if self.derived_matrix.device != log_probs.device:
            # A T linked after the module was moved would otherwise be copied to the device every step.
            self.transition_matrix = self.transition_matrix.to(log_probs.device)
            self.derived_matrix = self.derived_matrix.to(log_probs.device)
        return self.derived_matrix.float()

    def extra_repr(self) -> str:
        if self.alpha is not None:
            return f"alpha={self.alpha}"
        if self.transition_matrix is not None:
            size = self.transition_matrix.shape[0]
            return f"transition_matrix={size}x{size}, own={self.has_own_matrix}"
        return "transition_matrix=None"


class ForwardCorrection(TransitionMatrixLoss):
    """Forward loss correction (Patrini et al., "Making deep neural networks robust to label noise: a loss
    correction approach", CVPR 2017), compared with label smoothing by Lukasik et al. (ICML 2020).

    Per example: ``-log([T^T p]_y) = -logsumexp_i(log p_i + log T[i, y])``: the model's clean posterior is
    pushed through the noise before the log-loss. Bounded below by 0. Computed in log space (zeros of T give
    ``-inf`` terms, which logsumexp drops) with one gathered column of T per example: O(B K) memory.
    A T with an all-zero column is refused (ConfigError): a sample with that noisy label would get an
    infinite loss.

    ```yaml
    loss:
      class_path: lsl.losses.ForwardCorrection
      init_args:
        alpha: 0.2
    ```

    Args:
        alpha: Symmetric noise level in [0, 1), in the redraw convention: T = (1 - alpha) I + (alpha / K) J,
            which changes only ``alpha (K - 1) / K`` of the labels. ``SymmetricNoise(rate)`` defaults to the
            flip convention, whose T is ``alpha = K * rate / (K - 1)`` here (K = 10, rate 0.2: alpha 0.2222...).
            Checked against the data's T: a symmetric data T that differs is refused (ConfigError).
        matrix: An explicit row-stochastic K x K transition matrix.
        path: A file holding the K x K transition matrix (.npy, .csv comma-separated, .txt whitespace).
    """

    def _check_transition(self, transition: np.ndarray, source: str) -> None:
        zero_columns = np.flatnonzero(~(transition > 0).any(axis=0))
        if zero_columns.size:
            column = int(zero_columns[0])
            more = f" (and {zero_columns.size - 1} more: {zero_columns[1:6].tolist()})" if zero_columns.size > 1 else ""
            raise ConfigError(
                f"{type(self).__name__}: column {column} of {source} is all zero{more}: no sample could carry noisy "
                f"label {column}, so every sample that does gets an infinite loss (-log 0). Give a T with a "
                f"non-zero entry in every column (e.g. mix in a little uniform noise: 0.99 T + 0.01 / K), or use "
                "a loss that does not need T"
            )

    def _derive(self, transition: Tensor) -> Tensor:
        # Row y of log(T)^T is column y of log T, so a row gather picks it per example.
        return torch.log(transition).t().contiguous()

    def _per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        log_transition_columns = self._derived_matrix_for(log_probs)[target]
        return -torch.logsumexp(log_probs + log_transition_columns, dim=-1)


class BackwardCorrection(TransitionMatrixLoss):
    """Backward loss correction (Patrini et al., CVPR 2017), compared with label smoothing by Lukasik et al.
    (ICML 2020).

    Per example: ``e_y^T T^-1 l(f)``, label smearing with ``M = T^-1``. Unbiased (its expectation over
    noisy labels is the clean loss) but unbounded below: it rewards large logit spread and can diverge to
    -inf. For symmetric ``T(alpha)`` it equals ``LabelSmoothing(-alpha / (1 - alpha))``, a negative smoothing.
    T^-1 is computed in float64; a singular or badly conditioned T raises ConfigError.

    ```yaml
    loss:
      class_path: lsl.losses.BackwardCorrection
      init_args:
        alpha: 0.2
    ```

    Args:
        alpha: Symmetric noise level in [0, 1), in the redraw convention: T = (1 - alpha) I + (alpha / K) J,
            which changes only ``alpha (K - 1) / K`` of the labels. ``SymmetricNoise(rate)`` defaults to the
            flip convention, whose T is ``alpha = K * rate / (K - 1)`` here (K = 10, rate 0.2: alpha 0.2222...).
            Checked against the data's T: a symmetric data T that differs is refused (ConfigError).
        matrix: An explicit row-stochastic K x K transition matrix.
        path: A file holding the K x K transition matrix (.npy, .csv comma-separated, .txt whitespace).
    """

    def _derive(self, transition: Tensor) -> Tensor:
        singular_values = torch.linalg.svdvals(transition)
        largest, smallest = singular_values[0].item(), singular_values[-1].item()
        if smallest * MAX_CONDITION_NUMBER <= largest:
            condition = largest / smallest if smallest > 0 else math.inf
            raise ConfigError(
                f"{type(self).__name__}: the transition matrix is singular or badly conditioned "
                f"(condition number {condition:.3g} > {MAX_CONDITION_NUMBER:.0e}), so T^-1 does not exist "
                "or is dominated by rounding: use ForwardCorrection, or a T further from uniform rows"
            )
        return torch.linalg.inv(transition)

    def _per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        return _smeared_loss(log_probs, target, self._derived_matrix_for(log_probs))
