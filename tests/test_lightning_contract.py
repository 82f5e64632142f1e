"""Where lsl leans on Lightning beyond its public API, pinned: an upgrade that changes it fails here, loudly,
instead of changing what lsl logs or resumes from without a word. ``pyproject.toml`` bounds Lightning to the
minor version these tests ran on; a wider bound needs them to pass on the new one first.

Kept private uses (each with its reason in the code): ``ResumableCheckpoint`` (lsl/resume.py) calls four private
``ModelCheckpoint`` methods to write ``last.ckpt`` at every epoch end, which Lightning 2.6 no longer does, and sets
the fit loop's ``epoch_loop._batches_that_stepped`` (the step loggers write at) back after the second ending of a
restored epoch that a ``max_steps`` fit goes through on resume.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lsl.data import Batch, Digits, NoisyLabelDataModule
from lsl.models import SmallCNN
from lsl.module import Classifier
from lsl.noise import SymmetricNoise
from lsl.resume import ResumableCheckpoint

# name -> parameters, as lsl/resume.py calls them
MODEL_CHECKPOINT_PRIVATE = {
    "_should_save_on_train_epoch_end": ["self", "trainer"],
    "_should_skip_saving_checkpoint": ["self", "trainer"],
    "_save_last_checkpoint": ["self", "trainer", "monitor_candidates"],
    "_monitor_candidates": ["self", "trainer"],
}


@pytest.mark.parametrize("name", sorted(MODEL_CHECKPOINT_PRIVATE))
def test_the_private_model_checkpoint_methods_resume_relies_on_are_there(name: str) -> None:
    method = getattr(ModelCheckpoint, name, None)
    assert method is not None, f"Lightning {version('lightning')} has no ModelCheckpoint.{name}: fix lsl/resume.py"
    assert list(inspect.signature(method).parameters) == MODEL_CHECKPOINT_PRIVATE[name], (
        f"Lightning {version('lightning')} changed ModelCheckpoint.{name}{inspect.signature(method)}: "
        "fix ResumableCheckpoint in lsl/resume.py")


class RecordsLoggingDecisions(Classifier):
    """Records, at every training step, lsl's public-API answer and Lightning's own (private) one."""

    def __init__(self, **arguments) -> None:
        super().__init__(**arguments)
        self.decisions: list[tuple[int, bool, bool]] = []

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        lightning_says = self.trainer._logger_connector.should_update_logs  # the rule writes_step_metrics mirrors
        self.decisions.append((self.trainer.global_step, self.writes_step_metrics(), lightning_says))
        return super().training_step(batch, batch_idx)


def _fit(tmp_path: Path, epochs: int, by_steps: bool, ckpt_path: str | None = None,
         **trainer_options) -> RecordsLoggingDecisions:
    """Train ``epochs`` epochs (counted in optimizer steps when ``by_steps``), checkpointing as ``lsl fit`` does."""
    model = RecordsLoggingDecisions(backbone=SmallCNN, num_classes=10, scheduler=None)
    data = NoisyLabelDataModule(dataset=Digits(root=str(tmp_path / "data")), noise=SymmetricNoise(0.2), noise_seed=0,
                                train_subset=300, val_fraction=0.2, batch_size=32)
    steps_per_epoch = 8 // trainer_options.get("accumulate_grad_batches", 1)  # 240 training images, batches of 32
    limit = {"max_epochs": None, "max_steps": epochs * steps_per_epoch} if by_steps else {"max_epochs": epochs}
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=3,
                         callbacks=[ResumableCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
                         **limit, **trainer_options)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=False)  # hparams hold lsl objects
    assert trainer.current_epoch == epochs
    return model


@pytest.mark.parametrize("by_steps", [False, True], ids=["max_epochs", "max_steps"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_step_metrics_are_logged_exactly_when_lightning_writes_them_also_after_a_resume(
        tmp_path: Path, accumulate: int, by_steps: bool) -> None:
    # A max_steps fit resumed from an epoch-end checkpoint ends the restored epoch again, and Lightning's count of
    # batches that stepped (its logging step) comes out one ahead unless ResumableCheckpoint sets it back.
    first = _fit(tmp_path, 1, by_steps, accumulate_grad_batches=accumulate)
    resumed = _fit(tmp_path, 2, by_steps, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"),
                   accumulate_grad_batches=accumulate)
    decisions = first.decisions + resumed.decisions
    assert resumed.decisions and resumed.decisions[0][0] > 0  # the second fit did resume
    assert {ours for _, ours, _ in decisions} == {True, False}  # the comparison tells the two answers apart
    assert [(step, ours) for step, ours, _ in decisions] == [(step, theirs) for step, _, theirs in decisions]
