"""lsl: label smoothing under label noise (Lukasik et al., ICML 2020), on PyTorch Lightning."""

from lsl.data import CIFAR10, CIFAR100, Batch, Digits, FashionMNIST, ImageFolder, NoisyLabelDataModule
from lsl.distill import TeacherStudentModule
from lsl.errors import ConfigError
from lsl.estimate import anchor_points, estimate_transition_matrix, estimation_error
from lsl.losses import (
    BackwardCorrection,
    CrossEntropy,
    ForwardCorrection,
    LabelSmearing,
    LabelSmoothing,
    TransitionMatrixLoss,
)
from lsl.models import CifarResNet, PreActResNet18, ResNet50, SmallCNN
from lsl.module import Classifier
from lsl.noise import (
    AsymmetricCIFAR10Noise,
    HumanNoise,
    MatrixNoise,
    NoiseModel,
    NoNoise,
    PairFlipNoise,
    SymmetricNoise,
)
from lsl.views import TensorBoardViews

__all__ = [
    "AsymmetricCIFAR10Noise",
    "BackwardCorrection",
    "Batch",
    "CIFAR10",
    "CIFAR100",
    "CifarResNet",
    "Classifier",
    "ConfigError",
    "CrossEntropy",
    "Digits",
    "FashionMNIST",
    "ForwardCorrection",
    "HumanNoise",
    "ImageFolder",
    "LabelSmearing",
    "LabelSmoothing",
    "MatrixNoise",
    "NoNoise",
    "NoiseModel",
    "NoisyLabelDataModule",
    "PairFlipNoise",
    "PreActResNet18",
    "ResNet50",
    "SmallCNN",
    "SymmetricNoise",
    "TeacherStudentModule",
    "TensorBoardViews",
    "TransitionMatrixLoss",
    "anchor_points",
    "estimate_transition_matrix",
    "estimation_error",
]
