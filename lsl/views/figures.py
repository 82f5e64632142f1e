"""The figures of the TensorBoard views, drawn with matplotlib: the model's confusion against the true T, the
reliability diagram before and after each temperature scaling, and the per-class test accuracy.

Each figure has axes, axis labels, a title and a legend (or a colour bar). matplotlib is imported by the functions
that draw, not with this module, and the figures are :class:`matplotlib.figure.Figure` objects rendered by the
Agg canvas: no pyplot state, no window. What each picture means is in docs/views.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lsl.calibration import bin_statistics, expected_calibration_error
from lsl.temperature import scaled_probabilities

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
        correct = predictions == targets
        counts, accuracy, mean_confidence = bin_statistics(confidence, correct, bins)
        ece = expected_calibration_error(confidence, correct, bins).item()
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
