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

import math
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lsl.calibration import bin_statistics
from lsl.data import Batch, InMemorySource, NoisyDataset, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.inference import CollectedPredictions, predict_logits
from lsl.losses import CrossEntropy, LabelSmoothing, TransitionMatrixLoss
from lsl.module import TEST_PREFIX, Classifier
from lsl.noise import NoNoise
from lsl.temperature import scaled_probabilities
from lsl.temperature_scaling import TemperatureScaling

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ACCURACY_COLOUR = "#9e9e9e"  # the bar up to a bin's accuracy: neutral, so the two gap colours stand out
OVER_COLOUR = "#d62728"  # over-confidence: mean confidence above accuracy (cross-entropy late in training)
UNDER_COLOUR = "#1f77b4"  # under-confidence: accuracy above mean confidence (what label smoothing causes)
OVER_LABEL = "over-confidence (confidence > accuracy)"
UNDER_LABEL = "under-confidence (accuracy > confidence)"
DIAGONAL_LABEL = "perfect calibration"
LEGEND_HEADROOM = 1.36  # the reliability axes end here, above accuracy 1, to hold the legend
MAX_TICK_CLASSES = 20  # one tick label per class up to this many classes; beyond, matplotlib's own ticks
FIT_TITLES = {
    "noisy": "after noisy-label scaling",
    "noise_aware": "after noise-aware scaling",
    "oracle": "after oracle scaling",
}

DEFAULT_HPARAM_METRICS = (
    "test/acc", "test/nll", "test/ece", "test/logit_norm", "val/acc_noisy", "val/acc_clean",
    "train/acc_noisy", "train/acc_clean", "train/memorised", "train/corrected",
)


# ------------------------------------------------------------------------------------------------ drawing


def _new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches, outside pyplot (rendered by the Agg canvas)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        # SummaryWriter.add_figure imports pyplot: a headless backend for a training process, chosen before
        # pyplot picks one; a session that already uses pyplot (a notebook) keeps its own.
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _class_ticks(axis: Any, num_classes: int, which: str) -> None:
    if num_classes <= MAX_TICK_CLASSES:
        getattr(axis, f"set_{which}ticks")(range(num_classes))


