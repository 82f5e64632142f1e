"""lsl: label smoothing under label noise (Lukasik et al., ICML 2020), on PyTorch Lightning."""

from lsl.data import NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.losses import BackwardCorrection, CrossEntropy, ForwardCorrection, LabelSmearing, LabelSmoothing
from lsl.module import Classifier

__all__ = [
    "BackwardCorrection",
    "Classifier",
    "ConfigError",
    "CrossEntropy",
    "ForwardCorrection",
    "LabelSmearing",
    "LabelSmoothing",
    "NoisyLabelDataModule",
]
