"""lsl: label smoothing under label noise (Lukasik et al., ICML 2020), on PyTorch Lightning.

The public names below import on first use (PEP 562), so that ``import lsl`` and the ``lsl`` command's
own subcommands (``lsl report``, ``lsl sweep --help``) do not pay for importing torch and Lightning.
``from lsl import Classifier`` works as before.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name lives.
_MODULES = {
    "lsl.data": ("Batch", "CIFAR10", "CIFAR100", "Digits", "FashionMNIST", "ImageFolder", "NoisyLabelDataModule"),
    "lsl.distill": ("TeacherStudentModule",),
    "lsl.errors": ("ConfigError",),
    "lsl.estimate": ("anchor_points", "estimate_transition_matrix", "estimation_error"),
    "lsl.losses": ("BackwardCorrection", "CrossEntropy", "ForwardCorrection", "LabelSmearing", "LabelSmoothing",
                   "TransitionMatrixLoss"),
    "lsl.models": ("CifarResNet", "PreActResNet18", "ResNet50", "SmallCNN"),
    "lsl.module": ("Classifier",),
    "lsl.noise": ("AsymmetricCIFAR10Noise", "HumanNoise", "MatrixNoise", "NoiseModel", "NoNoise", "PairFlipNoise",
                  "SymmetricNoise"),
    "lsl.views": ("TensorBoardViews",),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        # A submodule (`import lsl; lsl.noise.SymmetricNoise`), which the eager imports used to load.
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module 'lsl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

