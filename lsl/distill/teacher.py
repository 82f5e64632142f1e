"""The frozen teacher of a distillation student: a classifier checkpoint written by ``lsl fit``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lsl.checkpoint_check import training_label_differences
from lsl.data import NoisyDataset, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.files import file_sha256
from lsl.inference import predict_logits
from lsl.module import Classifier

# The noise spec behind the training labels: not part of the comparison (a spec may be spelled differently and
# give the same labels), but named in the error, because it is what the user changes to fix a mismatch.
_NOISE_KEYS = ("noise", "noise_seed")


class FrozenTeacher:
    """A classifier checkpoint written by ``lsl fit``, used as a fixed function of the images.

    It holds the teacher classifier as ``model`` but is deliberately not an ``nn.Module`` attribute of the
    student: Lightning's ``model.train()`` never reaches it (it stays in eval mode for the whole fit), the
    optimizer and DDP never see its parameters, and its weights stay out of the student's checkpoints.

    Args:
        path: The teacher's checkpoint.

    Attributes:
        path: The checkpoint.
        sha256: The checkpoint file's sha256.
        model: The teacher classifier, in eval mode, without gradients.

    Raises:
        ConfigError: the file is missing, or is not a classifier checkpoint.
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
        """The teacher's logits for a batch of preprocessed images, float32."""
        weight = next(self.model.parameters())
        return self.model(images.to(weight.device, weight.dtype)).float()

    def logits(self, datamodule: NoisyLabelDataModule, dataset: NoisyDataset) -> Tensor:
        """The teacher's logits for every sample of ``dataset``, un-augmented, in order: float32 ``[N, K]``
        on the teacher's device."""
        return predict_logits(self.model, datamodule, dataset)

    def check_learnt_from(self, ours: dict) -> None:
        """Refuse a teacher that learnt from other training labels than ``ours`` (a data module's
        ``fingerprint()``).

        Raises:
            ConfigError: the checkpoint records no data, or other labels; naming the keys that differ and
                the two ways on.
        """
        theirs = self.data
        if theirs is None:
            raise ConfigError(f"the teacher checkpoint {str(self.path)!r} does not record the data it learnt "
                              "from (it was not written by lsl fit with a NoisyLabelDataModule): retrain it, or set "
                              "allow_teacher_data_mismatch: true to use it anyway")
        label_differences = training_label_differences(theirs, ours)
        if not label_differences:
            return
        causes = [f"{key}: teacher {theirs.get(key)!r}, student {ours.get(key)!r}"
                  for key in _NOISE_KEYS if theirs.get(key) != ours.get(key)]
        raise ConfigError(f"the teacher {str(self.path)!r} learnt from other noisy labels than this run's data "
                          f"({'; '.join(causes + label_differences)}). Train the teacher on the same dataset, noise "
                          "and noise_seed, or set allow_teacher_data_mismatch: true to distil across data on purpose")
