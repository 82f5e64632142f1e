"""The paper's denoising diagnostic: the trained model, in eval mode, over the whole noisy training split.

Lukasik et al. (ICML 2020) measure denoising after training, with the final model run over the
training set without augmentation, against the true labels: overall, on the correctly labelled samples and on
the mislabelled ones (39.92 / 48.58 / 53.01 % on the mislabelled ones for LS with alpha 0 / 0.1 / 0.2). The
in-training ``train/*`` metrics cannot give these numbers: they average over an epoch of augmented batches
while the weights move, with batch norm in training mode. :class:`TrainEvalDiagnostics` logs them as
``train_eval/*``; docs/metrics.md says what each one means.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import Tensor

from lsl.data import InMemorySource, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.inference import predict_logits

PREFIX = "train_eval"
TAGS = tuple(f"{PREFIX}/{name}" for name in
             ("acc_clean", "acc_clean_correct", "acc_clean_mislabelled", "memorised", "acc_noisy"))


def denoising_metrics(predictions: Tensor, noisy: Tensor, clean: Tensor) -> dict[str, float]:
    """The five ``train_eval/*`` values of predicted classes against noisy and true labels (all ``[N]``).

    A share over an empty subset (no mislabelled samples, say) is NaN, not 0: nothing was measured.
    """
    mislabelled = noisy != clean

    def share(hits: Tensor, mask: Tensor | None = None) -> float:
        hits = hits if mask is None else hits[mask]
        return hits.double().mean().item() if hits.numel() else math.nan

    right_class = predictions == clean
    return {
        f"{PREFIX}/acc_clean": share(right_class),
        f"{PREFIX}/acc_clean_correct": share(right_class, ~mislabelled),
        f"{PREFIX}/acc_clean_mislabelled": share(right_class, mislabelled),
        f"{PREFIX}/memorised": share(predictions == noisy, mislabelled),
        f"{PREFIX}/acc_noisy": share(predictions == noisy),
    }


class TrainEvalDiagnostics(pl.Callback):
    """Logs the denoising diagnostic of the paper as ``train_eval/*`` at the end of fit (and every n epochs).

    The model runs over every sample of the noisy training split (not the validation part), without
    augmentation and in eval mode, through :func:`lsl.inference.predict_logits`; its predictions are compared
    with the true and the noisy labels:

    - ``train_eval/acc_clean``: accuracy against the true labels, all samples;
    - ``train_eval/acc_clean_correct``: the same on the samples whose noisy label is right;
    - ``train_eval/acc_clean_mislabelled``: the same on the mislabelled samples (how many the model corrects);
    - ``train_eval/memorised``: share of the mislabelled samples predicted as their noisy label;
    - ``train_eval/acc_noisy``: accuracy against the noisy labels, all samples.

    A subset with no samples gives NaN. The values go to every logger of the run at the trainer's global step.
    Only ``fit`` runs it (``test``, ``validate`` and ``predict`` have no training loop); a data module other
    than lsl's ``NoisyLabelDataModule`` has no true labels, and then nothing is logged.

    Under DDP every rank runs the same pass over the whole split (it is deterministic and takes no collective
    step, so no rank waits for another) and only rank 0 logs.

    ```yaml
    train_eval:
      enabled: true
      every_n_epochs: 0
    ```

    Args:
        enabled: Run the diagnostic; false skips it (a pass over every training image, long on a large
            training set and a CPU) and the run logs no ``train_eval/*``.
        every_n_epochs: Also log at the end of every n-th training epoch (after that epoch's validation);
            0 logs only once, at the end of fit.
    """

    def __init__(self, enabled: bool = True, every_n_epochs: int = 0) -> None:
        if every_n_epochs < 0:
            raise ConfigError(f"every_n_epochs={every_n_epochs} must be 0 (only at the end of fit) or a positive "
                              "number of epochs")
        self.enabled = enabled
        self.every_n_epochs = every_n_epochs
        self._logged_step: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self.log_diagnostics(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_train_end, not on_fit_end: the loggers are still open here and are finalised after it.
        self.log_diagnostics(trainer, pl_module)

    def log_diagnostics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        """Run the pass and log its values once per global step; returns them (None if nothing was run)."""
        datamodule = trainer.datamodule
        if not self.enabled or not isinstance(datamodule, NoisyLabelDataModule) or datamodule.train_set is None:
            return None
        step = trainer.global_step
        if step == self._logged_step:  # the last every_n_epochs epoch is also the end of fit
            return None
        self._logged_step = step
        metrics = self.diagnostics(pl_module, datamodule)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        return metrics

    @staticmethod
    def diagnostics(model: torch.nn.Module, datamodule: NoisyLabelDataModule) -> dict[str, float]:
        """The ``train_eval/*`` values of ``model`` on ``datamodule``'s (set up) training split."""
        train_set = datamodule.train_set
        if isinstance(datamodule.dataset, InMemorySource):
            # Augmentation happens on the fetched batch, and predict_logits leaves it out.
            logits = predict_logits(model, datamodule, train_set)
        else:
            # An ImageFolder training split crops and flips while it decodes: read the same samples unaugmented.
            # Its positions are the training split's sample indices.
            logits = predict_logits(model, datamodule, datamodule.unaugmented_training_samples(),
                                    train_set.indices.cpu())
        predictions = logits.argmax(dim=1).cpu()
        return denoising_metrics(predictions, train_set.noisy.cpu(), train_set.clean.cpu())
