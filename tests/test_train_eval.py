"""lsl.train_eval.TrainEvalDiagnostics: the paper's denoising diagnostic against hand counts, when it logs, and
that every ``lsl fit`` (but not ``lsl validate``) logs it."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import QUICKSTART, QUIET, run_main, scalars
from lightning.pytorch.loggers import Logger
from torch import nn

from lsl.data import Digits, ImageFolder, NoisyDataset, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.module import Classifier
from lsl.noise import SymmetricNoise
from lsl.train_eval import TAGS, TrainEvalDiagnostics, denoising_metrics

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module` and is already saved.*"),
    pytest.mark.filterwarnings("ignore:.*The number of training batches.*"),
]

K = 4
# Samples 0-29 keep their true label, 30-39 are mislabelled. What the model predicts for each, in blocks:
# correctly labelled: 24 predicted right, 6 wrong; mislabelled: 5 memorised (noisy label), 3 corrected (true
# label), 2 neither.
CORRECT_RIGHT, CORRECT_WRONG, MEMORISED, CORRECTED, NEITHER = 24, 6, 5, 3, 2
N = CORRECT_RIGHT + CORRECT_WRONG + MEMORISED + CORRECTED + NEITHER
HAND = {
    "train_eval/acc_clean": (CORRECT_RIGHT + CORRECTED) / N,
    "train_eval/acc_clean_correct": CORRECT_RIGHT / (CORRECT_RIGHT + CORRECT_WRONG),
    "train_eval/acc_clean_mislabelled": CORRECTED / (MEMORISED + CORRECTED + NEITHER),
    "train_eval/memorised": MEMORISED / (MEMORISED + CORRECTED + NEITHER),
    "train_eval/acc_noisy": (CORRECT_RIGHT + MEMORISED) / N,
}


class FixedLogits(nn.Module):
    """Logits from a fixed table, one row per sample (the input is the sample's index).

    In training mode it adds a large logit to class 0, so a pass that forgets eval mode gives other numbers.
    ``bias`` only gives the optimizer a parameter; with lr 0 it stays 0.
    """

    def __init__(self, num_classes: int, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.clone())
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.table[x.long().view(-1)] + self.bias
        if self.training:
            logits = logits + 100.0 * nn.functional.one_hot(torch.zeros_like(x.long().view(-1)), logits.shape[1])
        return logits


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def train_eval(self) -> list[tuple[int, dict[str, float]]]:
        return [(step, metrics) for step, metrics in self.calls if any(tag in metrics for tag in TAGS)]


def known_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [N, K], clean and noisy labels [N] that give the block counts above."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, K, (N,), generator=generator)
    noisy = clean.clone()
    noisy[CORRECT_RIGHT + CORRECT_WRONG:] = (clean[CORRECT_RIGHT + CORRECT_WRONG:] + 1) % K
    predicted = clean.clone()
    start = CORRECT_RIGHT
    predicted[start:start + CORRECT_WRONG] = (clean[start:start + CORRECT_WRONG] + 2) % K
    start += CORRECT_WRONG
    predicted[start:start + MEMORISED] = noisy[start:start + MEMORISED]
    start += MEMORISED + CORRECTED  # the corrected ones predict their clean label, as set above
    predicted[start:] = (clean[start:] + 2) % K  # neither the true (c) nor the noisy (c + 1) label
    logits = torch.randn(N, K, generator=generator) + 5.0 * nn.functional.one_hot(predicted, K)
    return logits, clean, noisy


def index_data(root: Path, clean: torch.Tensor, noisy: torch.Tensor) -> NoisyLabelDataModule:
    """An lsl data module whose training split is the hand-made one: each sample's image is its index."""
    data = NoisyLabelDataModule(dataset=Digits(root=str(root)), noise=SymmetricNoise(0.4), noise_seed=0,
                                val_fraction=0.0, batch_size=16, eval_batch_size=7)
    # setup() builds the training split only when there is none yet, so this one is used as it is.
    data.train_set = NoisyDataset(torch.arange(N), noisy.numpy(), clean.numpy(), np.arange(N))
    return data


def fit(tmp_path: Path, train_eval: TrainEvalDiagnostics, max_epochs: int) -> RecordingLogger:
    logits, clean, noisy = known_split()
    model = Classifier(backbone=functools.partial(FixedLogits, table=logits), num_classes=K,
                       optimizer=functools.partial(torch.optim.SGD, lr=0.0), scheduler=None)
    logger = RecordingLogger()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=logger, callbacks=[train_eval],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=index_data(tmp_path, clean, noisy))
    assert model.training, "the pass must give the model back in training mode"
    return logger


def test_values_equal_the_hand_counts_at_the_end_of_fit(tmp_path: Path) -> None:
    logger = fit(tmp_path, TrainEvalDiagnostics(), max_epochs=2)
    steps_per_epoch = math.ceil(N / 16)
    [(step, metrics)] = logger.train_eval()
    assert step == 2 * steps_per_epoch
    assert set(metrics) == set(TAGS)
    for tag, value in HAND.items():
        assert metrics[tag] == pytest.approx(value, abs=1e-12), tag