def confusion_figure(model_matrix: Tensor | np.ndarray, true_T: Tensor | np.ndarray) -> Figure:
    """The model's ``P(noisy label = j | predicted class = i)`` beside the data's true T, as two heat maps.

    Both use one colour scale from 0 to 1 (a shared colour bar) with a square-root norm (``PowerNorm(0.5)``),
    so that the small off-diagonal mass of label noise shows. A model that predicts the clean class gives a
    left map like the right one; one that memorised its labels gives the identity.

    Args:
        model_matrix: ``[K, K]``, row i (predicted class) and column j (noisy label), e.g.
            :func:`prediction_vs_noisy_label`.
        true_T: ``[K, K]`` transition matrix, ``T[i, j] = P(noisy label = j | clean class = i)``.

    Returns:
        The figure (two axes and the colour bar's).
    """
    from matplotlib.colors import PowerNorm

    left = np.asarray(torch.as_tensor(model_matrix, dtype=torch.float64).cpu())
    right = np.asarray(torch.as_tensor(true_T, dtype=torch.float64).cpu())
    num_classes = len(left)
    figure = _new_figure(10.0, 4.6)
    axes = figure.subplots(1, 2)
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    panels = ((left, "model: P(noisy label j | predicted class i)", "predicted class i"),
              (right, "data: true T[i, j] = P(noisy label j | clean class i)", "clean class i"))
    for axis, (matrix, title, ylabel) in zip(axes, panels):
        image = axis.imshow(matrix, cmap="Blues", norm=norm, interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("noisy label j")
        axis.set_ylabel(ylabel)
        _class_ticks(axis, num_classes, "x")
        _class_ticks(axis, num_classes, "y")
    colour_bar = figure.colorbar(image, ax=list(axes), shrink=0.85)
    colour_bar.set_label("probability (square-root scale)")
    return figure


@dataclass(frozen=True)
class ReliabilityPanel:
    """What one panel of the reliability figure draws: the binning of one (raw or scaled) model's confidences.

    Attributes:
        name: ``"raw"`` for the model itself, else the temperature fit's name (``"noisy"``, ``"noise_aware"``,
            ``"oracle"``).
        temperature: ``t`` of ``softmax(logits / t)``; 1.0 for the raw model.
        counts: ``[bins]`` samples per bin.
        accuracy: ``[bins]`` accuracy per bin (0 where empty).
        confidence: ``[bins]`` mean confidence per bin (0 where empty).
        ece: The sample-weighted mean of ``|accuracy - confidence|``: the expected calibration error.
    """

    name: str
    temperature: float
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float

    @property
    def title(self) -> str:
        """The panel's title: which model, its temperature and its ECE."""
        if self.name == "raw":
            return f"raw model (t = 1)\nECE = {self.ece:.4f}"
        title = f"{FIT_TITLES.get(self.name, f'after {self.name} scaling')}, t = {self.temperature:.3g}"
        if self.name == "oracle":
            title += "\n(a reference: fitted on the clean validation labels)"
        return f"{title}\nECE = {self.ece:.4f}"


def reliability_panels(logits: Tensor | np.ndarray, targets: Tensor | np.ndarray, bins: int,
                       temperatures: dict[str, float]) -> list[ReliabilityPanel]:
    """The numbers of :func:`reliability_figure`: one panel for the raw model, then one per temperature.

    Each bins the float64 probabilities :func:`lsl.temperature.scaled_probabilities` gives (``t = 1`` for the
    raw model) with :func:`lsl.calibration.bin_statistics`, the binning of ``test/ece``; so the raw panel's
    ECE is ``test/ece`` and each scaled one ``test/ece_scaled_<name>`` when ``bins`` is the test ECE's.

    Args:
        logits: ``[N, K]`` test logits.
        targets: ``[N]`` clean test labels.
        bins: Equal-width confidence bins.
        temperatures: Fitted temperatures by name, e.g. :attr:`TemperatureScaling.temperatures`; may be empty.

    Returns:
        The raw panel, then one per entry of ``temperatures`` in its order.
    """
    targets = torch.as_tensor(targets).long().cpu()
    panels = []
    for name, temperature in [("raw", 1.0), *temperatures.items()]:
        probabilities = torch.from_numpy(scaled_probabilities(logits, temperature))
        confidence, predictions = probabilities.max(dim=1)
        counts, accuracy, mean_confidence = bin_statistics(confidence, predictions == targets, bins)
        ece = ((counts * (accuracy - mean_confidence).abs()).sum() / counts.sum()).item()
        panels.append(ReliabilityPanel(name, float(temperature), counts.numpy(), accuracy.numpy(),
                                       mean_confidence.numpy(), ece))
    return panels


def reliability_figure(logits: Tensor | np.ndarray, targets: Tensor | np.ndarray, bins: int,
                       temperatures: dict[str, float]) -> Figure:
    """Reliability diagrams (Guo et al., ICML 2017) of the raw model and after each temperature scaling.

    See :func:`reliability_panels` for the numbers and :func:`draw_reliability` for the picture.
    """
    return draw_reliability(reliability_panels(logits, targets, bins, temperatures))


def draw_reliability(panels: list[ReliabilityPanel]) -> Figure:
    """One column per panel: the reliability diagram above, the samples per bin below.

    The diagram's x axis is the confidence (0 to 1) and its y axis the accuracy (0 to 1). Each non-empty bin
    has a grey bar up to its accuracy; the gap from there to its mean confidence is red where the model is
    over-confident (mean confidence above accuracy) and blue where it is under-confident (accuracy above mean
    confidence); the dashed diagonal is perfect calibration. Below, the test samples in each bin.

    Args:
        panels: From :func:`reliability_panels`.

    Returns:
        The figure; its reliability axes come first in ``figure.axes``, then the count axes, one per panel.
    """
    from matplotlib.patches import Patch

    figure = _new_figure(4.2 * len(panels), 6.4)
    grid = figure.add_gridspec(2, len(panels), height_ratios=[3, 1])
    diagrams = [figure.add_subplot(grid[0, column]) for column in range(len(panels))]
    histograms = [figure.add_subplot(grid[1, column], sharex=diagrams[column]) for column in range(len(panels))]
    for diagram, histogram, panel in zip(diagrams, histograms, panels):
        bins = len(panel.counts)
        width = 1.0 / bins
        centres = (np.arange(bins) + 0.5) * width
        full = panel.counts > 0
        diagram.bar(centres[full], panel.accuracy[full], width=width, color=ACCURACY_COLOUR, edgecolor="white")
        gap = panel.confidence - panel.accuracy
        for side, colour, hatch in ((gap > 0, OVER_COLOUR, "//"), (gap < 0, UNDER_COLOUR, "\\\\")):
            shown = full & side
            diagram.bar(centres[shown], np.abs(gap[shown]), bottom=np.minimum(panel.accuracy, panel.confidence)[shown],
                        width=width, color=colour, alpha=0.55, edgecolor=colour, hatch=hatch)
        diagonal, = diagram.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="black", linewidth=1.0,
                                 label=DIAGONAL_LABEL)
        handles = [Patch(color=ACCURACY_COLOUR, label="accuracy per bin"),
                   Patch(facecolor=OVER_COLOUR, alpha=0.55, hatch="//", edgecolor=OVER_COLOUR, label=OVER_LABEL),
                   Patch(facecolor=UNDER_COLOUR, alpha=0.55, hatch="\\\\", edgecolor=UNDER_COLOUR,
                         label=UNDER_LABEL),
                   diagonal]
        # The legend sits in a band above accuracy 1, where it hides no bin.
        diagram.axhline(1.0, color="black", linewidth=0.6)
        diagram.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
        diagram.set_xlim(0.0, 1.0)
        diagram.set_ylim(0.0, LEGEND_HEADROOM)
        diagram.set_yticks(np.linspace(0.0, 1.0, 6))
        diagram.set_xlabel("confidence")
        diagram.set_ylabel("accuracy")
        diagram.set_title(panel.title, fontsize=9)
        histogram.bar(centres, panel.counts, width=width, color=ACCURACY_COLOUR, edgecolor="white")
        histogram.set_xlabel("confidence")
        histogram.set_ylabel(f"samples\n(of {int(panel.counts.sum())})")
    return figure


