"""Seconds per training epoch: a plain classifier against a distillation student, with and without the
teacher-logit cache. Same data, network, optimizer and batch size; the runs alternate, twice each.

    python benchmarks/distill_epoch.py                 # Fashion-MNIST 10k subset if installed, else digits
    python benchmarks/distill_epoch.py --epochs 3 --rounds 3

The teacher is a briefly trained classifier of the same architecture; its one pass over the training set
(cache, teacher accuracy) happens in on_fit_start and is reported separately, not in the epoch time.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from lsl import Classifier, Digits, FashionMNIST, NoisyLabelDataModule, SmallCNN, SymmetricNoise, TeacherStudentModule

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(time.perf_counter() - self.start)


def data(artifacts: Path) -> NoisyLabelDataModule:
    if FASHION_MNIST.is_dir():
        source, subset = FashionMNIST(root=str(FASHION_MNIST)), 10_000
    else:
        source, subset = Digits(root=str(artifacts)), None
    return NoisyLabelDataModule(dataset=source, noise=SymmetricNoise(0.4), val_fraction=0.0, batch_size=128,
                                artifact_dir=str(artifacts), train_subset=subset)


def fit(model: pl.LightningModule, artifacts: Path, epochs: int) -> list[float]:
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(model, datamodule=data(artifacts))
    return timer.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging intervals, once per run
    network = functools.partial(SmallCNN, width=32, hidden=128, pooled_size=7 if FASHION_MNIST.is_dir() else 2)
    optimizer = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True)
    with tempfile.TemporaryDirectory() as folder:
        artifacts = Path(folder)
        teacher = Classifier(backbone=network, num_classes=10, optimizer=optimizer, scheduler=None)
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(teacher, datamodule=data(artifacts))
        trainer.save_checkpoint(artifacts / "teacher.ckpt")

        def student(cache: bool) -> TeacherStudentModule:
            return TeacherStudentModule(teacher_checkpoint=str(artifacts / "teacher.ckpt"), backbone=network,
                                        num_classes=10, optimizer=optimizer, scheduler=None,
                                        cache_teacher_logits=cache)

        runs = {"classifier": lambda: Classifier(backbone=network, num_classes=10, optimizer=optimizer, scheduler=None),
                "student, cached teacher": lambda: student(True),
                "student, online teacher": lambda: student(False)}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for round_ in range(args.rounds):
            for name in names[round_ % 3:] + names[:round_ % 3]:  # rotate, so no run is always first
                build = runs[name]
                torch.manual_seed(0)
                seconds[name] += fit(build(), artifacts, args.epochs)[1:]  # the first epoch warms up
    baseline = statistics.median(seconds["classifier"])
    print(f"{'run':<26} {'s/epoch (median)':>17} {'vs classifier':>14}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<26} {median:>17.2f} {median / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