def test_every_n_epochs_logs_at_those_epochs_and_once_at_the_end(tmp_path: Path) -> None:
    steps_per_epoch = math.ceil(N / 16)
    logger = fit(tmp_path, TrainEvalDiagnostics(every_n_epochs=2), max_epochs=5)
    # Epochs 2 and 4, then the end of fit after epoch 5.
    assert [step for step, _ in logger.train_eval()] == [2 * steps_per_epoch, 4 * steps_per_epoch,
                                                          5 * steps_per_epoch]
    logger = fit(tmp_path, TrainEvalDiagnostics(every_n_epochs=2), max_epochs=4)
    # The end of fit is epoch 4's step: logged once, not twice.
    assert [step for step, _ in logger.train_eval()] == [2 * steps_per_epoch, 4 * steps_per_epoch]
    for _, metrics in logger.train_eval():
        assert metrics == pytest.approx(HAND, abs=1e-12)


def test_enabled_false_logs_nothing_at_any_epoch_or_at_the_end(tmp_path: Path) -> None:
    logger = fit(tmp_path, TrainEvalDiagnostics(enabled=False, every_n_epochs=1), max_epochs=2)
    assert logger.train_eval() == []


def test_an_empty_subset_gives_nan() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    predictions = torch.tensor([0, 1, 0, 1])
    metrics = denoising_metrics(predictions, noisy=labels, clean=labels)
    assert math.isnan(metrics["train_eval/acc_clean_mislabelled"]) and math.isnan(metrics["train_eval/memorised"])
    assert metrics["train_eval/acc_clean"] == metrics["train_eval/acc_clean_correct"] == pytest.approx(0.75)
    assert metrics["train_eval/acc_noisy"] == pytest.approx(0.75)
    every_one_mislabelled = denoising_metrics(predictions, noisy=(labels + 1) % 3, clean=labels)
    assert math.isnan(every_one_mislabelled["train_eval/acc_clean_correct"])
    assert every_one_mislabelled["train_eval/acc_clean_mislabelled"] == pytest.approx(0.75)


def test_a_negative_period_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="every_n_epochs=-1"):
        TrainEvalDiagnostics(every_n_epochs=-1)


class ColourClassifier(nn.Module):
    """Predicts the class of a single-colour image from its strongest channel (red, green, blue: 0, 1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * self.scale


def test_an_image_folder_split_is_read_unaugmented_at_its_own_positions(tmp_path: Path) -> None:
    from PIL import Image

    for split, count in (("train", 10), ("val", 1)):
        for k, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
            (tmp_path / "tree" / split / f"class{k}").mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 40), colour).save(tmp_path / "tree" / split / f"class{k}" / f"{i}.png")
    data = NoisyLabelDataModule(dataset=ImageFolder(root=str(tmp_path / "tree"), image_size=32),
                                noise=SymmetricNoise(0.5), noise_seed=0, val_fraction=0.3, eval_batch_size=4)
    data.prepare_data()
    data.setup("fit")
    noisy, clean = data.train_set.noisy, data.train_set.clean
    mislabelled = int((noisy != clean).sum())
    assert len(clean) == 21 and 0 < mislabelled < 21
    random_state = torch.get_rng_state()
    metrics = TrainEvalDiagnostics.diagnostics(ColourClassifier(), data)
    # The model gets every image's true class only if each logit row meets its own sample's labels.
    assert metrics == pytest.approx({"train_eval/acc_clean": 1.0, "train_eval/acc_clean_correct": 1.0,
                                     "train_eval/acc_clean_mislabelled": 1.0, "train_eval/memorised": 0.0,
                                     "train_eval/acc_noisy": (21 - mislabelled) / 21})
    # No random crop or flip was drawn: the training RNG is where it was.
    assert torch.equal(torch.get_rng_state(), random_state)


def test_lsl_fit_logs_the_five_tags_once_and_validate_does_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    short = ["--config", QUICKSTART, *QUIET, "--trainer.limit_train_batches=5"]
    assert run_main(["fit", *short, "--trainer.max_epochs=2"]) == 0
    run = tmp_path / "logs" / "quickstart" / "version_0"
    logged = scalars(run)
    assert set(TAGS) <= set(logged)
    # Once, at the end of fit: the test after fit does not run it again.
    assert all(len(logged[tag]) == 1 for tag in TAGS)
    final = {tag: logged[tag][0] for tag in TAGS}
    assert all(0.0 <= value <= 1.0 for value in final.values()), final
    # 40% of the labels flipped: both subsets are there, and a sample is memorised or corrected, not both.
    assert final["train_eval/memorised"] + final["train_eval/acc_clean_mislabelled"] <= 1.0 + 1e-6
    assert run_main(["validate", *short, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    later = [folder for folder in (tmp_path / "logs" / "quickstart").iterdir() if folder != run]
    assert later and not any(set(TAGS) & set(scalars(folder)) for folder in later)
