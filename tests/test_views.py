"""TensorBoard views: the drawings, the statistics behind them, and what a quickstart run writes."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from conftest import QUICKSTART, QUIET, run_main, scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lsl import Classifier, ConfigError
from lsl.losses import CrossEntropy, ForwardCorrection, LabelSmearing, LabelSmoothing
from lsl.models import SmallCNN
from lsl.noise import SymmetricNoise
from lsl.views import (
    BAR,
    GAP,
    INK,
    TensorBoardViews,
    bar_chart,
    heatmap,
    per_class_accuracy,
    prediction_vs_noisy_label,
    reliability_diagram,
    run_hparams,
)

WHITE = torch.tensor([255, 255, 255], dtype=torch.uint8)


def colour(image: torch.Tensor, row: int, col: int) -> tuple[int, ...]:
    return tuple(image[:, row, col].tolist())


# ---------------------------------------------------------------------------------------------- drawings


def test_heatmap_is_dark_at_one_white_at_zero_and_halfway_at_a_quarter() -> None:
    matrix = torch.tensor([[1.0, 0.0], [0.25, 1.0]])
    image = heatmap(matrix, cell=4)
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert colour(image, 1, 1) == INK and colour(image, 6, 6) == INK
    assert colour(image, 1, 6) == (255, 255, 255)
    halfway = tuple(round((255 + ink) / 2) for ink in INK)  # the shade follows sqrt(0.25) = 0.5
    assert all(abs(a - b) <= 1 for a, b in zip(colour(image, 6, 1), halfway))


def test_a_calibrated_model_has_no_gap_and_an_overconfident_one_does() -> None:
    bins = 10
    confidence = torch.full((1000,), 0.95)
    calibrated = torch.arange(1000) % 20 != 0  # 95% right at 95% confidence
    overconfident = torch.arange(1000) % 2 == 0  # 50% right at 95% confidence

    calibrated_image = reliability_diagram(confidence, calibrated, bins)
    overconfident_image = reliability_diagram(confidence, overconfident, bins)

    size = bins * 10
    assert calibrated_image.shape == (3, size + 4 + 30, size)
    is_gap = (overconfident_image == torch.tensor(GAP, dtype=torch.uint8).view(3, 1, 1)).all(dim=0)
    assert not (calibrated_image == torch.tensor(GAP, dtype=torch.uint8).view(3, 1, 1)).all(dim=0).any()
    gap_rows = torch.nonzero(is_gap[:, 95])[:, 0]  # the last bin's column
    assert gap_rows.min() == size - 95 and gap_rows.max() == size - 50 - 1  # from 0.95 down to the 0.5 bar
    assert colour(overconfident_image, size - 1, 95) == BAR and colour(overconfident_image, size - 51, 95) == GAP
    assert colour(overconfident_image, size - 1, 5) != BAR  # an empty bin draws no bar


def test_bar_chart_draws_each_value_as_a_bar_of_that_height() -> None:
    image = bar_chart(torch.tensor([1.0, 0.5, 0.0, 0.25]))
    assert image.shape == (3, 100, 320)
    heights = [(image[:, :, k * 80 + 40] == torch.tensor(BAR, dtype=torch.uint8).view(3, 1)).all(dim=0).sum().item()
               for k in range(4)]
    assert heights == [100, 50, 0, 25]


# -------------------------------------------------------------------------------------------- statistics


def test_predicting_the_clean_class_gives_t_and_memorising_gives_the_identity() -> None:
    num_classes = 4
    transition = SymmetricNoise(0.4).transition_matrix(num_classes)
    clean = np.repeat(np.arange(num_classes), 5000)
    noisy = torch.from_numpy(SymmetricNoise(0.4).corrupt(clean, num_classes, seed=0))
    clean = torch.from_numpy(clean)

    denoising = prediction_vs_noisy_label(clean, noisy, num_classes)
    memorising = prediction_vs_noisy_label(noisy, noisy, num_classes)

    assert np.abs(denoising.numpy() - transition).max() < 0.02
    np.testing.assert_array_equal(memorising.numpy(), np.eye(num_classes))


def test_per_class_accuracy_counts_each_class_on_its_own() -> None:
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    accuracy, counts = per_class_accuracy(predictions, targets, num_classes=4)
    assert accuracy.tolist() == [0.75, 0.5, 0.0, 0.0] and counts.tolist() == [4, 2, 1, 0]


@pytest.mark.parametrize("arguments", [{"every_n_epochs": -1}, {"max_train_samples": 0}, {"reliability_bins": 0}])
def test_bad_view_settings_raise_config_error(arguments: dict) -> None:
    with pytest.raises(ConfigError):
        TensorBoardViews(**arguments)


# ------------------------------------------------------------------------------------------- hparams row


@pytest.mark.parametrize(("loss", "alpha"), [
    (CrossEntropy(), 0.0),
    (LabelSmoothing(0.3), 0.3),
    (ForwardCorrection(alpha=0.2), 0.2),
    (ForwardCorrection(matrix=np.eye(4).tolist()), math.nan),
    (LabelSmearing(np.eye(4).tolist()), math.nan),
])
def test_the_hparams_row_names_a_classifiers_loss_and_its_alpha(loss, alpha) -> None:
    model = Classifier(backbone=SmallCNN, loss=loss, num_classes=4, noise=SymmetricNoise(0.2, convention="redraw"))
    row = run_hparams(pl.Trainer(logger=False), model)
    assert row["loss"] == type(loss).__name__ and row["backbone"] == "SmallCNN"
    assert row["alpha"] == pytest.approx(alpha, nan_ok=True)
    assert row["noise"] == "symmetric-redraw-0.2" and row["flip_rate"] == pytest.approx(0.2 * 3 / 4)
    assert row["data"] == "unknown" and math.isnan(row["noise_seed"])  # no data module attached


def test_the_hparams_row_of_a_module_that_is_not_lsls_has_every_key_with_nan_or_none() -> None:
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

    row = run_hparams(pl.Trainer(logger=False), Plain())
    assert row["loss"] == row["backbone"] == "NoneType" and row["data"] == "unknown" and row["noise"] == "none"
    assert math.isnan(row["alpha"]) and math.isnan(row["noise_seed"]) and row["flip_rate"] == 0.0


# ------------------------------------------------------------------------------------- a quickstart run


def read_events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return events


def test_the_quickstart_run_logs_every_view_and_an_hparams_entry(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--trainer.max_epochs=4", "--trainer.limit_train_batches=5",
                     "--views.every_n_epochs=2"]) == 0
    run = tmp_path / "logs" / "quickstart" / "version_0"
    events = read_events(run)
    steps_per_epoch = 5

    # The training-set views after epochs 2 and 4; the test at the end reuses epoch 4's (same weights).
    sizes = {tag: {(image.step, image.height, image.width) for image in events.Images(tag)}
             for tag in events.Tags()["images"]}
    assert sizes == {
        "views/train_confusion_vs_T": {(2 * steps_per_epoch, 160, 328), (4 * steps_per_epoch, 160, 328)},
        "views/test_reliability": {(4 * steps_per_epoch, 184, 150)},
        "views/test_per_class_acc": {(4 * steps_per_epoch, 100, 320)},
    }
    for statistic in ("max_prob", "logit_norm"):
        for subset in ("clean", "mislabelled"):
            histograms = events.Histograms(f"views/train_{statistic}/{subset}")
            assert [h.step for h in histograms] == [2 * steps_per_epoch, 4 * steps_per_epoch]
            assert all(h.histogram_value.num > 0 for h in histograms)
    # The views see the whole training split (1,293 images, about 40% mislabelled), not the 5 batches trained on.
    counts = {subset: events.Histograms(f"views/train_max_prob/{subset}")[-1].histogram_value.num
              for subset in ("clean", "mislabelled")}
    assert counts["clean"] + counts["mislabelled"] == 1293 and 0.35 < counts["mislabelled"] / 1293 < 0.45
    assert "views/test_per_class_acc/text_summary" in events.Tags()["tensors"]

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert {"test/acc", "test/ece", "val/acc_clean", "train/memorised"} <= metrics <= set(scalars(run))
    assert start.hparams["loss"].string_value == "LabelSmoothing"
    assert start.hparams["alpha"].number_value == pytest.approx(0.4)
    assert start.hparams["noise"].string_value == "symmetric-flip-0.4"
    assert start.hparams["flip_rate"].number_value == pytest.approx(0.4)
    assert {info.name for info in experiment.hparam_infos} == set(start.hparams)
    # The model's own hyperparameters file keeps the loss and noise as classes, untouched by the hparams entry.
    saved = yaml.safe_load((run / "hparams.yaml").read_text())
    assert saved["loss"]["class_path"] == "lsl.losses.LabelSmoothing"


def test_views_leave_training_unchanged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    short = ["--config", QUICKSTART, *QUIET, "--trainer.max_epochs=2", "--trainer.limit_train_batches=5",
             "--trainer.deterministic=true", "--test_after_fit=false"]
    assert run_main(["fit", *short, "--views.every_n_epochs=1"]) == 0
    assert run_main(["fit", *short, "--views.every_n_epochs=0"]) == 0
    with_views, without = (tmp_path / "logs" / "quickstart" / f"version_{i}" for i in range(2))
    assert read_events(with_views).Tags()["images"] and not read_events(without).Tags()["images"]
    assert scalars(with_views) == scalars(without)
