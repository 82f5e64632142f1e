"""Stopping a diverging run: the first non-finite training loss or logits ends the fit with a message.

Backward correction and negative label smoothing are unbounded below, and any loss runs away with too large a
learning rate. Without this guard the run goes on for hours logging NaN and overwriting ``last.ckpt`` with NaN
weights; with it, ``lsl`` exits with status 2 and names the step, the loss and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lsl.errors import ConfigError
from lsl.losses import LabelSmoothing, TransitionMatrixLoss
from lsl.module import Classifier


class TrainingDiverged(ConfigError):
    """The training loss or logits became non-finite at optimizer step ``step`` (None: on another process)."""

    def __init__(self, message: str, step: int | None) -> None:
        super().__init__(message)
        self.step = step


class _Step(NamedTuple):
    step: int
    epoch: int
    batch_idx: int
    loss: Tensor | None
    logits_finite: Tensor | None

    def finite(self) -> Tensor:
        flags = [torch.isfinite(self.loss).all()] if self.loss is not None else []
        flags += [self.logits_finite] if self.logits_finite is not None else []
        return torch.stack(flags).all() if flags else torch.tensor(True)


class DivergenceGuard(Callback):
    """Stops training at the first step whose loss or logits are NaN or infinite, naming the step.

    The logits are what the LightningModule's ``forward`` returns while training (``self(x)`` in
    ``training_step``), so the guard covers :class:`lsl.Classifier` and every subclass, the distillation
    student included. Checks are on the device; only their verdict comes to the host. The loss Lightning
    hands the callback is divided by ``accumulate_grad_batches``, which leaves NaN and infinity as they are.

    ```yaml
    divergence:
      check_every_n_steps: 1
    ```

    Args:
        check_every_n_steps: Bring the verdict to the host every this many optimizer steps. Each check waits
            for the GPU to finish the step (a host sync); 1 adds no wait on a CPU, and on a GPU one host sync
            per step, where Lightning's progress bar already syncs every step. A larger value defers it: the
            first bad step is still the one named, the run stops at most this many steps later, and no checkpoint is ever
            written from a non-finite state, because every checkpoint save checks first.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ConfigError(f"check_every_n_steps={check_every_n_steps!r} must be a positive integer: "
                              "1 checks every step")
        self.check_every_n_steps = check_every_n_steps
        self._pending: list[_Step] = []
        self._step = 0
        self._logits_finite: Tensor | None = None
        self._hook: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending = []
        self._hook = pl_module.register_forward_hook(self._record_logits)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _record_logits(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and isinstance(output, Tensor) and output.is_floating_point():
            self._logits_finite = torch.isfinite(output.detach()).all()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step
        self._logits_finite = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        loss = loss.detach() if isinstance(loss, Tensor) else None
        self._pending.append(_Step(self._step, trainer.current_epoch, batch_idx, loss, self._logits_finite))
        if len(self._pending) >= self.check_every_n_steps:
            self._check(trainer, pl_module, across_processes=True)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, across_processes=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, across_processes=True)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Local only: Lightning's SLURM signal handler saves on rank 0 alone, where a collective would hang.
        self._check(trainer, pl_module, across_processes=False)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, across_processes: bool) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = [record.finite() for record in pending]
        finite = torch.stack([flag.to(flags[-1].device) for flag in flags])
        bad = (~finite).sum().float()
        if across_processes:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")  # every process stops at the same step
        if bad.item() == 0:  # the one host sync of a check
            return
        first = next((record for record, ok in zip(pending, finite.tolist()) if not ok), None)
        raise TrainingDiverged(_message(trainer, pl_module, first, pending), first.step if first else None)


def _message(trainer: pl.Trainer, pl_module: pl.LightningModule, first: _Step | None, pending: list[_Step]) -> str:
    loss = pl_module.loss if isinstance(pl_module, Classifier) else None
    name = f" ({type(loss).__name__})" if isinstance(loss, nn.Module) else ""
    if first is None:
        what = f"another process's training loss or logits became non-finite between steps {pending[0].step} " \
               f"and {pending[-1].step}"
    else:
        value = "not recorded" if first.loss is None else f"{first.loss.float().mean().item():g}"
        logits = first.logits_finite is not None and not bool(first.logits_finite)
        what = f"at step {first.step} (epoch {first.epoch}, batch {first.batch_idx}) the training loss{name} is " \
               f"{value}" + (" and the logits are not finite" if logits else "")
    learning_rate = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    lr = f" (now lr={learning_rate:g})" if learning_rate is not None else ""
    alpha = loss.alpha if isinstance(loss, (LabelSmoothing, TransitionMatrixLoss)) else None
    alpha = f", the alpha of the loss (now {alpha:g})" if alpha is not None else ""
    return (f"training diverged: {what}. Stopped instead of training on NaN. Lower the learning rate{lr}{alpha}, "
            "or clip gradients with --trainer.gradient_clip_val=1.0; the checkpoints written so far hold finite "
            "weights")
