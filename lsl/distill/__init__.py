"""Distillation from a trained teacher: the paper's second experiment, as its own LightningModule.

Under label noise, a student distilled from a teacher trained with label smoothing (or forward correction)
beats one distilled from a cross-entropy teacher (Lukasik et al., "Does label smoothing mitigate label
noise?", ICML 2020, section 6), the reverse of what Mueller et al. (NeurIPS 2019) found on clean labels.

Two stages::

    lsl fit --config configs/fashion_mnist/ls.yaml            # the teacher, on the noisy labels
    lsl fit --config configs/fashion_mnist/distill.yaml \\
            --model.teacher_checkpoint logs/fashion_mnist_ls/version_0/checkpoints/last.ckpt

One concept per module:

- :mod:`lsl.distill.loss`: the distillation term, ``tau^2 * KL(p_teacher || p_student)``;
- :mod:`lsl.distill.teacher`: the frozen teacher, rebuilt from its checkpoint, and the check that it learnt
  from this run's noisy labels;
- :mod:`lsl.distill.cache`: the teacher's logits over the training set, computed once and kept on disk;
- :mod:`lsl.distill.student`: :class:`TeacherStudentModule`, the student trained on the teacher.
"""

from lsl.distill.loss import distillation_loss
from lsl.distill.student import TeacherStudentModule
from lsl.distill.teacher import FrozenTeacher

__all__ = ["FrozenTeacher", "TeacherStudentModule", "distillation_loss"]
