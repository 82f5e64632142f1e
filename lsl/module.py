"""The classifier: one LightningModule, a pluggable loss strategy, and the noisy-label metrics."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterable, Iterator, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

from lsl.calibration import ExpectedCalibrationError
from lsl.data import Batch, NoisyLabelDataModule
from lsl.diagnostics import COLLAPSE_SHARE, collapsed
from lsl.errors import ConfigError, warn
from lsl.losses import CrossEntropy, TransitionMatrixLoss
from lsl.models import resnet32
from lsl.noise import NoiseModel, NoNoise

TEST_PREFIX = "test/"
OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def paper_sgd(params: Iterable) -> torch.optim.Optimizer:
    """The paper's optimizer: SGD, Nesterov momentum 0.9, lr 0.1, weight decay 1e-4."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)


def paper_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's schedule (He et al. 2016): lr x0.1 at steps 32k and 48k (of 64k)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[32_000, 48_000], gamma=0.1)


class NoisyTrainingMetrics(Metric):
    """The training-set metrics of a noisy-label run, counted once per epoch from the predictions kept.

    Over every sample seen: ``acc_noisy`` and ``acc_clean`` (prediction equals the noisy / the true label);
    over the mislabelled ones, ``memorised`` and ``corrected`` (the same, NaN when none was seen); and
    ``logit_norm``, the mean L2 norm of the logits. ``update`` only queues each batch (no tensor op: small
    per-batch ops are a visible share of a small CNN's CPU step); every ``chunk`` batches, and before a
    DDP sync or ``compute``, the queue is reduced to predictions and logit norms in two ops.

    Until ``compute`` (once per epoch) the metric keeps 28 bytes per sample seen, on the logits' device.

    Args:
        prefix: Prepended to each metric's name.
        chunk: Batches queued before their logits are reduced (bounds the memory the logits hold).
    """

    full_state_update = False
    NAMES = ("acc_noisy", "acc_clean", "memorised", "corrected", "logit_norm")

    def __init__(self, prefix: str = "train/", chunk: int = 32) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk={chunk}: at least one batch must be queued before it is reduced")
        self.prefix, self.chunk = prefix, chunk
        self._queued: list[tuple[Tensor, Tensor, Tensor]] = []
        for name in ("predictions", "logit_norms", "noisy_targets", "clean_targets"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, noisy_target: Tensor, clean_target: Tensor) -> None:
        self._queued.append((logits, noisy_target, clean_target))
        if len(self._queued) >= self.chunk:
            self._reduce_queue()

    def sync(self, *args, **kwargs) -> None:
        self._reduce_queue()
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        self._queued = []
        super().reset()

    def _reduce_queue(self) -> None:
        if not self._queued:
            return
        logits, noisy, clean = (torch.cat(parts) for parts in zip(*self._queued))
        self._queued = []
        self.predictions.append(logits.argmax(dim=1))
        self.logit_norms.append(logits.float().norm(dim=1))
        self.noisy_targets.append(noisy)
        self.clean_targets.append(clean)

    def compute(self) -> dict[str, Tensor]:
        self._reduce_queue()
        if len(self.predictions) == 0:  # a list before a DDP sync, a tensor after it
            return {self.prefix + name: torch.tensor(float("nan")) for name in self.NAMES}
        predictions, logit_norms, noisy, clean = (dim_zero_cat(state) for state in (
            self.predictions, self.logit_norms, self.noisy_targets, self.clean_targets))
        fits_noisy, fits_clean, mislabelled = predictions == noisy, predictions == clean, noisy != clean
        values = {"acc_noisy": fits_noisy.double().mean(), "acc_clean": fits_clean.double().mean(),
                  "memorised": fits_noisy[mislabelled].double().mean(),
                  "corrected": fits_clean[mislabelled].double().mean(),
                  "logit_norm": logit_norms.double().mean()}
        return {self.prefix + name: value.float() for name, value in values.items()}


