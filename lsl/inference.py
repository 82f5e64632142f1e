"""Running a model over a split outside Lightning's loops: un-augmented, in eval mode, in order.

The one copy of this loop, used by the teacher pass of distillation, ``lsl estimate-t`` and the TensorBoard
views: each needs the logits of every sample of a split exactly as the test loop would see the images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lsl.data import NoisyDataset, NoisyLabelDataModule


def predict_logits(model: nn.Module, datamodule: NoisyLabelDataModule, dataset: NoisyDataset,
                   positions: Tensor | None = None, device: torch.device | None = None) -> Tensor:
    """The logits of ``model`` for the samples of ``dataset`` (those at ``positions``, or all), in order.

    The images go through ``datamodule``'s preprocessing without augmentation, in batches of its
    ``eval_batch_size``, with the model in eval mode (batch norm uses its running statistics, dropout is
    off) and gradients off; the model's own mode is restored afterwards, so this is safe in a callback
    during fit.

    Args:
        model: Maps a batch of images to logits ``[B, K]``.
        datamodule: Provides the preprocessing (normalisation, on-device decoding) of ``dataset``.
        dataset: One of the data module's splits.
        positions: Positions into ``dataset`` to run, in that order; all samples when None.
        device: Where to run; the device of the model's parameters when None.

    Returns:
        float32 logits ``[N, K]`` on ``device``.
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: the teacher's logits become targets of a loss later, and inference
        # tensors cannot be saved for backward.
        with torch.no_grad():
            logits = [model(batch.input).float() for batch in datamodule.unaugmented_batches(dataset, device, positions)]
    finally:
        model.train(was_training)
    return torch.cat(logits)


class CollectedPredictions:
    """The logits and clean targets of one pass of Lightning's test loop, kept batch by batch and gathered from
    every DDP rank at its end: what :class:`~lsl.temperature_scaling.TemperatureScaling` and the views measure,
    the same predictions ``test/*`` was computed on (``Classifier.test_step`` returns its logits)."""

    def __init__(self) -> None:
        self._logits: list[Tensor] = []
        self._targets: list[Tensor] = []

    def __bool__(self) -> bool:
        return bool(self._logits)

    def add(self, logits: Tensor, targets: Tensor) -> None:
        """Keep one batch: logits ``[B, K]`` (float32) and clean targets ``[B]``."""
        self._logits.append(logits.detach().float())
        self._targets.append(targets.detach())

    def gather(self, module: pl.LightningModule) -> tuple[Tensor, Tensor]:
        """All ranks' logits ``[N, K]`` and targets ``[N]`` on the CPU, on every rank (a collective step: every
        rank must call it); what was kept is dropped."""
        logits = module.all_gather(torch.cat(self._logits))
        targets = module.all_gather(torch.cat(self._targets))
        self._logits, self._targets = [], []
        if logits.dim() == 3:
            # DDP stacks one block per rank, also when it runs a single process; other strategies do not.
            logits, targets = logits.flatten(0, 1), targets.flatten(0, 1)
        return logits.cpu(), targets.long().cpu()
