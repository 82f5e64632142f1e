"""Distillation from a trained teacher: the paper's second experiment, as its own LightningModule.

Under label noise, a student distilled from a teacher trained with label smoothing (or forward correction)
beats one distilled from a cross-entropy teacher (Lukasik et al., "Does label smoothing mitigate label
noise?", ICML 2020, section 6), the reverse of what Mueller et al. (NeurIPS 2019) found on clean labels.

Two stages::

    lsl fit --config configs/fashion_mnist/ls.yaml            # the teacher, on the noisy labels
    lsl fit --config configs/fashion_mnist/distill.yaml \\
            --model.teacher_checkpoint logs/fashion_mnist_ls/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsl.data import Batch, NoisyDataset, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.models import resnet32
from lsl.module import Classifier, OptimizerFactory, SchedulerFactory, paper_schedule, paper_sgd
from lsl.noise import NoiseModel
from lsl.resume import save_atomically


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, averaged over the batch.

    Hinton et al. (2015): the ``tau^2`` factor keeps the gradient's scale independent of ``tau``. The KL runs
    from the teacher's distribution to the student's (``F.kl_div(log q_student, log p_teacher)``), in float32.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return temperature**2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (a checkpoint, a config), read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FrozenTeacher:
    """A classifier checkpoint written by ``lsl fit``, used as a fixed function of the images.

    Deliberately not an ``nn.Module`` attribute of the student: Lightning's ``model.train()`` never reaches
    it (it stays in eval mode for the whole fit), the optimizer and DDP never see its parameters, and its
    weights stay out of the student's checkpoints.

    Attributes:
        path: The checkpoint.
        sha256: The checkpoint file's sha256.
        model: The teacher classifier, in eval mode, without gradients.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"teacher_checkpoint={str(path)!r} does not exist: train the teacher first "
                              "(lsl fit --config ...) and pass its checkpoints/last.ckpt")
        self.sha256 = file_sha256(self.path)
        try:
            # The checkpoint's hyperparameters hold lsl objects (loss, noise), which weights_only refuses.
            self.model = Classifier.load_from_checkpoint(self.path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise ConfigError(f"teacher_checkpoint={str(path)!r} is not a classifier checkpoint written by "
                              f"lsl fit ({type(error).__name__}: {error})") from error
        self.model.eval().requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self.model.hparams.num_classes

    @property
    def data(self) -> dict | None:
        """The fingerprint of the data the teacher learnt from, as its checkpoint recorded it."""
        return self.model.data_fingerprint

    @property
    def training(self) -> bool:
        return self.model.training

    def to(self, device: torch.device) -> FrozenTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """The teacher's logits, float32."""
        weight = next(self.model.parameters())
        return self.model(images.to(weight.device, weight.dtype)).float()


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

    With ``cache_teacher_logits``, the teacher's logits over the training set are computed once, on
    un-augmented images, stored as one float16 ``[N, K]`` tensor under ``<artifact_dir>/teacher_logits/``
    keyed by the teacher checkpoint's sha256, the dataset, the noise artifact's sha256 and the transform,
    and reused by every later run with the same key. A student epoch then costs what a classifier epoch
    costs, but the student matches the teacher's view of the *un-augmented* image while it sees an
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
        super().__init__(backbone, loss, optimizer, scheduler, scheduler_interval, num_classes, noise, ece_bins,
                         channels_last=channels_last, compile=compile)
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
        """The student's ``kd_loss``, ``task_loss`` and their mix, ``loss``, on a preprocessed training batch."""
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
            self._check_teacher_data(self._datamodule().fingerprint())

    def _check_teacher_data(self, ours: dict) -> None:
        theirs = self.teacher.data
        if theirs is None:
            raise ConfigError(f"the teacher checkpoint {str(self.teacher.path)!r} does not record the data it learnt "
                              "from (it was not written by lsl fit with a NoisyLabelDataModule): retrain it, or set "
                              "allow_teacher_data_mismatch: true to use it anyway")
        if all(theirs.get(key) == ours[key] for key in ("dataset", "num_classes", "noisy_labels_sha256")):
            return
        differences = "; ".join(f"{key}: teacher {theirs.get(key)!r}, student {value!r}"
                                for key, value in ours.items() if theirs.get(key) != value)
        raise ConfigError(f"the teacher {str(self.teacher.path)!r} learnt from other noisy labels than this run's data "
                          f"({differences}). Train the teacher on the same dataset, noise and noise_seed, or set "
                          "allow_teacher_data_mismatch: true to distil across data on purpose")

    def on_fit_start(self) -> None:
        if self.recorded_teacher is not None and self.recorded_teacher["sha256"] != self.teacher.sha256:
            raise ConfigError(f"resuming a student of teacher sha256 {self.recorded_teacher['sha256'][:16]}... with "
                              f"{str(self.teacher.path)!r}, whose sha256 is {self.teacher.sha256[:16]}...: "
                              "pass the teacher this student started with")
        data = self._datamodule()
        self.teacher.to(self.device)
        samples = data.unaugmented_training_samples()
        logits = self._cached_or_computed_logits(data, samples) if self.cache_teacher_logits else \
            self._run_teacher(data, samples)
        if self.cache_teacher_logits:
            self.cached_teacher_logits = logits.to(self.device, torch.float16)
        self._log_teacher_accuracy(data, samples, logits)

    def _datamodule(self) -> NoisyLabelDataModule:
        data = getattr(self.trainer, "datamodule", None)
        if not isinstance(data, NoisyLabelDataModule):
            raise ConfigError("TeacherStudentModule needs its data as an lsl NoisyLabelDataModule "
                              f"(got {type(data).__name__}): pass datamodule=... to the trainer")
        return data

    def _run_teacher(self, data: NoisyLabelDataModule, samples: NoisyDataset) -> Tensor:
        """The teacher's logits for every sample of ``samples``, un-augmented, in order: float32 ``[N, K]``."""
        return torch.cat([self.teacher(batch.input) for batch in data.unaugmented_batches(samples, self.device)])

    def _cached_or_computed_logits(self, data: NoisyLabelDataModule, samples: NoisyDataset) -> Tensor:
        fingerprint = data.fingerprint()
        key = {"teacher_sha256": self.teacher.sha256, "dataset": fingerprint["dataset"],
               "noisy_labels_sha256": fingerprint["noisy_labels_sha256"], "transform": data.eval_transform,
               "num_samples": len(samples), "num_classes": self.hparams.num_classes}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(data.artifact_dir) / "teacher_logits" / f"{key['dataset']}-{digest}.pt"
        cached = _read_logits(path, key)
        if cached is not None:
            return cached
        logits = self._run_teacher(data, samples)
        save_atomically({"key": key, "logits": logits.to(torch.float16).cpu()}, path)
        return logits

    def _log_teacher_accuracy(self, data: NoisyLabelDataModule, samples: NoisyDataset, logits: Tensor) -> None:
        training = data.train_set.indices.to(logits.device)  # the samples trained on, not the validation split
        predictions = logits[training].argmax(dim=1)
        data.setup("test")
        test_predictions = self._run_teacher(data, data.test_set).argmax(dim=1)
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


def _read_logits(path: Path, key: dict) -> Tensor | None:
    """The cached logits at ``path`` if they are readable and were made for ``key``; None means recompute."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: a cache is recomputed, never trusted
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    logits = cached.get("logits")
    if not isinstance(logits, Tensor) or logits.shape != (key["num_samples"], key["num_classes"]):
        return None
    return logits.float()

