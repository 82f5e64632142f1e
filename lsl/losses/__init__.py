"""Losses for learning under label noise: cross-entropy, label smoothing and smearing, loss correction.

Notation: K classes, logits f, p = softmax(f), loss vector l(f)_j = -log p_j, one-hot e_y.
Every loss maps ``logits: Tensor[B, K]`` and ``target: LongTensor[B]`` to the batch mean (a 0-dim tensor).
It computes in float32 with autocast off, from ``log_softmax``, so bf16/fp16 training stays finite.

Transition matrices are row-stochastic, ``T[i, j] = P(noisy = j | clean = i)`` (Patrini et al., CVPR 2017).
Pure PyTorch: no Lightning, no logging.

| file | holds |
|---|---|
| ``base.py`` | :class:`LogProbLoss`, the base class of a new loss: implement ``per_example_loss(log_probs, target)`` |
| ``cross_entropy.py`` | :class:`CrossEntropy` |
| ``smoothing.py`` | :class:`LabelSmoothing`, :class:`LabelSmearing` |
| ``transition.py`` | :class:`TransitionMatrixLoss` (a loss that needs T: implement ``derive(T)`` too), |
| | :class:`ForwardCorrection`, :class:`BackwardCorrection` |

Every class is selected as ``lsl.losses.<Name>`` in a config's ``class_path``. ``symmetric_transition_matrix``,
``MAX_CONDITION_NUMBER`` and ``SAME_MATRIX_TOLERANCE`` stay importable from here, as from the former single file.
"""

from lsl.losses.base import LogProbLoss
from lsl.losses.cross_entropy import CrossEntropy
from lsl.losses.smoothing import LabelSmearing, LabelSmoothing
from lsl.losses.transition import MAX_CONDITION_NUMBER as MAX_CONDITION_NUMBER
from lsl.losses.transition import SAME_MATRIX_TOLERANCE as SAME_MATRIX_TOLERANCE
from lsl.losses.transition import (
    BackwardCorrection,
    ForwardCorrection,
    TransitionMatrixLoss,
)
from lsl.losses.transition import (
    symmetric_transition_matrix as symmetric_transition_matrix,
)

__all__ = [
    "LogProbLoss",
    "CrossEntropy",
    "LabelSmoothing",
    "LabelSmearing",
    "TransitionMatrixLoss",
    "ForwardCorrection",
    "BackwardCorrection",
]
