"""The distillation term of a student's loss (Hinton et al., 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, averaged over the batch.

    Hinton et al. (2015): the ``tau^2`` factor keeps the gradient's scale independent of ``tau``. The KL runs
    from the teacher's distribution to the student's (``F.kl_div(log q_student, log p_teacher)``), in float32.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return temperature**2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")
