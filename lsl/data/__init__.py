"""Noisy-label data: image sources, the noisy-label data module, and batch augmentation on tensors.

A data module wraps an image source (CIFAR-10/100, Fashion-MNIST, scikit-learn's digits, an ImageFolder
tree) and a noise model from :mod:`lsl.noise`. Noise touches the training split only; the test labels stay
clean. Every batch is a :class:`Batch` carrying the input, the noisy and the clean target, the sample index
and an is-noisy flag, so the classifier can measure memorisation of the mislabelled samples.

Small datasets are decoded once into uint8 tensors; the standard augmentation (pad + random crop,
horizontal flip) and the normalisation run on whole batches after they reach the device, never per
sample through PIL.

Inside: ``batch.py`` (:class:`Batch`), ``sources/`` (one file per dataset format, with the
:class:`ImageSource` contract they share and the download helper), ``dataset.py`` (:class:`NoisyDataset`),
``augmentation.py`` (:func:`random_crop_flip`) and ``datamodule.py`` (:class:`NoisyLabelDataModule`).
"""

from lsl.data.augmentation import random_crop_flip
from lsl.data.batch import Batch
from lsl.data.datamodule import NoisyLabelDataModule
from lsl.data.dataset import NoisyDataset
from lsl.data.sources import (
    CIFAR10,
    CIFAR100,
    DecodedImages,
    Digits,
    FashionMNIST,
    ImageFolder,
    ImageSource,
    InMemorySource,
    fetch,
)

__all__ = ["CIFAR10", "CIFAR100", "Batch", "DecodedImages", "Digits", "FashionMNIST", "ImageFolder", "ImageSource",
           "InMemorySource", "NoisyDataset", "NoisyLabelDataModule", "fetch", "random_crop_flip"]