class TopClassShare(Metric):
    """The share of predictions that go to the most-predicted class: 1/K for a balanced, healthy model on
    balanced data, near 1 for a model that collapsed to one class (see :mod:`lsl.diagnostics`).

    Args:
        num_classes: Number of classes K.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Tensor) -> None:
        self.counts += torch.bincount(predictions, minlength=len(self.counts))

    def compute(self) -> Tensor:
        return (self.counts.max() / self.counts.sum().clamp(min=1)).float()


class Classifier(pl.LightningModule):
    """An image classifier trained on noisy labels with an injected loss strategy.

    Logs, slash-namespaced for TensorBoard:

    - ``train/loss`` (the strategy's loss), ``train/lr``;
    - ``{train,val}/acc_noisy`` and ``{train,val}/acc_clean``: accuracy against the noisy and the true labels;
    - ``train/memorised`` and ``train/corrected``: on the mislabelled training samples, the share predicted
      as their noisy label and as their true label (measured on the augmented batches as they are trained;
      NaN when no sample is mislabelled);
    - ``{train,val,test}/logit_norm``: mean L2 norm of the logits (label smoothing shrinks it);
    - ``val/nll`` (against the noisy labels), ``test/acc``, ``test/nll`` and ``test/ece`` (15 bins);
    - ``test_best/*``: the same test metrics for the checkpoint with the best ``val/acc_noisy``, when ``lsl fit``
      keeps one (``--checkpoint.monitor=val/acc_noisy``).

    ```yaml
    model:
      class_path: lsl.Classifier
      init_args:
        backbone:
          class_path: lsl.models.CifarResNet
          init_args:
            depth: 32
        loss:
          class_path: lsl.losses.LabelSmoothing
          init_args:
            alpha: 0.1
    ```

    Args:
        backbone: Builds the network from the number of classes (any class of :mod:`lsl.models`, or any
            callable ``num_classes -> nn.Module``).
        loss: The loss strategy, ``forward(logits, target) -> scalar``; None is cross-entropy.
        optimizer: Builds the optimizer from the parameters; default: the paper's Nesterov SGD.
        scheduler: Builds the LR scheduler from the optimizer; default: the paper's steps at 32k and 48k.
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
        num_classes: Number of classes K; linked from the data by the CLI.
        noise: The data's noise model; linked from the data by the CLI. Its transition matrix (the true T)
            goes to a loss that needs one and was given none of its own. None means clean labels.
        ece_bins: Bins of the expected calibration error.
        channels_last: Keep the network's weights and each input batch in channels-last (NHWC) memory format,
            which convolutions on tensor-core GPUs and on oneDNN CPUs run faster in.
        compile: Compile the network's forward with ``torch.compile`` (the first steps are slow while it
            compiles; needs a C compiler on a CPU).
    """

    def __init__(
        self,
        backbone: Callable[[int], nn.Module] = resnet32,
        loss: nn.Module | None = None,
        optimizer: OptimizerFactory = paper_sgd,
        scheduler: SchedulerFactory | None = paper_schedule,
        scheduler_interval: Literal["step", "epoch"] = "step",
        num_classes: int = 10,
        noise: NoiseModel | None = None,
        ece_bins: int = 15,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        with warnings.catch_warnings():
            # Lightning suggests ignoring nn.Module arguments; the loss must stay, so checkpoints rebuild it.
            warnings.filterwarnings("ignore", message="Attribute 'loss' is an instance of `nn.Module`")
            self.save_hyperparameters()
        self.network = backbone(num_classes)
        self.channels_last = channels_last
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        if compile:
            self.network.compile()  # in place, so the checkpoint keys stay those of the plain network
        self.loss = loss if loss is not None else CrossEntropy()
        if isinstance(self.loss, TransitionMatrixLoss):  # takes the data's T, or checks its own alpha against it
            self.loss.use_data_transition_matrix((noise or NoNoise()).transition_matrix(num_classes))
        # One call on dummy logits finds a loss that does not fit K (a 3x3 T for 10 classes, a singular T)
        # now, before Lightning writes a run directory, instead of at the first training step.
        self.loss(torch.zeros(1, num_classes), torch.zeros(1, dtype=torch.long))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._check_optimizer()
        self._build_metrics(num_classes, ece_bins)
        self.data_fingerprint: dict | None = None  # read back from a checkpoint: see on_save_checkpoint
        self._test_prefix = TEST_PREFIX

    def _check_optimizer(self) -> None:
        """Build the optimizer and scheduler once on the fresh parameters, so that a bad value (a negative
        learning rate, a momentum above 1) is refused now, before Lightning writes a run directory."""
        errors = (ValueError, TypeError, ArithmeticError)
        try:
            optimizer = self.optimizer_factory(self.parameters())
        except errors as error:
            raise ConfigError(f"{_described('optimizer', self.hparams.optimizer)} cannot be built: {error}: fix "
                              "its init_args") from error
        if self.scheduler_factory is None:
            return
        try:
            scheduler = self.scheduler_factory(optimizer)
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):  # its step needs a metric
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": none is taken
                    scheduler.step()  # a cosine schedule with T_max 0 divides by zero here, not before
            rates = [group["lr"] for group in optimizer.param_groups]
            if not all(math.isfinite(rate) and rate >= 0 for rate in rates):
                raise ValueError(f"its first step gives the learning rates {rates}")
        except errors as error:
            raise ConfigError(f"{_described('scheduler', self.hparams.scheduler)} cannot be used: "
                              f"{type(error).__name__}: {error}: fix its init_args") from error

    def _build_metrics(self, num_classes: int, ece_bins: int) -> None:
        # No argument validation and no NaN scans: each would cost a host sync on every update.
        def mean() -> MeanMetric:
            return MeanMetric(nan_strategy="disable")

        def accuracy() -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, average="micro", validate_args=False)

        self.train_metrics = NoisyTrainingMetrics(prefix="train/")
        self.val_metrics = MetricCollection(
            # val/loss is a metric too: a plain self.log would record rank 0's share only under DDP.
            {"acc_noisy": accuracy(), "acc_clean": accuracy(), "nll": mean(), "logit_norm": mean(), "loss": mean()},
            prefix="val/", compute_groups=False)
        self.test_metrics = MetricCollection(
            {"acc": accuracy(), "nll": mean(), "logit_norm": mean(),
             "ece": ExpectedCalibrationError(ece_bins),
             "top_class_share": TopClassShare(num_classes)},
            prefix="test/", compute_groups=False)

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network(images)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self(batch.input)
        loss = self.training_loss(logits, batch)
        self.train_metrics.update(logits.detach(), batch.noisy_target, batch.clean_target)
        if self.writes_step_metrics():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def writes_step_metrics(self) -> bool:
        """Whether Lightning writes step metrics to the loggers after this training step: every
        ``log_every_n_steps`` optimizer steps, and when the fit is stopping (Lightning's own rule).

        Per-step values are logged only then: TensorBoard gets exactly the same points, and the other steps skip
        Lightning's per-``self.log`` bookkeeping, which is a noticeable share of a small network's step.
        """
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached (a step called by hand): there is no logger to write to
            return False
        if not trainer.log_every_n_steps:
            return False
        # global_step counts the optimizer steps taken before this one, as Lightning's logging step does.
        return (trainer.global_step + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop

    def on_train_epoch_end(self) -> None:
        # Once per epoch rather than a log_dict every step: each self.log call costs Lightning bookkeeping
        # (benchmarks/throughput.py measures it). An epoch end that trained no batch logs nothing: Lightning ends
        # the restored epoch of a resumed max_steps fit a second time (lsl.resume.RestoreAware), and its values,
        # logged before the kill, would now be NaN.
        if self.train_metrics.update_called:
            self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def training_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """The loss to minimise on a training batch: the strategy's loss on the noisy labels."""
        return self.loss(logits, batch.noisy_target)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self(batch.input)
        predictions = logits.argmax(dim=1)
        self.val_metrics["acc_noisy"].update(predictions, batch.noisy_target)
        self.val_metrics["acc_clean"].update(predictions, batch.clean_target)
        self.val_metrics["nll"].update(F.cross_entropy(logits.float(), batch.noisy_target, reduction="none"))
        self.val_metrics["logit_norm"].update(logits.float().norm(dim=1))
        # One value per sample, so that the epoch mean weights uneven batches by size (with nan_strategy
        # "disable", MeanMetric ignores a `weight` argument).
        self.val_metrics["loss"].update(self.loss(logits, batch.noisy_target).expand(len(batch.noisy_target)))
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Updates the test metrics; returns the float32 logits, which callbacks (temperature scaling, the
        views) receive as ``outputs`` instead of running the model again."""
        logits = self(batch.input).float()
        predictions = logits.argmax(dim=1)
        self.test_metrics["acc"].update(predictions, batch.clean_target)
        self.test_metrics["top_class_share"].update(predictions)
        self.test_metrics["nll"].update(F.cross_entropy(logits, batch.clean_target, reduction="none"))
        self.test_metrics["logit_norm"].update(logits.norm(dim=1))
        self.test_metrics["ece"].update(logits.softmax(dim=1), batch.clean_target)
        self.log_dict({self.test_prefix + name: metric for name, metric in self.test_metrics.items(keep_base=True)},
                      on_epoch=True)
        return logits

    @property
    def test_prefix(self) -> str:
        """The prefix of the logged test metrics: ``test/``, or the one :meth:`testing_as` set."""
        return self._test_prefix

    @contextlib.contextmanager
    def testing_as(self, prefix: str) -> Iterator[None]:
        """Log the test metrics under ``prefix`` (``lsl fit`` tests its best-validation checkpoint as
        ``test_best/``) inside the ``with`` block; ``test/`` again after it. The TensorBoard views are drawn
        for ``test/`` only."""
        self._test_prefix = prefix
        try:
            yield
        finally:
            self._test_prefix = TEST_PREFIX

    def on_test_epoch_end(self) -> None:
        share = self.test_metrics["top_class_share"].compute().item()  # synced, and cached for the log
        if collapsed(share):
            # A finished run that is not a result: loud on stderr; `lsl report` marks it from the logged share.
            warn(f"the model collapsed: {share:.0%} of the {self.test_prefix.rstrip('/')} predictions are one "
                 f"class (>= {COLLAPSE_SHARE:.0%}), so its accuracy is about chance. An unbounded loss (backward "
                 "correction, negative smoothing) does this at a high learning rate: lower the lr or alpha, or "
                 "clip the gradients (--trainer.gradient_clip_val=1.0)")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Class probabilities, with the sample indices and clean targets they belong to."""
        return {"probabilities": self(batch.input).float().softmax(dim=1), "index": batch.index,
                "target": batch.clean_target}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Which noisy labels these weights learnt from, so that a distillation student can check its teacher.
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, NoisyLabelDataModule):
            checkpoint["lsl_data"] = datamodule.fingerprint()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_fingerprint = checkpoint.get("lsl_data")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}


def _described(name: str, factory: object) -> str:
    """``model.init_args.optimizer (torch.optim.SGD, lr=-0.1, ...)`` from a config's class_path and init_args."""
    if isinstance(factory, dict) and "class_path" in factory:
        arguments = ", ".join(f"{key}={value!r}" for key, value in (factory.get("init_args") or {}).items()
                              if value is not None)
        return f"model.init_args.{name} ({factory['class_path']}{', ' + arguments if arguments else ''})"
    return f"model.init_args.{name} ({getattr(factory, '__name__', factory)})"
