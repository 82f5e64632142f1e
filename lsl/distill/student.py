"""The distillation student: a classifier trained on a frozen teacher's predictions."""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from lsl.data import Batch, NoisyDataset, NoisyLabelDataModule
from lsl.distill.cache import cached_training_logits
from lsl.distill.loss import distillation_loss
from lsl.distill.teacher import FrozenTeacher
from lsl.errors import ConfigError
from lsl.models import resnet32
from lsl.module import Classifier, OptimizerFactory, SchedulerFactory, paper_schedule, paper_sgd
from lsl.noise import NoiseModel


class TeacherStudentModule(Classifier):
    """A student trained on a frozen teacher's predictions (and, optionally, on the noisy labels).

    Loss, with ``p_t = softmax(teacher / tau)`` and ``p_s = softmax(student / tau)``::

        lambda * tau^2 * KL(p_t || p_s) + (1 - lambda) * loss(student, noisy label)

    ``lambda = 1`` (the default) is pure distillation, the paper's setting (Lukasik et al., ICML 2020,
    section 6). Logs everything the classifier logs, for the student, plus ``train/kd_loss`` and
    ``train/task_loss``, and once, at the start of the fit, the teacher's accuracy against the noisy and the
    clean training labels and on the test set (``teacher/train_acc_noisy``, ``teacher/train_acc_clean``,
    ``teacher/test_acc``). ``val/loss`` is the task loss on the noisy validation split.

    The teacher must have learnt from the same dataset and the same noisy labels (its checkpoint records the
    noise artifact's sha256); a mismatch is an error unless ``allow_teacher_data_mismatch`` is set. The
    student's checkpoints record the teacher's path and sha256 (``checkpoint["lsl_teacher"]``), never its
    weights; rebuilding the student with ``load_from_checkpoint`` reads the teacher file again.

    The student *is* a :class:`~lsl.module.Classifier` (its arguments, passed on by name, are the student's)
    and *holds* the teacher, a :class:`~lsl.distill.teacher.FrozenTeacher`, beside its network. It does not
    hold a nested ``student: Classifier``: LightningCLI hands every LightningModule it builds under ``model``
    the top-level model's config as its hyperparameters, so a nested classifier would record the
    distillation module's instead of its own, and ``lsl`` builds only subclasses of ``Classifier``.

    With ``cache_teacher_logits``, the teacher's logits over the training set are computed once, on
    un-augmented images, stored as one float16 ``[N, K]`` tensor under ``<artifact_dir>/teacher_logits/``
    keyed by the teacher checkpoint's sha256, the dataset, the noise artifact's sha256 and the transform,
    and reused by every later run with the same key. A student epoch then skips the teacher's forward pass,
    but the student matches the teacher's view of the *un-augmented* image while it sees an
    augmented one: the teacher never sees the augmentation. Without the cache the teacher runs on every
    augmented training batch.

    ```yaml
    model:
      class_path: lsl.TeacherStudentModule
      init_args:
        teacher_checkpoint: logs/cifar100_ls/version_0/checkpoints/last.ckpt
        backbone:
          class_path: lsl.models.CifarResNet
          init_args:
            depth: 32
        temperature: 1.0
        kd_weight: 1.0
    ```

    Args:
        teacher_checkpoint: A checkpoint written by ``lsl fit`` (a classifier, e.g. trained with label
            smoothing); the teacher is rebuilt from it and frozen.
        backbone: The student's network; default the paper's ResNet-32.
        loss: The student's own loss on the noisy labels (any :mod:`lsl.losses` class), weighted
            ``1 - kd_weight``; None is cross-entropy.
        temperature: tau > 0: both distributions are softened by it, and the KL term is scaled by tau^2.
        kd_weight: lambda in [0, 1], the weight of the distillation term; 1 trains on the teacher only.
        cache_teacher_logits: Compute the teacher's logits over the un-augmented training set once and reuse
            them (on disk, keyed by teacher, data and transform) instead of running the teacher every step.
        allow_teacher_data_mismatch: Accept a teacher trained on other data or other noisy labels.
        optimizer: Builds the student's optimizer; default the paper's Nesterov SGD.
        scheduler: Builds the student's LR scheduler; default the paper's steps at 32k and 48k.
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
        num_classes: Number of classes K; linked from the data by the CLI.
        noise: The data's noise model; linked from the data by the CLI (used by a loss that needs T).
        ece_bins: Bins of the expected calibration error.
        channels_last: The student's network and inputs in channels-last memory format (see ``Classifier``).
        compile: Compile the student's forward with ``torch.compile``.
    """

    def __init__(
        self,
        teacher_checkpoint: str,
        backbone: Callable[[int], nn.Module] = resnet32,
        loss: nn.Module | None = None,
        temperature: float = 1.0,
        kd_weight: float = 1.0,
        cache_teacher_logits: bool = False,
        allow_teacher_data_mismatch: bool = False,
        optimizer: OptimizerFactory = paper_sgd,
        scheduler: SchedulerFactory | None = paper_schedule,
        scheduler_interval: Literal["step", "epoch"] = "step",
        num_classes: int = 10,
        noise: NoiseModel | None = None,
        ece_bins: int = 15,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature={temperature} must be a positive number (1.0 leaves the logits as they are)")
        if not 0.0 <= kd_weight <= 1.0:
            raise ConfigError(f"kd_weight={kd_weight} must be in [0, 1]: 1 is pure distillation, 0 ignores the teacher")
        super().__init__(backbone=backbone, loss=loss, optimizer=optimizer, scheduler=scheduler,
                         scheduler_interval=scheduler_interval, num_classes=num_classes, noise=noise,
                         ece_bins=ece_bins, channels_last=channels_last, compile=compile)
        self.teacher = FrozenTeacher(teacher_checkpoint)
        if self.teacher.num_classes != num_classes:
            raise ConfigError(f"the teacher {teacher_checkpoint!r} predicts {self.teacher.num_classes} classes, "
                              f"the student's data has {num_classes}")
        self.temperature = temperature
        self.kd_weight = kd_weight
        self.cache_teacher_logits = cache_teacher_logits
        self.allow_teacher_data_mismatch = allow_teacher_data_mismatch
        self.cached_teacher_logits: Tensor | None = None
        self.recorded_teacher: dict | None = None

    # ------------------------------------------------------------------------------------------ training

    def training_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        losses = self.distillation_losses(logits, batch)
        if self.writes_step_metrics():
            self.log("train/kd_loss", losses["kd_loss"], on_step=True, on_epoch=False)
            self.log("train/task_loss", losses["task_loss"], on_step=True, on_epoch=False)
        return losses["loss"]

    def distillation_losses(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        """The student's loss in parts on a preprocessed training batch: ``kd_loss`` (from the teacher),
        ``task_loss`` (from the noisy labels) and ``loss``, their mix, which is minimised."""
        kd_loss = distillation_loss(logits, self.teacher_logits(batch), self.temperature)
        task_loss = self.loss(logits, batch.noisy_target)
        # Not 1 * kd + 0 * task at kd_weight 1: a diverging task loss would turn 0 * inf into NaN.
        loss = kd_loss if self.kd_weight == 1.0 else self.kd_weight * kd_loss + (1.0 - self.kd_weight) * task_loss
        return {"kd_loss": kd_loss, "task_loss": task_loss, "loss": loss}

    def teacher_logits(self, batch: Batch) -> Tensor:
        """The teacher's logits for a preprocessed training batch: from the cache if there is one."""
        if self.cached_teacher_logits is not None:
            return self.cached_teacher_logits[batch.index].float()
        return self.teacher(batch.input)

    # ----------------------------------------------------------------------------------- the teacher, once

    def prepare_data(self) -> None:
        # Runs before Lightning writes anything for the run, so a wrong teacher leaves no run directory.
        if not self.allow_teacher_data_mismatch:
            self.teacher.check_learnt_from(self._datamodule().fingerprint())

    def on_fit_start(self) -> None:
        if self.recorded_teacher is not None and self.recorded_teacher["sha256"] != self.teacher.sha256:
            raise ConfigError(f"resuming a student of teacher sha256 {self.recorded_teacher['sha256'][:16]}... with "
                              f"{str(self.teacher.path)!r}, whose sha256 is {self.teacher.sha256[:16]}...: "
                              "pass the teacher this student started with")
        data = self._datamodule()
        self.teacher.to(self.device)
        samples = data.unaugmented_training_samples()
        if self.cache_teacher_logits:
            logits = cached_training_logits(self.teacher, data, samples)
            self.cached_teacher_logits = logits.to(self.device, torch.float16)
        else:
            logits = self.teacher.logits(data, samples)
        self._log_teacher_accuracy(data, samples, logits)

    def _datamodule(self) -> NoisyLabelDataModule:
        data = self.trainer.datamodule
        if not isinstance(data, NoisyLabelDataModule):
            raise ConfigError("TeacherStudentModule needs its data as an lsl NoisyLabelDataModule "
                              f"(got {type(data).__name__}): pass datamodule=... to the trainer")
        return data

    def _log_teacher_accuracy(self, data: NoisyLabelDataModule, samples: NoisyDataset, logits: Tensor) -> None:
        training = data.train_set.indices.to(logits.device)  # the samples trained on, not the validation split
        predictions = logits[training].argmax(dim=1)
        data.setup("test")
        test_predictions = self.teacher.logits(data, data.test_set).argmax(dim=1)
        metrics = {
            "teacher/train_acc_noisy": (predictions == samples.noisy.to(logits.device)[training]).float().mean().item(),
            "teacher/train_acc_clean": (predictions == samples.clean.to(logits.device)[training]).float().mean().item(),
            "teacher/test_acc": (test_predictions == data.test_set.clean.to(logits.device)).float().mean().item(),
        }
        for logger in self.loggers:
            logger.log_metrics(metrics, step=0)

    # ------------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lsl_teacher"] = {"path": str(self.teacher.path.resolve()), "sha256": self.teacher.sha256}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.recorded_teacher = checkpoint.get("lsl_teacher")
