"""The extension point for losses: a per-example loss of float32 log-probabilities, averaged over the batch."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LogProbLoss(nn.Module, ABC):
    """Base class of a loss that is a function of the log-probabilities ``log p = log_softmax(f)``.

    ``forward(logits, target)`` computes ``log_softmax`` in float32 with autocast off, so a loss stays finite
    under bf16/fp16 mixed precision and never takes ``log(0)`` of an underflowed probability, and returns the
    batch mean of :meth:`per_example_loss`. A subclass implements only that method, on float32 log-probabilities;
    its ``__init__`` takes typed arguments documented under ``Args:`` (the CLI builds the YAML schema and
    ``--help`` from them) and raises :class:`lsl.ConfigError` for a bad value. Losses stay pure: no logging.

    A subclass's ``Args:`` are its YAML ``init_args``; a module outside ``lsl`` must be importable when the
    run starts and when its checkpoint is loaded (``PYTHONPATH``):

    ```yaml
    loss:
      class_path: my_losses.MyLoss   # a LogProbLoss subclass
      init_args: {}
    ```
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The batch mean of :meth:`per_example_loss`, a float32 0-dim tensor.

        Args:
            logits: ``[B, K]`` logits, in any floating dtype.
            target: ``[B]`` class indices in ``[0, K)``.
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            log_probs = F.log_softmax(logits.float(), dim=-1)
            return self.per_example_loss(log_probs, target).mean()

    @abstractmethod
    def per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        """The loss of each example, ``[B]``.

        Args:
            log_probs: float32 ``[B, K]`` log-probabilities (autocast is off while this runs).
            target: ``[B]`` class indices in ``[0, K)``.
        """
