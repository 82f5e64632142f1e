"""TensorBoard views that explain a run: calibration, memorisation and the noise, as figures and histograms.

:class:`TensorBoardViews` (:mod:`~lsl.views.callback`) is the callback that the ``lsl`` command adds to every run;
it draws the matplotlib figures of :mod:`~lsl.views.figures` from the counts of :mod:`~lsl.views.statistics`, and
fills TensorBoard's hparams tab with the row of :mod:`~lsl.views.hparams`. What each picture means is in
docs/views.md.
"""

from lsl.views.callback import DEFAULT_HPARAM_METRICS, TensorBoardViews
from lsl.views.figures import (
    DIAGONAL_LABEL,
    OVER_COLOUR,
    OVER_LABEL,
    UNDER_COLOUR,
    UNDER_LABEL,
    ReliabilityPanel,
    confusion_figure,
    draw_reliability,
    per_class_figure,
    reliability_figure,
    reliability_panels,
)
from lsl.views.hparams import run_hparams
from lsl.views.statistics import per_class_accuracy, prediction_vs_noisy_label

__all__ = ["DEFAULT_HPARAM_METRICS", "DIAGONAL_LABEL", "OVER_COLOUR", "OVER_LABEL", "UNDER_COLOUR", "UNDER_LABEL",
           "ReliabilityPanel", "TensorBoardViews", "confusion_figure", "draw_reliability", "per_class_accuracy",
           "per_class_figure", "prediction_vs_noisy_label", "reliability_figure", "reliability_panels",
           "run_hparams"]