def per_class_figure(accuracy: Tensor | np.ndarray, counts: Tensor | np.ndarray, overall: float) -> Figure:
    """Test accuracy per class as bars, the overall accuracy as a horizontal line.

    Args:
        accuracy: ``[K]`` accuracy on each class's samples (:func:`per_class_accuracy`).
        counts: ``[K]`` samples per class; a class with none gets no bar.
        overall: The accuracy over all samples.

    Returns:
        The figure (one axes).
    """
    accuracy = np.asarray(torch.as_tensor(accuracy, dtype=torch.float64).cpu())
    counts = np.asarray(torch.as_tensor(counts, dtype=torch.float64).cpu())
    num_classes = len(accuracy)
    figure = _new_figure(max(6.0, min(16.0, 0.45 * num_classes + 2.0)), 3.6)
    axis = figure.add_subplot()
    present = counts > 0
    classes = np.arange(num_classes)
    axis.bar(classes[present], accuracy[present], color=UNDER_COLOUR, label="accuracy of the class's samples")
    axis.axhline(overall, color=OVER_COLOUR, linestyle="--", label=f"overall accuracy ({overall:.3f})")
    _class_ticks(axis, num_classes, "x")
    axis.set_xlim(-0.6, num_classes - 0.4)
    # A band above accuracy 1 holds the legend, where it hides no bar.
    axis.set_ylim(0.0, 1.16)
    axis.set_yticks(np.linspace(0.0, 1.0, 6))
    axis.axhline(1.0, color="black", linewidth=0.6)
    axis.set_xlabel("class")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"test accuracy per class ({int(counts.sum())} samples)", fontsize=10)
    axis.legend(loc="upper center", ncols=2, fontsize=8, frameon=False)
    return figure


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
        writer.add_figure("views/test_reliability", draw_reliability(panels), step, close=True)
        predictions = logits.argmax(dim=1)
        num_classes = int(pl_module.hparams.get("num_classes", logits.shape[1]))
        accuracy, counts = per_class_accuracy(predictions, targets, num_classes)
        overall = (predictions == targets).double().mean().item()
        writer.add_figure("views/test_per_class_acc", per_class_figure(accuracy, counts, overall), step, close=True)
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
        writer.add_figure("views/train_confusion_vs_T", confusion_figure(confusion, datamodule.transition_matrix),
                          step, close=True)
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
