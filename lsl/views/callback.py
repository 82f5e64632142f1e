"""TensorBoard views that explain a run: calibration, memorisation and the noise, as figures and histograms.

:class:`TensorBoardViews` is a callback that the ``lsl`` command adds to every run. It logs a few times per
run, never per step: at the end of every ``every_n_epochs``-th validation it looks at a fixed subset of the
training set, and at the end of testing it looks at the test set and fills TensorBoard's hparams tab.

Each image is a matplotlib figure with axes, axis labels, a title and a legend (or a colour bar), logged with
``SummaryWriter.add_figure``. matplotlib is imported by the functions that draw, not with this module, and
the figures are :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas: no pyplot state, no
window. What each picture means is in docs/views.md.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lsl.data import Batch, InMemorySource, NoisyDataset, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.inference import CollectedPredictions, predict_logits
from lsl.module import TEST_PREFIX, Classifier
from lsl.temperature_scaling import TemperatureScaling
from lsl.views.figures import confusion_figure, draw_reliability, per_class_figure, reliability_panels
from lsl.views.hparams import lsl_datamodule, run_hparams
from lsl.views.statistics import per_class_accuracy, prediction_vs_noisy_label

DEFAULT_HPARAM_METRICS = (
    "test/acc", "test/nll", "test/ece", "test/logit_norm", "val/acc_noisy", "val/acc_clean",
    "train/acc_noisy", "train/acc_clean", "train/memorised", "train/corrected",
)


class TensorBoardViews(pl.Callback):
    """Logs images, histograms and the hparams entry that explain a run in TensorBoard.

    At the end of every ``every_n_epochs``-th validation, and once more at the end of testing after ``fit``,
    on a fixed subset of the un-augmented training set (in-memory datasets only):

    - ``views/train_confusion_vs_T``: ``P(noisy label | predicted class)`` beside the true T;
    - histograms ``views/train_max_prob/{clean,mislabelled}`` and ``views/train_logit_norm/{clean,mislabelled}``.

    At the end of testing, on the clean test set, from the logits ``Classifier.test_step`` returns (those
    ``test/*`` is measured on): ``views/test_reliability`` (the raw model, then after each temperature that
    :class:`lsl.temperature_scaling.TemperatureScaling` fitted, if it is among the callbacks),
    ``views/test_per_class_acc`` (a figure and a text table), and an hparams entry (data, noise, loss, alpha,
    backbone, seeds) whose metrics are the run's final scalars. Only the ``test/`` test draws; a best-checkpoint
    test (``test_best/``) logs numbers only.

    After a test, :attr:`last_reliability` holds the ECE each reliability panel shows, by panel: ``"raw"``,
    then the temperature fits' names.

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
        reliability_bins: Equal-width confidence bins of the reliability diagram; at ``test/ece``'s (15), the
            raw panel's ECE is ``test/ece`` and each scaled one ``test/ece_scaled_<name>``.
        hparam_metrics: Scalar tags shown as metrics in the hparams tab (their last values); None gives the
            test metrics and the final train/val accuracies and memorisation. Keep it the same across runs
            you compare: TensorBoard takes the columns from one run.
        figures: Draw the three matplotlib figures (confusion against T, reliability, per-class accuracy);
            false skips matplotlib (about a second per test) and keeps the histograms, the per-class text and
            the hparams row.
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        max_train_samples: int | None = 5000,
        reliability_bins: int = 15,
        hparam_metrics: list[str] | None = None,
        figures: bool = True,
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
        self.figures = figures
        self.last_reliability: dict[str, float] = {}
        self._train_views_step: int | None = None
        self._test_predictions = CollectedPredictions()

    # ---------------------------------------------------------------------------------------------- hooks

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or not self.every_n_epochs or epoch % self.every_n_epochs:
            return
        self._log_training_views(trainer, pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._test_predictions = CollectedPredictions()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Batch,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        testing_another_checkpoint = isinstance(pl_module, Classifier) and pl_module.test_prefix != TEST_PREFIX
        if _tensorboard(trainer) is None or testing_another_checkpoint or not isinstance(outputs, Tensor):
            return  # the views show the final model; the best-validation checkpoint's test adds only numbers
        # Classifier.test_step returns the float32 logits it measured test/* with: the views draw the same ones.
        self._test_predictions.add(outputs, batch.clean_target)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        if logger is None or not self._test_predictions:
            return
        logits, targets = self._test_predictions.gather(pl_module)
        if not trainer.is_global_zero:
            return
        scaling = next((c for c in trainer.callbacks if isinstance(c, TemperatureScaling)), None)
        temperatures = dict(scaling.temperatures) if scaling is not None else {}
        self._log_test_views(logger, trainer.global_step, logits, targets, temperatures, pl_module)
        self._log_training_views(trainer, pl_module)
        self._log_hparams(logger, trainer, pl_module)

    # ---------------------------------------------------------------------------------------------- views

    def _log_test_views(self, logger: TensorBoardLogger, step: int, logits: Tensor, targets: Tensor,
                        temperatures: dict[str, float], pl_module: pl.LightningModule) -> None:
        writer = logger.experiment
        panels = reliability_panels(logits, targets, self.reliability_bins, temperatures)
        self.last_reliability = {panel.name: panel.ece for panel in panels}
        if self.figures:
            writer.add_figure("views/test_reliability", draw_reliability(panels), step, close=True)
        predictions = logits.argmax(dim=1)
        num_classes = int(pl_module.hparams.get("num_classes", logits.shape[1]))
        accuracy, counts = per_class_accuracy(predictions, targets, num_classes)
        overall = (predictions == targets).double().mean().item()
        if self.figures:
            writer.add_figure("views/test_per_class_acc", per_class_figure(accuracy, counts, overall), step,
                              close=True)
        rows = [f"| {k} | {accuracy[k]:.4f} | {int(counts[k])} |" for k in range(num_classes)]
        table = ["| class | accuracy | samples |", "|---|---|---|", *rows, f"| all | {overall:.4f} | {len(targets)} |"]
        writer.add_text("views/test_per_class_acc", "\n".join(table), step)

    def _log_training_views(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        datamodule = lsl_datamodule(trainer)
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
        if self.figures:
            writer.add_figure("views/train_confusion_vs_T",
                              confusion_figure(confusion, datamodule.transition_matrix), step, close=True)
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


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def _fixed_subset(size: int, limit: int | None) -> np.ndarray:
    """The same positions every call: a seeded draw of its own, so the training RNG is left untouched."""
    if limit is None or limit >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(0).choice(size, limit, replace=False))
