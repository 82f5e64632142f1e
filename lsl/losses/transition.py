"""Losses that need the noise transition matrix T: their base class, forward and backward correction.

Transition matrices are row-stochastic, ``T[i, j] = P(noisy = j | clean = i)`` (Patrini et al., CVPR 2017).
Pure PyTorch: no Lightning, no logging.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lsl.errors import ConfigError
from lsl.losses.base import LogProbLoss
from lsl.losses.smoothing import check_matrix_size, smeared_loss
from lsl.noise import load_transition_matrix, symmetric_transition_matrix, validate_transition_matrix

# Beyond this condition number T^-1 has entries so large that float32 losses are mostly rounding error.
MAX_CONDITION_NUMBER = 1e6
# Two transition matrices whose entries all agree to this are the same T (alpha given to 7 digits suffices).
SAME_MATRIX_TOLERANCE = 1e-6


class TransitionMatrixLoss(LogProbLoss):
    """Base class for losses that need the noise transition matrix T, ``T[i, j] = P(noisy = j | clean = i)``.

    T comes from at most one own source: ``alpha`` (symmetric ``T = (1 - alpha) I + (alpha / K) J``, the
    parametrisation of Lukasik et al., ICML 2020, with K read from the logits), ``matrix`` or ``path``
    (.npy, .csv or .txt). With none of them, the classifier links the data's true T through
    :meth:`use_data_transition_matrix`; an own source always wins over the data's T. ``alpha`` is the redraw
    convention, not ``SymmetricNoise``'s default flip convention: given the data's T, a loss with ``alpha``
    refuses a symmetric data T that is not its own (``alpha: 0.2`` beside ``rate: 0.2`` flip noise), naming
    the ``alpha`` that matches; a deliberately different T goes in ``matrix`` or ``path``.

    T is kept as the non-persistent buffer ``transition_matrix`` (moved by ``.to(device)``, left out of
    ``state_dict``: the saved hyperparameters rebuild it). A subclass implements :meth:`derive` (the matrix
    its loss needs, computed once per T, in float64; T itself by default) and
    :meth:`~lsl.losses.LogProbLoss.per_example_loss`, which reads that matrix through
    :meth:`derived_matrix_for`. ``forward`` is :class:`~lsl.losses.LogProbLoss`'s: float32, autocast off.

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
        self.derived_matrix = self.derive(transition64).float().to(device)
        self.transition_matrix = transition64.float().to(device)

    def _check_transition(self, transition: np.ndarray, source: str) -> None:
        """Refuse a T this loss cannot use (raise ConfigError naming ``source``); any T by default."""

    def derive(self, transition: Tensor) -> Tensor:
        """The matrix the loss uses, computed once per T; T itself unless a subclass overrides this.

        Args:
            transition: float64 ``[K, K]`` T on the CPU.

        Returns:
            A ``[K, K]`` matrix, kept in float32 as the buffer ``derived_matrix``.

        Raises:
            ConfigError: The loss cannot use this T (BackwardCorrection: T is singular).
        """
        return transition

    def derived_matrix_for(self, log_probs: Tensor) -> Tensor:
        """:meth:`derive`'s matrix for the K of ``log_probs``, in float32 on their device; for ``per_example_loss``.

        With ``alpha``, T is built for this K on first use (and again if K changes).

        Raises:
            ConfigError: No T is known, or T is not K x K.
        """
        num_classes = log_probs.shape[-1]
        if self.alpha is not None and (self.transition_matrix is None or len(self.transition_matrix) != num_classes):
            self._set_transition_matrix(symmetric_transition_matrix(self.alpha, num_classes), log_probs.device,
                                        source=f"{type(self).__name__} alpha={self.alpha}")
        if self.derived_matrix is None:
            raise ConfigError(
                f"{type(self).__name__} has no transition matrix: give alpha, matrix or path, "
                "or train through `lsl fit` so the data's true T is linked"
            )
        check_matrix_size(self.transition_matrix, num_classes, f"{type(self).__name__} transition matrix")
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

    def derive(self, transition: Tensor) -> Tensor:
        # Row y of log(T)^T is column y of log T, so a row gather picks it per example.
        return torch.log(transition).t().contiguous()

    def per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        log_transition_columns = self.derived_matrix_for(log_probs)[target]
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

    def derive(self, transition: Tensor) -> Tensor:
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

    def per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        return smeared_loss(log_probs, target, self.derived_matrix_for(log_probs))
