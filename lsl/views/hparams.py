"""The row of TensorBoard's hparams tab that tells runs apart: data, noise, loss, alpha, backbone and seeds."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl
import numpy as np

from lsl.data import NoisyLabelDataModule
from lsl.losses import CrossEntropy, LabelSmoothing, TransitionMatrixLoss
from lsl.module import Classifier
from lsl.noise import NoNoise


def run_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """What tells runs apart in the hparams table: data, noise, loss, alpha, backbone and the two seeds.

    Every run gives every key with the same type, NaN where it does not apply (``alpha`` of forward correction
    with a full T, say): TensorBoard takes the table's columns and their types from one run.
    """
    datamodule = lsl_datamodule(trainer)
    classifier = pl_module if isinstance(pl_module, Classifier) else None
    noise = (datamodule.noise if datamodule is not None else None) or pl_module.hparams.get("noise") or NoNoise()
    num_classes = int(pl_module.hparams.get("num_classes", 2))
    loss = None if classifier is None else classifier.loss
    if isinstance(loss, CrossEntropy):
        alpha = 0.0
    else:
        alpha = loss.alpha if isinstance(loss, (LabelSmoothing, TransitionMatrixLoss)) else None
    data = datamodule.data_name if datamodule is not None else "unknown"
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


def lsl_datamodule(trainer: pl.Trainer) -> NoisyLabelDataModule | None:
    """The trainer's data module if it is lsl's (another has none of the noisy-label views' fields)."""
    return trainer.datamodule if isinstance(trainer.datamodule, NoisyLabelDataModule) else None
