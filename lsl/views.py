"""TensorBoard views that explain a run: calibration, memorisation and the noise, as images and histograms.

:class:`TensorBoardViews` is a callback that the ``lsl`` command adds to every run. It logs a few times per
run, never per step: at the end of every ``every_n_epochs``-th validation it looks at a fixed subset of the
training set, and at the end of testing it looks at the test set and fills TensorBoard's hparams tab.

Images are drawn as small uint8 tensors here (no plotting library): a heat map cell, a bar or a line per
value, with no text. What each axis means is in docs/views.md.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lsl.calibration import bin_statistics
from lsl.data import Batch, InMemorySource, NoisyDataset, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.inference import predict_logits
from lsl.losses import CrossEntropy, LabelSmoothing, TransitionMatrixLoss
from lsl.module import TEST_PREFIX, Classifier
from lsl.noise import NoNoise

WHITE = (255, 255, 255)
INK = (8, 48, 107)  # the dark end of the heat map
BAR = (31, 119, 180)
GAP = (255, 152, 150)  # distance between accuracy and confidence in the reliability diagram
LINE = (214, 39, 40)
GUIDE = (150, 150, 150)

HEATMAP_SIZE = 160  # pixels per K x K matrix (K cells of 160 // K pixels)
MATRIX_GAP = 8  # white pixels between the model's matrix and the true T
BIN_WIDTH = 10  # pixels per reliability bin; the plot is square
COUNT_STRIP = 30  # height of the strip under the reliability diagram that shows how many samples each bin holds
STRIP_GAP = 4
CHART_WIDTH = 320  # per-class accuracy: K bars of 320 // K pixels
CHART_HEIGHT = 100

DEFAULT_HPARAM_METRICS = (
    "test/acc", "test/nll", "test/ece", "test/logit_norm", "val/acc_noisy", "val/acc_clean",
    "train/acc_noisy", "train/acc_clean", "train/memorised", "train/corrected",
)


# ------------------------------------------------------------------------------------------------ drawing


def _canvas(height: int, width: int) -> Tensor:
    return torch.tensor(WHITE, dtype=torch.uint8).view(3, 1, 1).repeat(1, height, width)


def _fill(image: Tensor, rows: slice, cols: slice, colour: tuple[int, int, int]) -> None:
    image[:, rows, cols] = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)


def heatmap(matrix: Tensor | np.ndarray, cell: int) -> Tensor:
    """A K x K matrix of values in [0, 1] as a uint8 ``[3, K * cell, K * cell]`` image, white at 0, dark at 1.

    The shade follows sqrt(value), so that the small off-diagonal mass of label noise stays visible.
    """
    values = torch.as_tensor(matrix, dtype=torch.float32).clamp(0.0, 1.0).sqrt()
    white = torch.tensor(WHITE, dtype=torch.float32).view(3, 1, 1)
    ink = torch.tensor(INK, dtype=torch.float32).view(3, 1, 1)
    image = white + (ink - white) * values.unsqueeze(0)
    return image.round().to(torch.uint8).repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)


def matrices_side_by_side(left: Tensor | np.ndarray, right: Tensor | np.ndarray) -> Tensor:
    """Two K x K heat maps, ``left`` then ``right``, ``MATRIX_GAP`` white pixels apart."""
    cell = max(1, HEATMAP_SIZE // len(left))
    images = [heatmap(left, cell), _canvas(len(left) * cell, MATRIX_GAP), heatmap(right, cell)]
    return torch.cat(images, dim=2)


def reliability_diagram(confidence: Tensor, correct: Tensor, bins: int) -> Tensor:
    """The reliability diagram of Guo et al. (ICML 2017) as a uint8 image.

    The square plot has one column per equal-width confidence bin (x: confidence 0 to 1, y: 0 to 1): a bar
    up to the bin's accuracy, a pink band from there to its mean confidence, and the grey diagonal of
    perfect calibration. Below it, a strip shows the share of samples in each bin. Size:
    ``[3, bins * BIN_WIDTH + STRIP_GAP + COUNT_STRIP, bins * BIN_WIDTH]``.
    """
    size = bins * BIN_WIDTH
    image = _canvas(size + STRIP_GAP + COUNT_STRIP, size)
    counts, accuracy, mean_confidence = bin_statistics(confidence.cpu(), correct.cpu(), bins)
    for b in torch.nonzero(counts).flatten().tolist():
        cols = slice(b * BIN_WIDTH, (b + 1) * BIN_WIDTH - 1)
        bar_top = size - round(accuracy[b].item() * size)
        confidence_top = size - round(mean_confidence[b].item() * size)
        _fill(image, slice(min(bar_top, confidence_top), max(bar_top, confidence_top)), cols, GAP)
        _fill(image, slice(bar_top, size), cols, BAR)
        strip_height = round(counts[b].item() / counts.max().item() * COUNT_STRIP)
        _fill(image, slice(image.shape[1] - strip_height, image.shape[1]), cols, GUIDE)
    diagonal = torch.arange(size)
    image[:, size - 1 - diagonal, diagonal] = torch.tensor(GUIDE, dtype=torch.uint8).view(3, 1)
    return image


def bar_chart(values: Tensor, reference: float | None = None) -> Tensor:
    """Values in [0, 1] as bars (one per class, left to right) and ``reference`` as a red horizontal line.

    Size: ``[3, CHART_HEIGHT, K * max(1, CHART_WIDTH // K)]``.
    """
    width = max(1, CHART_WIDTH // len(values))
    image = _canvas(CHART_HEIGHT, width * len(values))
    for k, value in enumerate(values.clamp(0.0, 1.0).tolist()):
        _fill(image, slice(CHART_HEIGHT - round(value * CHART_HEIGHT), CHART_HEIGHT),
              slice(k * width, (k + 1) * width - (width > 2)), BAR)
    if reference is not None:
        row = min(CHART_HEIGHT - 1, CHART_HEIGHT - round(reference * CHART_HEIGHT))
        _fill(image, slice(row, row + 1), slice(None), LINE)
    return image


# ------------------------------------------------------------------------------------------ statistics


def prediction_vs_noisy_label(predictions: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """``M[i, j] = P(noisy label = j | predicted = i)``, row-normalised counts (rows never predicted stay 0).

    A model that predicts the clean class gives M close to T; one that memorised its labels gives M = I.
    """
    counts = torch.bincount(predictions * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.view(num_classes, num_classes).double()
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def per_class_accuracy(predictions: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The accuracy on each class's samples (0 for a class with none) and each class's sample count."""
    counts = torch.bincount(targets, minlength=num_classes).double()
    hits = torch.bincount(targets, weights=(predictions == targets).double(), minlength=num_classes)
    return hits / counts.clamp(min=1), counts


# -------------------------------------------------------------------------------------------- the callback


class TensorBoardViews(pl.Callback):
    """Logs images, histograms and the hparams entry that explain a run in TensorBoard.

    At the end of every ``every_n_epochs``-th validation, and once more at the end of testing after ``fit``,
    on a fixed subset of the un-augmented training set (in-memory datasets only):

    - ``views/train_confusion_vs_T``: ``P(noisy label | predicted class)`` beside the true T;
    - histograms ``views/train_max_prob/{clean,mislabelled}`` and ``views/train_logit_norm/{clean,mislabelled}``.

    At the end of testing, on the clean test set: ``views/test_reliability``, ``views/test_per_class_acc`` (an
    image and a text table), and an hparams entry (data, noise, loss, alpha, backbone, seeds) whose metrics
    are the run's final scalars.

    ```yaml
    views:
      every_n_epochs: 10
      max_train_samples: 5000
    ```

    Args:
        every_n_epochs: Log the training-set views at the end of every n-th validation epoch; 0 logs them only
            at the end of testing.
        max_train_samples: Size of the fixed random training subset the training-set views look at (the same
            samples every time); None uses the whole training split.
        reliability_bins: Equal-width confidence bins of the reliability diagram (``test/ece`` uses 15).
        hparam_metrics: Scalar tags shown as metrics in the hparams tab (their last values); None gives the
            test metrics and the final train/val accuracies and memorisation. Keep it the same across runs
            you compare: TensorBoard takes the columns from one run.
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        max_train_samples: int | None = 5000,
        reliability_bins: int = 15,
        hparam_metrics: list[str] | None = None,
    ) -> None:
        if every_n_epochs < 0:
            raise ConfigError(f"every_n_epochs={every_n_epochs} must be 0 (only at test end) or a positive number")
        if max_train_samples is not None and max_train_samples < 1:
            raise ConfigError(f"max_train_samples={max_train_samples} must be positive, or null for every sample")
        if reliability_bins < 1:
            raise ConfigError(f"reliability_bins={reliability_bins} must be a positive number of bins, e.g. 15")
        self.every_n_epochs = every_n_epochs
        self.max_train_samples = max_train_samples
        self.reliability_bins = reliability_bins
        self.hparam_metrics = list(DEFAULT_HPARAM_METRICS if hparam_metrics is None else hparam_metrics)
        self._train_views_step: int | None = None
        self._test_outputs: list[Tensor] = []

    # ---------------------------------------------------------------------------------------------- hooks

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or not self.every_n_epochs or epoch % self.every_n_epochs:
            return
        self._log_training_views(trainer, pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._test_outputs = []

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Batch,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        testing_another_checkpoint = isinstance(pl_module, Classifier) and pl_module.test_prefix != TEST_PREFIX
        if _tensorboard(trainer) is None or testing_another_checkpoint:
            return  # the views show the final model; the best-validation checkpoint's test adds only numbers
        # test_step returns nothing, so the logits are computed again: one extra pass over the test set per run.
        probabilities = pl_module(batch.input).float().softmax(dim=1)
        confidence, predictions = probabilities.max(dim=1)
        self._test_outputs.append(torch.stack([confidence, predictions.float(), batch.clean_target.float()]))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        if logger is None or not self._test_outputs:
            return
        outputs = pl_module.all_gather(torch.cat(self._test_outputs, dim=1))
        self._test_outputs = []
        if outputs.dim() == 3:
            # DDP stacks one [3, N] block per rank, also when it runs a single process; other strategies do not.
            outputs = outputs.transpose(0, 1).flatten(1)
        if not trainer.is_global_zero:
            return
        confidence, predictions, targets = outputs[0].cpu(), outputs[1].long().cpu(), outputs[2].long().cpu()
        self._log_test_views(logger, trainer.global_step, confidence, predictions, targets, pl_module)
        self._log_training_views(trainer, pl_module)
        self._log_hparams(logger, trainer, pl_module)

    # ---------------------------------------------------------------------------------------------- views

    def _log_test_views(self, logger: TensorBoardLogger, step: int, confidence: Tensor, predictions: Tensor,
                        targets: Tensor, pl_module: pl.LightningModule) -> None:
        writer = logger.experiment
        correct = predictions == targets
        writer.add_image("views/test_reliability", reliability_diagram(confidence, correct, self.reliability_bins),
                         step, dataformats="CHW")
        num_classes = int(pl_module.hparams.get("num_classes", int(targets.max()) + 1))
        accuracy, counts = per_class_accuracy(predictions, targets, num_classes)
        overall = correct.double().mean().item()
        writer.add_image("views/test_per_class_acc", bar_chart(accuracy, overall), step, dataformats="CHW")
        rows = [f"| {k} | {accuracy[k]:.4f} | {int(counts[k])} |" for k in range(num_classes)]
        table = ["| class | accuracy | samples |", "|---|---|---|", *rows, f"| all | {overall:.4f} | {len(targets)} |"]
        writer.add_text("views/test_per_class_acc", "\n".join(table), step)

    def _log_training_views(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        datamodule = _lsl_datamodule(trainer)
        dataset = None if datamodule is None else datamodule.train_set
        step = trainer.global_step
        # ImageFolder images are decoded and randomly cropped per sample: too slow here, and the crops would
        # draw from the training RNG.
        if (logger is None or not trainer.is_global_zero or dataset is None or step == self._train_views_step
                or not isinstance(datamodule.dataset, InMemorySource)):
            return
        self._train_views_step = step
        logits, noisy, is_noisy = self._training_logits(datamodule, dataset, pl_module)
        writer = logger.experiment
        num_classes = logits.shape[1]
        confusion = prediction_vs_noisy_label(logits.argmax(dim=1), noisy, num_classes)
        writer.add_image("views/train_confusion_vs_T",
                         matrices_side_by_side(confusion, datamodule.transition_matrix), step, dataformats="CHW")
        max_prob, norm = logits.softmax(dim=1).max(dim=1).values, logits.norm(dim=1)
        for subset, mask in (("clean", ~is_noisy), ("mislabelled", is_noisy)):
            if mask.any():
                writer.add_histogram(f"views/train_max_prob/{subset}", max_prob[mask], step)
                writer.add_histogram(f"views/train_logit_norm/{subset}", norm[mask], step)

    def _training_logits(self, datamodule: NoisyLabelDataModule, dataset: NoisyDataset,
                         pl_module: pl.LightningModule) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, noisy labels and is-noisy flags of the fixed training subset, without augmentation."""
        positions = torch.as_tensor(_fixed_subset(len(dataset), self.max_train_samples))
        logits = predict_logits(pl_module, datamodule, dataset, positions, pl_module.device).cpu()
        noisy, clean = dataset.noisy.cpu()[positions], dataset.clean.cpu()[positions]
        return logits, noisy, noisy != clean

    # -------------------------------------------------------------------------------------------- hparams

    def _log_hparams(self, logger: TensorBoardLogger, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = run_hparams(trainer, pl_module)
        # The metric values are the run's own scalars (TensorBoard shows each tag's last value), so only the
        # names are given. logger.log_hyperparams would log them again at step 0 and would overwrite the
        # model's `noise` and `loss` entries in hparams.yaml with these strings.
        experiment, start, end = hparams(params, dict.fromkeys(self.hparam_metrics, 0.0))
        # The run's own event file through the public FileWriter that SummaryWriter.add_hparams writes with
        # (add_hparams itself would open a new subfolder). It is open: the test views were just written with it.
        writer = logger.experiment.file_writer
        for summary in (experiment, start, end):
            writer.add_summary(summary)
        writer.flush()


def run_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """What tells runs apart in the hparams table: data, noise, loss, alpha, backbone and the two seeds.

    Every run gives every key with the same type, NaN where it does not apply (``alpha`` of forward correction
    with a full T, say): TensorBoard takes the table's columns and their types from one run.
    """
    datamodule = _lsl_datamodule(trainer)
    classifier = pl_module if isinstance(pl_module, Classifier) else None
    noise = (datamodule.noise if datamodule is not None else None) or pl_module.hparams.get("noise") or NoNoise()
    num_classes = int(pl_module.hparams.get("num_classes", 2))
    loss = None if classifier is None else classifier.loss
    if isinstance(loss, CrossEntropy):
        alpha = 0.0
    else:
        alpha = loss.alpha if isinstance(loss, (LabelSmoothing, TransitionMatrixLoss)) else None
    data = datamodule.dataset.name if datamodule is not None else "unknown"
    if datamodule is not None and datamodule.train_subset:
        data += f"-subset{datamodule.train_subset}"
    seed = os.environ.get("PL_GLOBAL_SEED")
    return {
        "data": data,
        "noise": noise.slug(),
        "flip_rate": float(np.mean(1.0 - np.diag(noise.transition_matrix(num_classes)))),
        "noise_seed": float(datamodule.noise_seed) if datamodule is not None else math.nan,
        "loss": type(loss).__name__,
        "alpha": math.nan if alpha is None else float(alpha),
        "backbone": type(None if classifier is None else classifier.network).__name__,
        "seed": math.nan if seed is None else float(seed),
    }


def _lsl_datamodule(trainer: pl.Trainer) -> NoisyLabelDataModule | None:
    """The trainer's data module if it is lsl's (another has none of the noisy-label views' fields)."""
    return trainer.datamodule if isinstance(trainer.datamodule, NoisyLabelDataModule) else None


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def _fixed_subset(size: int, limit: int | None) -> np.ndarray:
    """The same positions every call: a seeded draw of its own, so the training RNG is left untouched."""
    if limit is None or limit >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(0).choice(size, limit, replace=False))
