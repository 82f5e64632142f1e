"""TensorBoard views: what the figures hold, the statistics behind them, and what a quickstart run writes."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from conftest import FIGURES, QUICKSTART, QUIET, run_main, scalars
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.colors import PowerNorm, to_rgb
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lsl import Classifier, ConfigError
from lsl.calibration import ExpectedCalibrationError, expected_calibration_error
from lsl.data import Digits, NoisyLabelDataModule
from lsl.inference import predict_logits
from lsl.losses import CrossEntropy, ForwardCorrection, LabelSmearing, LabelSmoothing
from lsl.models import SmallCNN
from lsl.noise import SymmetricNoise
from lsl.temperature_scaling import FITS, TemperatureScaling, scaled_metrics
from lsl.views import (
    OVER_COLOUR,
    OVER_LABEL,
    UNDER_COLOUR,
    UNDER_LABEL,
    TensorBoardViews,
    confusion_figure,
    per_class_accuracy,
    per_class_figure,
    prediction_vs_noisy_label,
    reliability_figure,
    reliability_panels,
    run_hparams,
)

BINS = 15


def gap_bars(axis, colour: str) -> list[tuple[float, float, float]]:
    """``(x centre, bottom, top)`` of the bars of one colour that an axes draws."""
    return [(patch.get_x() + patch.get_width() / 2, patch.get_y(), patch.get_y() + patch.get_height())
            for patch in axis.patches if to_rgb(patch.get_facecolor()) == to_rgb(colour)]


def two_class_logits(confidence: float, size: int) -> torch.Tensor:
    """``size`` rows of two logits whose softmax gives class 0 probability ``confidence``."""
    return torch.tensor([[math.log(confidence / (1 - confidence)), 0.0]]).repeat(size, 1)


# ---------------------------------------------------------------------------------------------- drawings


def test_the_confusion_figure_shows_both_matrices_on_one_square_root_scale_with_labelled_axes() -> None:
    model = prediction_vs_noisy_label(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 0]), 3)
    true_T = SymmetricNoise(0.3).transition_matrix(3)
    figure = confusion_figure(model, true_T)

    left, right, colour_bar = figure.axes
    for axis, ylabel, matrix in ((left, "predicted class i", model.numpy()), (right, "clean class i", true_T)):
        assert axis.get_xlabel() == "noisy label j" and axis.get_ylabel() == ylabel and axis.get_title()
        (image,) = axis.get_images()
        np.testing.assert_allclose(image.get_array(), matrix)
        assert isinstance(image.norm, PowerNorm) and image.norm.gamma == 0.5
        assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)  # one scale for both, so shades compare
        assert list(axis.get_xticks()) == [0, 1, 2] and list(axis.get_yticks()) == [0, 1, 2]
    assert "probability" in colour_bar.get_ylabel()


def test_the_confusion_figure_leaves_ticks_to_matplotlib_for_many_classes() -> None:
    figure = confusion_figure(np.eye(30), np.eye(30))
    assert len(figure.axes[0].get_xticks()) < 30


@pytest.mark.parametrize(("confidence", "share_correct", "over", "under"), [
    (0.95, 0.5, True, False),  # right half the time at 95% confidence: cross-entropy's way
    (0.55, 0.95, False, True),  # right 95% of the time at 55% confidence: label smoothing's way
])
def test_the_gap_is_red_when_over_confident_and_blue_when_under_confident(confidence, share_correct, over,
                                                                           under) -> None:
    size = 1000
    logits = two_class_logits(confidence, size)
    targets = (torch.arange(size) >= share_correct * size).long()  # class 0 (predicted) for the first share
    figure = reliability_figure(logits, targets, BINS, {})
    diagram = figure.axes[0]

    centre = (math.ceil(confidence * BINS) - 0.5) / BINS  # the bin (b / 15, (b + 1) / 15] holding the confidence
    expected = [(pytest.approx(centre), pytest.approx(min(confidence, share_correct)),
                 pytest.approx(max(confidence, share_correct)))]
    assert gap_bars(diagram, OVER_COLOUR) == (expected if over else [])
    assert gap_bars(diagram, UNDER_COLOUR) == (expected if under else [])
    labels = [text.get_text() for text in diagram.get_legend().get_texts()]
    assert OVER_LABEL in labels and UNDER_LABEL in labels and "perfect calibration" in labels  # both colours named
    assert OVER_COLOUR != UNDER_COLOUR


def test_a_calibrated_model_has_no_gap_and_an_empty_bin_no_bar() -> None:
    logits = two_class_logits(0.8, 1000)
    targets = (torch.arange(1000) >= 800).long()  # right 80% of the time at 80% confidence
    diagram = reliability_figure(logits, targets, BINS, {}).axes[0]
    gaps = gap_bars(diagram, OVER_COLOUR) + gap_bars(diagram, UNDER_COLOUR)
    assert all(top - bottom < 1e-6 for _, bottom, top in gaps)  # float rounding of 0.8 at most
    bars = [patch for patch in diagram.patches if patch.get_height() > 1e-6]
    assert len(bars) == 1 and bars[0].get_height() == pytest.approx(0.8)  # the one non-empty bin's accuracy


def random_test_set(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(600, 10, generator=generator) * 4
    logits[:60] = torch.nn.functional.one_hot(torch.arange(60) % 10, 10) * 200.0  # saturated: confidence 1.0
    targets = torch.where(torch.rand(600, generator=generator) < 0.7, logits.argmax(dim=1),
                          torch.randint(0, 10, (600,), generator=generator))
    return logits, targets


def test_each_panel_draws_the_ece_that_test_ece_and_the_scaled_metrics_measure() -> None:
    logits, targets = random_test_set()
    temperatures = {"noisy": 2.5, "noise_aware": 0.6, "oracle": 1.3}
    panels = reliability_panels(logits, targets, BINS, temperatures)

    assert [panel.name for panel in panels] == ["raw", *FITS]
    raw = panels[0]
    confidence, predictions = logits.double().softmax(dim=1).max(dim=1)
    assert raw.ece == pytest.approx(expected_calibration_error(confidence, predictions == targets, BINS).item(),
                                    abs=1e-12)
    metric = ExpectedCalibrationError(BINS)  # test/ece, from float32 probabilities
    metric.update(logits.softmax(dim=1), targets)
    assert raw.ece == pytest.approx(metric.compute().item(), abs=1e-6)
    for panel in panels[1:]:
        assert panel.temperature == temperatures[panel.name]
        assert panel.ece == pytest.approx(scaled_metrics(logits, targets, panel.temperature, BINS)["ece"], abs=1e-12)
        assert panel.counts.sum() == len(targets)
    assert len({round(panel.ece, 6) for panel in panels}) == 4  # the temperatures do change the picture


def test_the_reliability_figure_has_a_labelled_panel_per_model_with_its_ece_and_temperature() -> None:
    logits, targets = random_test_set()
    temperatures = {"noisy": 2.5, "noise_aware": 0.6, "oracle": 1.3}
    panels = reliability_panels(logits, targets, BINS, temperatures)
    figure = reliability_figure(logits, targets, BINS, temperatures)

    diagrams, histograms = figure.axes[:4], figure.axes[4:]
    assert len(histograms) == 4
    for diagram, histogram, panel in zip(diagrams, histograms, panels):
        assert (diagram.get_xlabel(), diagram.get_ylabel()) == ("confidence", "accuracy")
        assert diagram.get_legend() is not None and diagram.get_xlim() == (0.0, 1.0)
        assert f"ECE = {panel.ece:.4f}" in diagram.get_title()
        assert histogram.get_xlabel() == "confidence" and histogram.get_ylabel().startswith("samples")
        assert [patch.get_height() for patch in histogram.patches] == panel.counts.tolist()
    assert diagrams[0].get_title().startswith("raw model (t = 1)")
    assert "after noise-aware scaling, t = 0.6" in diagrams[2].get_title()
    assert "clean validation labels" in diagrams[3].get_title()  # the oracle is marked as a reference

    only_raw = reliability_figure(logits, targets, BINS, {})
    assert len(only_raw.axes) == 2


def test_the_per_class_figure_draws_each_accuracy_and_the_overall_line() -> None:
    figure = per_class_figure(torch.tensor([1.0, 0.5, 0.0, 0.25]), torch.tensor([3, 2, 0, 4]), overall=0.5)
    (axis,) = figure.axes
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("class", "test accuracy")
    bars = {round(patch.get_x() + patch.get_width() / 2): patch.get_height() for patch in axis.patches}
    assert bars == {0: 1.0, 1: 0.5, 3: 0.25}  # class 2 has no sample, so no bar
    (line,) = [line for line in axis.get_lines() if line.get_label().startswith("overall accuracy")]
    assert list(line.get_ydata()) == [0.5, 0.5]
    assert line.get_label() in [text.get_text() for text in axis.get_legend().get_texts()]


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


# ------------------------------------------------------------------------------------------ the callback


def read_events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return events


def digits(tmp_path: Path) -> NoisyLabelDataModule:
    """The quickstart's data: scikit-learn's digits with 40% symmetric noise."""
    return NoisyLabelDataModule(dataset=Digits(root=str(tmp_path / "data")), noise=SymmetricNoise(0.4), batch_size=64)


def logging_trainer(tmp_path: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="run"), callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def test_the_views_draw_the_logits_test_ece_is_measured_on_before_and_after_each_temperature(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = Classifier(backbone=SmallCNN, loss=LabelSmoothing(0.4), num_classes=10)
    views, scaling = TensorBoardViews(every_n_epochs=0, max_train_samples=200), TemperatureScaling()
    trainer = logging_trainer(tmp_path, [scaling, views])
    trainer.test(model, datamodule=digits(tmp_path), verbose=False)

    logged = trainer.callback_metrics
    assert set(views.last_reliability) == {"raw", *FITS} and set(scaling.temperatures) == set(FITS)
    assert views.last_reliability["raw"] == pytest.approx(logged["test/ece"].item(), abs=1e-6)
    for name in FITS:
        assert views.last_reliability[name] == pytest.approx(logged[f"test/ece_scaled_{name}"].item(), abs=1e-6)
    images = read_events(tmp_path / "run" / "version_0").Images("views/test_reliability")
    assert [image.step for image in images] == [0]
    assert images[0].encoded_image_string.startswith(b"\x89PNG")


def test_without_temperatures_only_the_raw_model_is_drawn_and_a_best_checkpoint_test_draws_nothing(
        tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = Classifier(backbone=SmallCNN, loss=CrossEntropy(), num_classes=10)
    views = TensorBoardViews(every_n_epochs=0, max_train_samples=200)
    trainer = logging_trainer(tmp_path, [TemperatureScaling(enabled=False), views])
    datamodule = digits(tmp_path)
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert set(views.last_reliability) == {"raw"}
    assert views.last_reliability["raw"] == pytest.approx(trainer.callback_metrics["test/ece"].item(), abs=1e-6)

    views.last_reliability = {}
    with model.testing_as("test_best/"):
        trainer.test(model, datamodule=datamodule, verbose=False)
    assert "test_best/ece" in trainer.callback_metrics and views.last_reliability == {}
    assert len(read_events(tmp_path / "run" / "version_0").Images("views/test_reliability")) == 1


# ------------------------------------------------------------------------------------- a quickstart run


def test_the_quickstart_run_logs_every_view_and_an_hparams_entry(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, *FIGURES, "--trainer.max_epochs=4", "--trainer.limit_train_batches=5",
                     "--views.every_n_epochs=2"]) == 0
    run = tmp_path / "logs" / "quickstart" / "version_0"
    events = read_events(run)
    steps_per_epoch = 5

    # The training-set views after epochs 2 and 4; the test at the end reuses epoch 4's (same weights).
    steps = {tag: [image.step for image in events.Images(tag)] for tag in events.Tags()["images"]}
    assert steps == {
        "views/train_confusion_vs_T": [2 * steps_per_epoch, 4 * steps_per_epoch],
        "views/test_reliability": [4 * steps_per_epoch],
        "views/test_per_class_acc": [4 * steps_per_epoch],
    }
    for tag in steps:
        assert all(image.encoded_image_string.startswith(b"\x89PNG") for image in events.Images(tag))
    # Four panels side by side (the raw model and three temperatures), each a diagram over a count strip.
    (reliability,) = events.Images("views/test_reliability")
    assert reliability.width > 2 * reliability.height
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

    # What the reliability panels show, recomputed from the final weights, is what the run logged: test/ece
    # for the raw model, test/ece_scaled_<name> after each temperature.
    model = Classifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    datamodule = NoisyLabelDataModule(dataset=Digits(), noise=SymmetricNoise(0.4), batch_size=64)
    datamodule.prepare_data()
    datamodule.setup("validate")
    datamodule.setup("test")
    temperatures = TemperatureScaling().fit(model, datamodule)
    logged = scalars(run)
    assert all(logged[f"test/temperature_{name}"][-1] == pytest.approx(t, rel=1e-5) for name, t in temperatures.items())
    logits = predict_logits(model, datamodule, datamodule.test_set)
    panels = reliability_panels(logits, datamodule.test_set.clean, BINS, temperatures)
    assert panels[0].ece == pytest.approx(logged["test/ece"][-1], abs=1e-6)
    for panel in panels[1:]:
        assert panel.ece == pytest.approx(logged[f"test/ece_scaled_{panel.name}"][-1], abs=1e-6)


def test_figures_false_skips_matplotlib_and_keeps_the_other_views(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--views.figures=false", "--trainer.max_epochs=2",
                     "--trainer.limit_train_batches=5", "--views.every_n_epochs=1"]) == 0
    events = read_events(tmp_path / "logs" / "quickstart" / "version_0")
    assert events.Tags()["images"] == []
    assert [h.step for h in events.Histograms("views/train_max_prob/clean")] == [5, 10]
    assert "views/test_per_class_acc/text_summary" in events.Tags()["tensors"]
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")


def test_views_leave_training_unchanged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    short = ["--config", QUICKSTART, *QUIET, *FIGURES, "--trainer.max_epochs=2", "--trainer.limit_train_batches=5",
             "--trainer.deterministic=true", "--test_after_fit=false"]
    assert run_main(["fit", *short, "--views.every_n_epochs=1"]) == 0
    assert run_main(["fit", *short, "--views.every_n_epochs=0"]) == 0
    with_views, without = (tmp_path / "logs" / "quickstart" / f"version_{i}" for i in range(2))
    assert read_events(with_views).Tags()["images"] and not read_events(without).Tags()["images"]
    assert scalars(with_views) == scalars(without)
