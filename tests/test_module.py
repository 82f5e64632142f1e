"""lsl.module.Classifier: metrics against hand computations, the injected loss, T linking, checkpoints,
optimizers, logged names, determinism and mixed precision (CPU, small models, real Digits data)."""

from __future__ import annotations

import csv
import functools
import math
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader
from torchmetrics.utilities import dim_zero_cat

from lsl.data import Batch, Digits, NoisyDataset, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.losses import BackwardCorrection, CrossEntropy, ForwardCorrection, LabelSmoothing
from lsl.models import SmallCNN, resnet20, resnet32
from lsl.module import Classifier, NoisyTrainingMetrics, paper_schedule, paper_sgd
from lsl.noise import PairFlipNoise, SymmetricNoise

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module` and is already saved.*"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*The number of training batches.*"),
    pytest.mark.filterwarnings("ignore:.*Skipping '.*' parameter because it is not possible to safely dump.*"),
]

K = 5  # classes of the hand-made data
N = 60  # samples of the hand-made data
CHUNKS = [(0, 23), (23, 40), (40, 60)]  # uneven batches: epoch values must be sample means, not batch means
TOL = dict(atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ helpers


class FixedLogits(nn.Module):
    """A backbone that returns a fixed row of ``table`` per sample; the input carries the sample index.

    ``bias`` (zero, trainable) only gives the optimizer a parameter; with lr 0 the logits never move.
    """

    def __init__(self, num_classes: int, table: torch.Tensor) -> None:
        super().__init__()
        assert table.shape[1] == num_classes
        self.register_buffer("table", table.clone())
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.long().view(-1)] + self.bias


def known_data(seed: int = 0):
    """Logits [N, K], clean and noisy labels [N], with the mislabelled samples' predictions steered:
    pattern (noisy, noisy, clean, neither) so memorised ~ 1/2 and corrected ~ 1/4 (told apart)."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, K, (N,), generator=generator)
    flipped = torch.rand(N, generator=generator) < 0.5
    shift = torch.randint(1, K, (N,), generator=generator)
    noisy = torch.where(flipped, (clean + shift) % K, clean)
    logits = 2.5 * torch.randn(N, K, generator=generator)
    for position, i in enumerate(flipped.nonzero().flatten().tolist()):
        kind = ("noisy", "noisy", "clean", "neither")[position % 4]
        if kind == "noisy":
            winner = int(noisy[i])
        elif kind == "clean":
            winner = int(clean[i])
        else:
            winner = min(set(range(K)) - {int(noisy[i]), int(clean[i])})
        logits[i, winner] = logits[i].max() + 0.3 + torch.rand(1, generator=generator).item()
    return logits, clean, noisy


def hand_batch(logits: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor, start: int, stop: int) -> Batch:
    index = torch.arange(start, stop)
    return Batch(index.clone(), noisy[index], clean[index], index)


def hand_ece(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): bins of max-prob confidence, sum of |acc - conf| * share."""
    probs = probs.double()
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == target).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            share = inside.double().mean()
            total += float(share * (correct[inside].mean() - confidence[inside].mean()).abs())
    return total


def hand_train_metrics(logits, clean, noisy) -> dict[str, float]:
    prediction = logits.argmax(dim=1)
    mislabelled = noisy != clean
    return {
        "acc_noisy": (prediction == noisy).double().mean().item(),
        "acc_clean": (prediction == clean).double().mean().item(),
        "memorised": (prediction[mislabelled] == noisy[mislabelled]).double().mean().item(),
        "corrected": (prediction[mislabelled] == clean[mislabelled]).double().mean().item(),
        "logit_norm": logits.double().norm(dim=1).mean().item(),
    }


def label_smoothing_by_hand(logits, target, alpha) -> torch.Tensor:
    """Per-sample (1 - alpha) * (-log p_y) + alpha * mean_j(-log p_j), float64."""
    log_probs = torch.log(torch.softmax(logits.double(), dim=1))
    true_class = -log_probs[torch.arange(len(target)), target]
    return (1 - alpha) * true_class + alpha * (-log_probs.mean(dim=1))


def cross_entropy_by_hand(logits, target) -> torch.Tensor:
    probs = torch.softmax(logits.double(), dim=1)
    return -torch.log(probs[torch.arange(len(target)), target])


def forward_correction_by_hand(logits, target, matrix) -> torch.Tensor:
    """Per-sample -log([T^T p]_y) = -log(sum_i p_i T[i, y]), float64."""
    probs = torch.softmax(logits.double(), dim=1)
    noisy_probs = probs @ torch.as_tensor(np.asarray(matrix), dtype=torch.float64)
    return -torch.log(noisy_probs[torch.arange(len(target)), target])


def hand_loader(logits, clean, noisy, batch_size=23) -> DataLoader:
    dataset = NoisyDataset(torch.arange(len(clean)), noisy.numpy(), clean.numpy(), np.arange(len(clean)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=lambda batch: batch)


def fixed_classifier(logits: torch.Tensor, **options) -> Classifier:
    options.setdefault("optimizer", functools.partial(torch.optim.SGD, lr=0.0))
    options.setdefault("scheduler", None)
    return Classifier(backbone=functools.partial(FixedLogits, table=logits), num_classes=logits.shape[1], **options)


def cpu_trainer(tmp_path: Path | None = None, **options) -> pl.Trainer:
    options.setdefault("logger", False)
    options.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, **options)


def digits_data(root: Path, noise=SymmetricNoise(0.4), **options) -> NoisyLabelDataModule:
    options.setdefault("val_fraction", 0.2)
    options.setdefault("batch_size", 64)
    options.setdefault("eval_batch_size", 256)
    return NoisyLabelDataModule(dataset=Digits(root=str(root)), noise=noise, noise_seed=0, **options)


def read_csv_metrics(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def as_float(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


@pytest.fixture(scope="module")
def data():
    logits, clean, noisy = known_data()
    expected = hand_train_metrics(logits, clean, noisy)
    # The hand-made data tells every metric apart from its look-alikes.
    assert 0.0 < expected["corrected"] < expected["memorised"] < 1.0
    assert expected["acc_noisy"] != expected["acc_clean"]
    return logits, clean, noisy


# ------------------------------------------------------------------------- 1. metrics on known logits


def test_train_metrics_match_hand_computation(data):
    logits, clean, noisy = data
    model = fixed_classifier(logits)
    for start, stop in CHUNKS:
        batch = hand_batch(logits, clean, noisy, start, stop)
        model.train_metrics.update(logits[start:stop], batch.noisy_target, batch.clean_target)
    computed = {name: value.item() for name, value in model.train_metrics.compute().items()}
    expected = hand_train_metrics(logits, clean, noisy)
    assert set(computed) == {f"train/{name}" for name in expected}
    for name, value in expected.items():
        assert computed[f"train/{name}"] == pytest.approx(value, abs=1e-5), name


def test_validation_step_metrics_match_hand_computation(data):
    logits, clean, noisy = data
    model = fixed_classifier(logits, loss=LabelSmoothing(0.3))
    model.eval()
    with torch.no_grad():
        for batch_idx, (start, stop) in enumerate(CHUNKS):
            model.validation_step(hand_batch(logits, clean, noisy, start, stop), batch_idx)
    computed = {name: value.item() for name, value in model.val_metrics.compute().items()}
    prediction = logits.argmax(dim=1)
    assert computed["val/acc_noisy"] == pytest.approx((prediction == noisy).double().mean().item(), abs=1e-6)
    assert computed["val/acc_clean"] == pytest.approx((prediction == clean).double().mean().item(), abs=1e-6)
    # val/nll is measured against the noisy labels (all a model-selection split has).
    assert computed["val/nll"] == pytest.approx(cross_entropy_by_hand(logits, noisy).mean().item(), abs=1e-5)
    assert computed["val/logit_norm"] == pytest.approx(logits.double().norm(dim=1).mean().item(), abs=1e-5)
    # val/loss is a metric of the collection (synced under DDP), the loss averaged over samples.
    assert computed["val/loss"] == pytest.approx(LabelSmoothing(0.3)(logits, noisy).item(), abs=1e-5)


def test_test_step_metrics_match_hand_computation(data):
    logits, clean, noisy = data
    probs = torch.softmax(logits.double(), dim=1)
    # Precondition: no confidence sits on a bin edge, where (lo, hi] and [lo, hi) binning would differ.
    confidence = probs.max(dim=1).values
    assert (confidence * 15 - (confidence * 15).round()).abs().min() > 1e-4
    model = fixed_classifier(logits)
    model.eval()
    with torch.no_grad():
        for batch_idx, (start, stop) in enumerate(CHUNKS):
            # The test split is clean: the model must score against clean_target, not noisy_target.
            model.test_step(hand_batch(logits, clean, noisy, start, stop), batch_idx)
    computed = {name: value.item() for name, value in model.test_metrics.compute().items()}
    assert set(computed) == {"test/acc", "test/nll", "test/ece", "test/logit_norm", "test/top_class_share"}
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
    assert computed["test/top_class_share"] == pytest.approx((counts.max() / counts.sum()).item(), abs=1e-6)
    assert computed["test/acc"] == pytest.approx((logits.argmax(1) == clean).double().mean().item(), abs=1e-6)
    assert computed["test/nll"] == pytest.approx(cross_entropy_by_hand(logits, clean).mean().item(), abs=1e-5)
    assert computed["test/ece"] == pytest.approx(hand_ece(probs, clean, 15), abs=1e-5)
    assert computed["test/logit_norm"] == pytest.approx(logits.double().norm(dim=1).mean().item(), abs=1e-5)
    # The ECE differs from the ECE against the noisy labels, so the target really is the clean one.
    assert abs(hand_ece(probs, clean) - hand_ece(probs, noisy)) > 1e-2


def test_a_collapsed_model_is_said_loudly_at_test_end(tmp_path, capsys):
    logits = torch.full((N, K), -5.0)
    logits[:, 3] = 5.0  # every sample predicted as class 3: a model that collapsed to one class
    clean = torch.arange(N) % K
    model = fixed_classifier(logits)
    (tested,) = cpu_trainer(tmp_path).test(model, dataloaders=hand_loader(logits, clean, clean), verbose=False)
    assert tested["test/top_class_share"] == pytest.approx(1.0)
    assert "lsl: warning: the model collapsed: 100% of the test predictions are one class" in capsys.readouterr().err

    healthy, _, _ = known_data()
    model = fixed_classifier(healthy)
    (tested,) = cpu_trainer(tmp_path).test(model, dataloaders=hand_loader(healthy, clean, clean), verbose=False)
    assert tested["test/top_class_share"] < 0.5 and "collapsed" not in capsys.readouterr().err


def test_ece_bins_are_configurable(data):
    logits, clean, _ = data
    probs = torch.softmax(logits.double(), dim=1)
    model = fixed_classifier(logits, ece_bins=4)
    with torch.no_grad():
        model.test_step(hand_batch(logits, clean, clean, 0, N), 0)
    ece = model.test_metrics.compute()["test/ece"].item()
    assert ece == pytest.approx(hand_ece(probs, clean, 4), abs=1e-5)
    assert abs(hand_ece(probs, clean, 4) - hand_ece(probs, clean, 15)) > 1e-3


def test_epoch_metrics_through_trainer_match_hand_computation(data, tmp_path):
    """fit (lr 0, so the logits stay fixed), validate and test through Lightning's logging, uneven batches."""
    logits, clean, noisy = data
    model = fixed_classifier(logits, loss=LabelSmoothing(0.3))
    loader = hand_loader(logits, clean, noisy)
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, train_dataloaders=loader)  # no val loader: the fit trains only
    logged = {name: as_float(value) for name, value in trainer.callback_metrics.items()}
    for name, value in hand_train_metrics(logits, clean, noisy).items():
        assert logged[f"train/{name}"] == pytest.approx(value, abs=1e-5), name
    assert torch.equal(model.network.bias, torch.zeros(K))  # lr 0: the logits really stayed fixed

    (validated,) = trainer.validate(model, dataloaders=loader, verbose=False)
    prediction = logits.argmax(dim=1)
    assert validated["val/acc_noisy"] == pytest.approx((prediction == noisy).double().mean().item(), abs=1e-6)
    assert validated["val/acc_clean"] == pytest.approx((prediction == clean).double().mean().item(), abs=1e-6)
    assert validated["val/nll"] == pytest.approx(cross_entropy_by_hand(logits, noisy).mean().item(), abs=1e-5)
    # val/loss is the injected loss, averaged over samples (batches of 23, 23 and 14 weighted by size).
    expected_loss = label_smoothing_by_hand(logits, noisy, 0.3).mean().item()
    assert validated["val/loss"] == pytest.approx(expected_loss, abs=1e-5)

    (tested,) = trainer.test(model, dataloaders=loader, verbose=False)
    probs = torch.softmax(logits.double(), dim=1)
    assert tested["test/acc"] == pytest.approx((prediction == clean).double().mean().item(), abs=1e-6)
    assert tested["test/nll"] == pytest.approx(cross_entropy_by_hand(logits, clean).mean().item(), abs=1e-5)
    assert tested["test/ece"] == pytest.approx(hand_ece(probs, clean), abs=1e-5)
    assert tested["test/logit_norm"] == pytest.approx(logits.double().norm(dim=1).mean().item(), abs=1e-5)


def test_predict_step_returns_probabilities(data):
    logits, clean, noisy = data
    model = fixed_classifier(logits)
    predicted = model.predict_step(hand_batch(logits, clean, noisy, 5, 25), 0)
    assert_close(predicted["probabilities"], torch.softmax(logits[5:25], dim=1), atol=1e-6, rtol=1e-6)
    assert torch.equal(predicted["index"], torch.arange(5, 25)) and torch.equal(predicted["target"], clean[5:25])


def test_train_metrics_gathered_from_two_ddp_processes_match_one_process(data):
    # Each "process" has batches still queued when compute() syncs: they must be reduced and gathered too.
    logits, clean, noisy = data
    ranks = [NoisyTrainingMetrics(chunk=2), NoisyTrainingMetrics(chunk=2)]
    for rank, half in zip(ranks, [range(0, N // 2), range(N // 2, N)]):
        for batch in torch.arange(half.start, half.stop).chunk(3):  # one reduced chunk, one batch queued
            rank.update(logits[batch], noisy[batch], clean[batch])
    ranks[1].compute()  # reduces its queue; its kept states are what rank 1 sends in the gather
    sent = iter([ranks[1].predictions, ranks[1].logit_norms, ranks[1].noisy_targets, ranks[1].clean_targets])
    ranks[0].dist_sync_fn = lambda state, group=None: [state, dim_zero_cat(next(sent))]
    ranks[0].distributed_available_fn = lambda: True
    computed = {name: value.item() for name, value in ranks[0].compute().items()}
    for name, value in hand_train_metrics(logits, clean, noisy).items():
        assert computed[f"train/{name}"] == pytest.approx(value, abs=1e-5), name


def test_train_metrics_reject_a_chunk_below_one():
    with pytest.raises(ValueError, match="chunk=0"):
        NoisyTrainingMetrics(chunk=0)


def test_train_metrics_are_nan_before_any_update(data):
    logits, _, _ = data
    computed = fixed_classifier(logits).train_metrics.compute()
    assert len(computed) == 5 and all(value.isnan() for value in computed.values())


# ------------------------------------------------------------------- bug: batches without mislabelled samples


def test_batch_without_mislabelled_samples_is_skipped_by_memorisation_metrics(data):
    logits, clean, noisy = data
    model = fixed_classifier(logits)
    clean_only = torch.tensor([i for i in range(N) if noisy[i] == clean[i]][:8])
    batch = Batch(clean_only, noisy[clean_only], clean[clean_only], clean_only)
    half = hand_batch(logits, clean, noisy, 0, N // 2)
    model.train_metrics.update(logits[:N // 2], half.noisy_target, half.clean_target)
    model.train_metrics.update(logits[clean_only], batch.noisy_target, batch.clean_target)
    mislabelled = (noisy != clean)[: N // 2]
    prediction = logits[: N // 2].argmax(1)
    expected = (prediction[mislabelled] == noisy[: N // 2][mislabelled]).double().mean().item()
    assert model.train_metrics.compute()["train/memorised"].item() == pytest.approx(expected, abs=1e-6)


def test_memorisation_metrics_are_nan_when_no_sample_was_mislabelled(data):
    logits, clean, _ = data
    model = fixed_classifier(logits)
    batch = hand_batch(logits, clean, clean, 0, N)
    model.train_metrics.update(logits, batch.noisy_target, batch.clean_target)
    computed = model.train_metrics.compute()
    assert computed["train/memorised"].isnan() and computed["train/corrected"].isnan()
    accuracy = (logits.argmax(1) == clean).double().mean().item()
    assert computed["train/acc_noisy"].item() == computed["train/acc_clean"].item() == pytest.approx(accuracy)


def test_fit_on_clean_labels_runs(tmp_path):
    torch.manual_seed(0)
    model = Classifier(backbone=SmallCNN, num_classes=10, scheduler=None)
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=digits_data(tmp_path / "digits", noise=None))
    logged = trainer.callback_metrics
    assert logged["train/acc_noisy"].item() == logged["train/acc_clean"].item()


# ------------------------------------------------------------------------- 2. the injected loss strategy


class RecordBatches(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.returned: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(batch)
        self.returned.append(outputs["loss"].detach().clone())


@pytest.mark.parametrize("loss, by_hand, expected_type", [
    (LabelSmoothing(0.3), lambda logits, target: label_smoothing_by_hand(logits, target, 0.3), LabelSmoothing),
    (None, cross_entropy_by_hand, CrossEntropy),
], ids=["label-smoothing-0.3", "none-is-cross-entropy"])
def test_training_step_uses_the_injected_loss(data, tmp_path, loss, by_hand, expected_type):
    logits, clean, noisy = data
    model = fixed_classifier(logits, loss=loss)
    assert type(model.loss) is expected_type
    if loss is not None:
        assert model.loss is loss
    recorder = RecordBatches()
    logger = CSVLogger(tmp_path, name="", version=0)
    trainer = cpu_trainer(tmp_path, max_epochs=1, limit_val_batches=0, logger=logger, log_every_n_steps=1,
                          callbacks=[recorder])
    trainer.fit(model, train_dataloaders=hand_loader(logits, clean, noisy))
    assert len(recorder.batches) == 3
    rows = [row for row in read_csv_metrics(logger) if row.get("train/loss")]
    assert len(rows) == 3
    for batch, returned, row in zip(recorder.batches, recorder.returned, rows):
        expected = by_hand(logits[batch.index], batch.noisy_target).mean().item()  # the noisy target is trained
        assert returned.item() == pytest.approx(expected, abs=1e-5)
        assert float(row["train/loss"]) == pytest.approx(expected, abs=1e-5)
        assert float(row["train/lr"]) == 0.0
    # ...and not the loss against the clean target.
    first = recorder.batches[0]
    assert abs(by_hand(logits[first.index], first.clean_target).mean().item() - recorder.returned[0].item()) > 1e-3


# ------------------------------------------------------------------- 3. transition matrix from the noise model


def random_logits(num_classes: int, seed: int = 0, batch: int = 32):
    generator = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(batch, num_classes, generator=generator), torch.randint(num_classes, (batch,),
                                                                                    generator=generator)


@pytest.mark.parametrize("num_classes", [10, 4])
def test_forward_correction_gets_the_noise_models_matrix(num_classes):
    noise = SymmetricNoise(0.4)
    model = Classifier(backbone=SmallCNN, loss=ForwardCorrection(), noise=noise, num_classes=num_classes)
    expected = noise.transition_matrix(num_classes)
    assert_close(model.loss.transition_matrix.double(), torch.from_numpy(expected), atol=1e-7, rtol=0)
    logits, target = random_logits(num_classes)
    assert_close(model.loss(logits, target).double(),
                 forward_correction_by_hand(logits, target, expected).mean(), atol=1e-5, rtol=1e-5)


def test_backward_correction_gets_the_noise_models_matrix():
    noise = SymmetricNoise(0.3, convention="redraw")
    model = Classifier(backbone=SmallCNN, loss=BackwardCorrection(), noise=noise, num_classes=10)
    expected = noise.transition_matrix(10)
    assert_close(model.loss.transition_matrix.double(), torch.from_numpy(expected), atol=1e-7, rtol=0)
    assert_close(model.loss.derived_matrix.double(), torch.from_numpy(np.linalg.inv(expected)), atol=1e-5, rtol=0)


def test_loss_with_its_own_alpha_keeps_its_own_matrix():
    # The data's T is pair flipping, not symmetric: an own alpha then stands (a symmetric data T that differs
    # from it is refused, see below).
    model = Classifier(backbone=SmallCNN, loss=ForwardCorrection(alpha=0.2),
                       noise=PairFlipNoise(0.4), num_classes=10)
    logits, target = random_logits(10)
    own = 0.8 * np.eye(10) + 0.02  # the alpha parametrisation: (1 - alpha) I + alpha / K J
    data_matrix = PairFlipNoise(0.4).transition_matrix(10)
    value = model.loss(logits, target).double()
    assert_close(value, forward_correction_by_hand(logits, target, own).mean(), atol=1e-5, rtol=1e-5)
    assert abs(value.item() - forward_correction_by_hand(logits, target, data_matrix).mean().item()) > 1e-3
    assert_close(model.loss.transition_matrix.double(), torch.from_numpy(own), atol=1e-7, rtol=0)


@pytest.mark.parametrize("loss", [ForwardCorrection, BackwardCorrection], ids=["FC", "BC"])
def test_classifier_refuses_an_alpha_that_is_not_the_data_symmetric_t(loss):
    # alpha 0.2 (redraw) beside SymmetricNoise(0.2) (flip) is another T: refused when the model is built.
    with pytest.raises(ConfigError, match="alpha"):
        Classifier(backbone=SmallCNN, loss=loss(alpha=0.2), noise=SymmetricNoise(0.2), num_classes=10)
    Classifier(backbone=SmallCNN, loss=loss(alpha=10 * 0.2 / 9), noise=SymmetricNoise(0.2), num_classes=10)


def test_loss_with_its_own_matrix_keeps_it():
    own = np.full((3, 3), 0.1) + 0.7 * np.eye(3)
    model = Classifier(backbone=SmallCNN, loss=ForwardCorrection(matrix=own.tolist()), noise=SymmetricNoise(0.5),
                       num_classes=3)
    assert_close(model.loss.transition_matrix.double(), torch.from_numpy(own), atol=1e-7, rtol=0)


def test_no_noise_gives_identity_and_forward_correction_equals_cross_entropy():
    model = Classifier(backbone=SmallCNN, loss=ForwardCorrection(), noise=None, num_classes=10)
    assert torch.equal(model.loss.transition_matrix, torch.eye(10))
    logits, target = random_logits(10)
    assert_close(model.loss(logits, target), F.cross_entropy(logits, target), atol=1e-5, rtol=1e-5)


def test_non_transition_losses_are_left_alone():
    loss = LabelSmoothing(0.1)
    model = Classifier(backbone=SmallCNN, loss=loss, noise=SymmetricNoise(0.4), num_classes=10)
    assert model.loss is loss and not hasattr(model.loss, "transition_matrix")


# ------------------------------------------------------------------------------ 4. checkpoint round trip


@pytest.fixture(scope="module", params=["ls", "fc-linked"])
def trained_checkpoint(request, tmp_path_factory):
    """A Classifier fitted 3 steps on Digits, its ModelCheckpoint file, its data and its initial weights."""
    tmp_path = tmp_path_factory.mktemp(f"checkpoint-{request.param}")
    pl.seed_everything(3, verbose=False)
    loss = LabelSmoothing(0.25) if request.param == "ls" else ForwardCorrection()
    model = Classifier(backbone=SmallCNN, loss=loss, noise=SymmetricNoise(0.4), num_classes=10)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=3, save_top_k=-1)
    data = digits_data(tmp_path / "digits")
    trainer = cpu_trainer(tmp_path, max_steps=3, limit_val_batches=0, enable_checkpointing=True,
                          callbacks=[checkpoint])
    trainer.fit(model, datamodule=data)
    path = Path(checkpoint.best_model_path or checkpoint.last_model_path)
    assert path.is_file()
    return model, path, data, initial


def _check_same_model(model: Classifier, loaded: Classifier, data: NoisyLabelDataModule, initial: dict) -> None:
    # The checkpoint holds the trained weights (not the initial ones), and all of them.
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert torch.equal(state[name], loaded_state[name]), name
    assert any(not torch.equal(initial[name], state[name]) for name in state)

    data.setup("test")
    batch = data.on_after_batch_transfer(next(iter(data.test_dataloader())), 0)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(batch.input), loaded(batch.input))

    hparams = loaded.hparams
    assert hparams.num_classes == 10 and hparams.ece_bins == 15 and hparams.scheduler_interval == "step"
    assert hparams.backbone is SmallCNN and isinstance(loaded.network, SmallCNN)
    assert hparams.optimizer is paper_sgd and hparams.scheduler is paper_schedule
    assert type(hparams.noise) is SymmetricNoise
    assert (hparams.noise.rate, hparams.noise.convention) == (0.4, "flip")
    assert type(loaded.loss) is type(model.loss)
    if isinstance(model.loss, LabelSmoothing):
        assert loaded.loss.alpha == 0.25
    else:
        assert loaded.loss.alpha is None and not loaded.loss.has_own_matrix
        assert_close(loaded.loss.transition_matrix.double(),
                     torch.from_numpy(SymmetricNoise(0.4).transition_matrix(10)), atol=1e-7, rtol=0)
    with torch.no_grad():
        logits = loaded(batch.input)
        assert_close(loaded.loss(logits, batch.clean_target), model.loss(logits, batch.clean_target))


def test_load_from_checkpoint_trusted_rebuilds_an_equal_model(trained_checkpoint):
    # Built in Python, the hyperparameters are objects (a loss module, a noise model), which torch>=2.6
    # unpickles only with weights_only=False. Checkpoints written by `lsl fit` hold plain config instead and
    # load with no argument at all (tests/test_cli.py).
    model, path, data, initial = trained_checkpoint
    loaded = Classifier.load_from_checkpoint(path, weights_only=False)
    _check_same_model(model, loaded, data, initial)


# ------------------------------------------------------------------------------- 5. configure_optimizers


def test_default_optimizer_and_schedule_are_the_papers():
    model = Classifier(backbone=SmallCNN, num_classes=10)
    configured = model.configure_optimizers()
    optimizer = configured["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    (group,) = optimizer.param_groups
    assert group["lr"] == 0.1 and group["momentum"] == 0.9 and group["nesterov"] is True
    assert group["weight_decay"] == 1e-4 and group["dampening"] == 0
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    scheduler_config = configured["lr_scheduler"]
    assert scheduler_config["interval"] == "step"
    scheduler = scheduler_config["scheduler"]
    assert type(scheduler) is torch.optim.lr_scheduler.MultiStepLR
    assert scheduler.milestones == Counter({32_000: 1, 48_000: 1}) and scheduler.gamma == 0.1
    assert scheduler.optimizer is optimizer


def test_default_backbone_is_resnet32():
    assert Classifier.__init__.__defaults__[0] is resnet32
    model = Classifier(num_classes=7)
    assert model.network.depth == 32 and model.network.fc.out_features == 7


def test_channels_last_stores_weights_and_inputs_nhwc_and_computes_the_same_logits():
    torch.manual_seed(0)
    plain = Classifier(backbone=resnet20, num_classes=10).eval()
    nhwc = Classifier(backbone=resnet20, num_classes=10, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    conv = nhwc.network.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = []
    nhwc.network.conv1.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert_close(nhwc(images), plain(images), atol=1e-5, rtol=1e-4)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


@pytest.mark.slow  # torch.compile builds C++ kernels on a CPU: tens of seconds
def test_compile_gives_the_same_logits_and_checkpoint_keys():
    torch.manual_seed(0)
    plain = Classifier(backbone=SmallCNN, num_classes=10).eval()
    compiled = Classifier(backbone=SmallCNN, num_classes=10, compile=True).eval()
    compiled.load_state_dict(plain.state_dict())
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert_close(compiled(images), plain(images), atol=1e-5, rtol=1e-4)


def test_no_scheduler_returns_only_the_optimizer():
    model = Classifier(backbone=SmallCNN, num_classes=10, scheduler=None,
                       optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    configured = model.configure_optimizers()
    assert type(configured) is torch.optim.Adam and configured.param_groups[0]["lr"] == 1e-3


def test_scheduler_interval_epoch_is_passed_through():
    model = Classifier(backbone=SmallCNN, num_classes=10, scheduler_interval="epoch")
    assert model.configure_optimizers()["lr_scheduler"]["interval"] == "epoch"


@pytest.mark.parametrize("interval, expected", [("step", [0.1, 0.05, 0.025, 0.0125]), ("epoch", [0.1, 0.1, 0.05, 0.05])])
def test_logged_lr_follows_the_schedule_and_interval(data, tmp_path, interval, expected):
    """train/lr is the optimizer's current lr; the scheduler steps per batch or per epoch as configured."""
    logits, clean, noisy = data
    model = fixed_classifier(logits, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                             scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                             scheduler_interval=interval)
    logger = CSVLogger(tmp_path, name="", version=0)
    trainer = cpu_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=logger,
                          log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=hand_loader(logits, clean, noisy))
    logged = [float(row["train/lr"]) for row in read_csv_metrics(logger) if row.get("train/lr")]
    assert logged == pytest.approx(expected, rel=1e-6)  # logged as float32


# ---------------------------------------------------------------- 6. names and values after fit/validate/test


TRAIN_NAMES = {"train/loss", "train/lr", "train/acc_noisy", "train/acc_clean", "train/memorised", "train/corrected",
               "train/logit_norm"}
VAL_NAMES = {"val/acc_noisy", "val/acc_clean", "val/nll", "val/loss", "val/logit_norm"}
TEST_NAMES = {"test/acc", "test/nll", "test/ece", "test/logit_norm", "test/top_class_share"}


def test_fit_validate_test_on_digits_log_slash_namespaced_finite_metrics(tmp_path):
    pl.seed_everything(0, verbose=False)
    data = digits_data(tmp_path / "digits")
    model = Classifier(backbone=SmallCNN, num_classes=10, noise=SymmetricNoise(0.4))
    logger = CSVLogger(tmp_path, name="", version=0)
    trainer = cpu_trainer(tmp_path, max_epochs=1, logger=logger, log_every_n_steps=1)
    trainer.fit(model, datamodule=data)
    after_fit = {name: as_float(value) for name, value in trainer.callback_metrics.items()}
    assert TRAIN_NAMES | VAL_NAMES <= after_fit.keys()
    (validated,) = trainer.validate(model, datamodule=data, verbose=False)
    assert set(validated) == VAL_NAMES
    (tested,) = trainer.test(model, datamodule=data, verbose=False)
    assert set(tested) == TEST_NAMES
    logged = {**after_fit, **validated, **tested}
    assert all(math.isfinite(value) for value in logged.values()), logged
    for name in ("acc_noisy", "acc_clean", "memorised", "corrected"):
        assert 0.0 <= logged[f"train/{name}"] <= 1.0
    # A mislabelled sample cannot be predicted as both its noisy and its true label.
    assert logged["train/memorised"] + logged["train/corrected"] <= 1.0
    assert logged["train/lr"] == pytest.approx(0.1)
    # With cross-entropy, val/loss and val/nll are the same mean over the noisy validation labels.
    assert validated["val/loss"] == pytest.approx(validated["val/nll"], abs=1e-4)

    # The CSV (TensorBoard-style) names carry the same slash namespaces.
    columns = set(read_csv_metrics(logger)[0].keys())
    assert TRAIN_NAMES | VAL_NAMES | TEST_NAMES <= columns

    # test/* against an independent pass over the clean test set.
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = data.on_after_batch_transfer(batch, 0)
            logits.append(model(batch.input))
            targets.append(batch.clean_target)
    logits, targets = torch.cat(logits), torch.cat(targets)
    assert torch.equal(targets, data.test_set.clean) and len(targets) == 360
    probs = torch.softmax(logits.double(), dim=1)
    assert tested["test/acc"] == pytest.approx((logits.argmax(1) == targets).double().mean().item(), abs=1e-6)
    assert tested["test/nll"] == pytest.approx(cross_entropy_by_hand(logits, targets).mean().item(), abs=1e-4)
    assert tested["test/ece"] == pytest.approx(hand_ece(probs, targets), abs=1e-4)
    assert tested["test/logit_norm"] == pytest.approx(logits.double().norm(dim=1).mean().item(), rel=1e-5)
    predicted = torch.cat([batch["probabilities"] for batch in trainer.predict(model, datamodule=data)])
    assert_close(predicted.double(), probs, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ 7. determinism


def _seeded_fit(tmp_path: Path, seed: int, run: str):
    pl.seed_everything(seed, verbose=False)
    data = digits_data(tmp_path / "digits", artifact_dir=str(tmp_path / run / "noise"), train_subset=600)
    model = Classifier(backbone=functools.partial(SmallCNN, width=8, hidden=32), loss=LabelSmoothing(0.1),
                       noise=SymmetricNoise(0.4), num_classes=10)
    trainer = cpu_trainer(tmp_path / run, max_epochs=1, deterministic=True, log_every_n_steps=1)
    trainer.fit(model, datamodule=data)
    metrics = {name: as_float(value) for name, value in trainer.callback_metrics.items()}
    return model.state_dict(), metrics, data.train_set.noisy.clone(), data.train_set.clean.clone()


def test_same_seed_gives_identical_runs_and_other_seed_only_other_weights(tmp_path):
    state_a, metrics_a, noisy_a, clean_a = _seeded_fit(tmp_path, 11, "a")
    state_b, metrics_b, noisy_b, _ = _seeded_fit(tmp_path, 11, "b")
    state_c, metrics_c, noisy_c, _ = _seeded_fit(tmp_path, 12, "c")
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert metrics_a == metrics_b
    assert TRAIN_NAMES | VAL_NAMES <= metrics_a.keys()
    # Another training seed: other weights, but the noise draw depends on noise_seed alone.
    assert any(not torch.equal(state_a[name], state_c[name]) for name in state_a if state_a[name].is_floating_point())
    assert metrics_c != metrics_a
    assert torch.equal(noisy_a, noisy_c) and torch.equal(noisy_a, noisy_b)
    assert (noisy_a != clean_a).float().mean().item() == pytest.approx(0.4, abs=0.08)


# ------------------------------------------------------------------------------------------- 8. bad input


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_fewer_than_two_classes_is_a_config_error(num_classes):
    with pytest.raises(ConfigError, match="num_classes"):
        Classifier(backbone=SmallCNN, num_classes=num_classes)


# ------------------------------------------------------------------------------------- 9. mixed precision


def test_bf16_mixed_fit_with_forward_correction_is_finite(tmp_path):
    pl.seed_everything(0, verbose=False)
    recorder = RecordBatches()
    model = Classifier(backbone=SmallCNN, loss=ForwardCorrection(), noise=SymmetricNoise(0.4), num_classes=10)
    trainer = cpu_trainer(tmp_path, precision="bf16-mixed", max_steps=2, limit_val_batches=0, callbacks=[recorder],
                          log_every_n_steps=1)
    trainer.fit(model, datamodule=digits_data(tmp_path / "digits"))
    assert trainer.global_step == 2 and len(recorder.returned) == 2
    for loss in recorder.returned:
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert math.isfinite(trainer.callback_metrics["train/logit_norm"].item())
    assert all(torch.isfinite(value).all() for value in model.state_dict().values() if value.is_floating_point())
