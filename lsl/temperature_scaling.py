"""Post-hoc temperature scaling at test time: three temperatures fitted on the validation split, and the test
set's calibration after each.

:mod:`lsl.temperature` fits the temperatures; :class:`TemperatureScaling` is the callback the ``lsl`` command
adds to every run. Before the test set is seen, it runs the model over the (noisy) validation split and fits

- ``noisy``: the NLL of the noisy validation labels (what a practitioner has);
- ``noise_aware``: the forward-corrected NLL of the same noisy labels, with the data's transition matrix or an
  estimated one (``transition``: the ``.npy`` of ``lsl estimate-t``);
- ``oracle``: the NLL of the *clean* validation labels, a reference no practitioner has (known here because
  lsl made the noise, or from CIFAR-N's clean labels); never the test set.

Then, over the same test predictions as ``test/ece`` and ``test/nll``, it logs for each fit ``name``:
``test/temperature_<name>``, ``test/ece_scaled_<name>`` and ``test/nll_scaled_<name>`` (``test_best/...`` for
the best-validation checkpoint). Accuracy does not change with a temperature, so it is not logged again.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from lsl.calibration import expected_calibration_error
from lsl.data import Batch, NoisyLabelDataModule
from lsl.errors import ConfigError, warn
from lsl.inference import CollectedPredictions, predict_logits
from lsl.module import TEST_PREFIX, Classifier
from lsl.noise import load_transition_matrix
from lsl.temperature import (
    DEFAULT_BOUNDS,
    check_bounds,
    fit_temperature_noise_aware,
    fit_temperature_noisy,
    fit_temperature_oracle,
    scaled_log_probabilities,
)

FITS = ("noisy", "noise_aware", "oracle")
BOUND_TOLERANCE = 1e-6  # a fit this close (relatively) to a bound stopped at the bound


def scaled_metrics(logits: Tensor, targets: Tensor, temperature: float, bins: int) -> dict[str, float]:
    """``ece`` and ``nll`` of ``softmax(logits / temperature)`` against ``targets`` (float64; 1.0 is the raw model).

    Args:
        logits: ``[N, K]`` test logits.
        targets: ``[N]`` clean test labels.
        temperature: ``t > 0``.
        bins: Equal-width confidence bins of the ECE (:mod:`lsl.calibration`).
    """
    log_probabilities = torch.from_numpy(scaled_log_probabilities(logits, temperature))
    targets = targets.cpu().long()
    confidence, predictions = log_probabilities.exp().max(dim=1)
    ece = expected_calibration_error(confidence, predictions == targets, bins).item()
    nll = -log_probabilities[torch.arange(len(targets)), targets].mean().item()
    return {"ece": ece, "nll": nll}


class TemperatureScaling(pl.Callback):
    """Fits three temperatures on the validation split when testing starts, and logs the test set's ECE and NLL
    after each (Guo et al., ICML 2017; the noise-aware fit is the forward-corrected NLL of Patrini et al.,
    CVPR 2017). See :mod:`lsl.temperature` for the fits and docs/metrics.md for what each one means.

    Runs at every test: after ``lsl fit`` (``test/`` and ``test_best/``) and in ``lsl test --ckpt_path RUN.ckpt``
    on any existing checkpoint. The validation split is the data's (``data.init_args.val_fraction`` > 0, which the
    ``lsl`` command checks before anything runs); with a data module other than lsl's nothing is fitted.

    After a test, :attr:`temperatures` holds the fitted values, ``{"noisy": t, "noise_aware": t, "oracle": t}``
    (the TensorBoard reliability diagram draws each); it is empty when nothing was fitted.

    ```yaml
    temperature:
      enabled: true
      transition: null        # or logs/run/estimated_T.npy from `lsl estimate-t`
      bounds: [1.0e-3, 1.0e+4]
    ```

    Args:
        enabled: Fit and log the temperatures at every test; false switches them off (and allows
            ``val_fraction: 0``).
        transition: The transition matrix of the noise-aware fit: a ``.npy``, ``.csv`` or ``.txt`` file (an
            estimate, e.g. ``lsl estimate-t``'s output); None uses the data's own T (the noise model's; for
            human noise, the one measured from the clean labels).
        bounds: The interval ``[lower, upper]`` searched for each temperature.
    """

    def __init__(self, enabled: bool = True, transition: str | None = None,
                 bounds: tuple[float, float] = DEFAULT_BOUNDS) -> None:
        lower, upper = check_bounds(bounds)
        if not lower < 1.0 < upper:
            raise ConfigError(f"temperature.bounds={list(bounds)} must hold t = 1 (the unscaled model) inside: "
                              "0 < lower < 1 < upper, e.g. [1.0e-3, 1.0e+4]")
        self.enabled = enabled
        self.transition = transition
        self.bounds = (float(lower), float(upper))
        self.temperatures: dict[str, float] = {}
        self._test_predictions = CollectedPredictions()

    def check_data(self, datamodule: object) -> None:
        """Refuse, before anything runs, data the fits cannot use: no validation split, or a ``transition``
        file that is missing or does not fit the data's classes."""
        if not self.enabled or not isinstance(datamodule, NoisyLabelDataModule):
            return
        if datamodule.val_fraction == 0:
            raise ConfigError("temperature scaling is fitted on the validation split, and data.init_args.val_fraction "
                              "is 0: hold one out (val_fraction: 0.1), or switch it off with "
                              "--temperature.enabled=false")
        if self.transition is not None:
            load_transition_matrix(self.transition, datamodule.num_classes)

    # ---------------------------------------------------------------------------------------------- hooks

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.temperatures, self._test_predictions = {}, CollectedPredictions()
        datamodule = trainer.datamodule
        if not self.enabled or not isinstance(datamodule, NoisyLabelDataModule):
            return
        if datamodule.val_set is None:
            datamodule.setup("validate")  # `lsl test` sets up the test split only
        if datamodule.val_set is None:
            return  # val_fraction 0 outside the `lsl` command, which refuses it
        self.temperatures = self.fit(pl_module, datamodule)
        lower, upper = self.bounds
        at_bound = {name: t for name, t in self.temperatures.items()
                    if t <= lower * (1 + BOUND_TOLERANCE) or t >= upper * (1 - BOUND_TOLERANCE)}
        if at_bound:
            # Not a minimum but the edge of the search: the scaled ECE is that of the bound, not of the fit.
            fits = ", ".join(f"{name} t = {t:g}" for name, t in at_bound.items())
            warn(f"temperature scaling: {fits} is at the edge of temperature.bounds {list(self.bounds)}, so the best "
                 "temperature lies beyond it (a model with huge logits, see test/logit_norm, wants a huge t): widen "
                 "--temperature.bounds, and read test/ece_scaled_* of these fits as the bound's")

    def fit(self, model: torch.nn.Module, datamodule: NoisyLabelDataModule) -> dict[str, float]:
        """The three temperatures of ``model`` on ``datamodule``'s (set up) validation split."""
        val = datamodule.val_set
        # Every DDP rank fits on the whole split: deterministic, no collective step, the same three numbers.
        logits = predict_logits(model, datamodule, val).cpu()
        noisy, clean = val.noisy.cpu(), val.clean.cpu()
        if self.transition is not None:
            transition = load_transition_matrix(self.transition, datamodule.num_classes)
        else:
            transition = datamodule.transition_matrix
        return {"noisy": fit_temperature_noisy(logits, noisy, self.bounds),
                "noise_aware": fit_temperature_noise_aware(logits, noisy, np.asarray(transition), self.bounds),
                "oracle": fit_temperature_oracle(logits, clean, self.bounds)}

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Tensor | None,
                          batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.temperatures and isinstance(outputs, Tensor):  # Classifier.test_step returns its logits
            self._test_predictions.add(outputs, batch.clean_target)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.temperatures or not self._test_predictions:
            return
        # The same predictions as test/ece: under DDP each rank tested its shard, gathered here on every rank.
        logits, targets = self._test_predictions.gather(pl_module)
        prefix = pl_module.test_prefix if isinstance(pl_module, Classifier) else TEST_PREFIX
        bins = pl_module.test_metrics["ece"].bins if isinstance(pl_module, Classifier) else 15
        values = {}
        for name, temperature in self.temperatures.items():
            scaled = scaled_metrics(logits, targets, temperature, bins)
            values[f"{prefix}temperature_{name}"] = temperature
            values[f"{prefix}ece_scaled_{name}"] = scaled["ece"]
            values[f"{prefix}nll_scaled_{name}"] = scaled["nll"]
        # Every rank computed the same numbers from the same gathered predictions: nothing to reduce.
        pl_module.log_dict(values, on_epoch=True, sync_dist=False, rank_zero_only=True)
