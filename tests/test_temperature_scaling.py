"""lsl.temperature_scaling.TemperatureScaling: the three temperatures every test logs, checked against the
library fits by hand on the same checkpoint and splits; what it refuses before a run starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICKSTART, QUIET, run_main, scalars

from lsl.calibration import expected_calibration_error
from lsl.data import Digits, NoisyLabelDataModule
from lsl.errors import ConfigError
from lsl.inference import CollectedPredictions, predict_logits
from lsl.module import Classifier
from lsl.noise import SymmetricNoise
from lsl.temperature import fit_temperature_noise_aware, fit_temperature_noisy, fit_temperature_oracle
from lsl.temperature_scaling import FITS, TemperatureScaling, scaled_metrics

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*The number of training batches.*"),
]

SHORT = [*QUIET, "--trainer.max_epochs=3", "--trainer.limit_train_batches=6"]
TAGS = [f"{kind}_{name}" for name in FITS for kind in ("temperature", "ece_scaled", "nll_scaled")]


def quickstart_data() -> NoisyLabelDataModule:
    """The quickstart's data, set up (it reads the same noisy-label artifact as the run, under data/)."""
    data = NoisyLabelDataModule(dataset=Digits(), noise=SymmetricNoise(0.4), noise_seed=0, val_fraction=0.1,
                                batch_size=64)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    return data


def last(values: dict[str, list[float]], tag: str) -> float:
    return values[tag][-1]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short quickstart fit that also keeps and tests its best-validation checkpoint."""
    root = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert run_main(["fit", "--config", QUICKSTART, *SHORT, "--checkpoint.monitor=val/acc_noisy",
                         "--checkpoint.mode=max", "--checkpoint.save_top_k=1"]) == 0
    return root


def test_lsl_test_on_a_checkpoint_logs_the_three_temperatures_and_the_calibration_after_each(
        quickstart_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(quickstart_run)
    checkpoint = quickstart_run / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", str(checkpoint)]) == 0
    logged = scalars(quickstart_run / "logs" / "quickstart" / "version_1")
    assert all(f"test/{tag}" in logged for tag in TAGS), sorted(logged)

    # The same numbers by hand: the library's fits on the validation split of the same data, applied to the test set.
    model = Classifier.load_from_checkpoint(checkpoint)
    data = quickstart_data()
    val_logits = predict_logits(model, data, data.val_set)
    val = data.val_set
    expected = {"noisy": fit_temperature_noisy(val_logits, val.noisy),
                "noise_aware": fit_temperature_noise_aware(val_logits, val.noisy, data.transition_matrix),
                "oracle": fit_temperature_oracle(val_logits, val.clean)}
    test_logits, test_labels = predict_logits(model, data, data.test_set), data.test_set.clean
    for name, temperature in expected.items():
        assert last(logged, f"test/temperature_{name}") == pytest.approx(temperature, rel=1e-6)
        by_hand = scaled_metrics(test_logits, test_labels, temperature, bins=15)
        assert last(logged, f"test/ece_scaled_{name}") == pytest.approx(by_hand["ece"], rel=1e-5, abs=1e-7)
        assert last(logged, f"test/nll_scaled_{name}") == pytest.approx(by_hand["nll"], rel=1e-5)

    # At t = 1 the scaled path gives test/ece and test/nll themselves: one binning, one set of predictions.
    raw = scaled_metrics(test_logits, test_labels, 1.0, bins=15)
    assert last(logged, "test/ece") == pytest.approx(raw["ece"], rel=1e-5)
    assert last(logged, "test/nll") == pytest.approx(raw["nll"], rel=1e-5)
    # Under 40% noise the three disagree, and the oracle is fitted on the validation labels, not the test set's.
    assert expected["noisy"] > 1.2 * expected["oracle"]
    assert abs(fit_temperature_oracle(test_logits, test_labels) - expected["oracle"]) > 1e-3


def test_fit_logs_the_temperatures_of_the_final_and_of_the_best_validation_weights(quickstart_run: Path) -> None:
    logged = scalars(quickstart_run / "logs" / "quickstart" / "version_0")
    for prefix in ("test/", "test_best/"):
        assert all(f"{prefix}{tag}" in logged for tag in TAGS), prefix
        for name in FITS:
            assert 1e-3 < last(logged, f"{prefix}temperature_{name}") < 1e4
    # An oracle temperature brings the ECE down: it is fitted for exactly the labels the test set holds.
    assert last(logged, "test/ece_scaled_oracle") < last(logged, "test/ece")


def test_a_transition_file_replaces_the_datas_matrix_in_the_noise_aware_fit(quickstart_run: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(quickstart_run)
    checkpoint = quickstart_run / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    np.save(quickstart_run / "identity.npy", np.eye(10))
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", str(checkpoint),
                     "--temperature.transition", "identity.npy", "--trainer.logger.init_args.name=identity"]) == 0
    logged = scalars(quickstart_run / "logs" / "identity" / "version_0")
    # With T = I the corrected likelihood is the plain one: the noise-aware fit is the noisy one.
    assert last(logged, "test/temperature_noise_aware") == pytest.approx(last(logged, "test/temperature_noisy"),
                                                                         rel=1e-6)
    data_fit = scalars(quickstart_run / "logs" / "quickstart" / "version_0")
    assert last(data_fit, "test/temperature_noise_aware") < 0.8 * last(logged, "test/temperature_noise_aware")


def test_a_fit_that_stops_at_a_bound_is_reported(quickstart_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(quickstart_run)
    checkpoint = quickstart_run / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    fitted = scalars(quickstart_run / "logs" / "quickstart" / "version_0")
    lower = 1.5 * last(fitted, "test/temperature_oracle")  # the oracle's minimum is now outside the interval
    assert lower < 1.0
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", str(checkpoint),
                     f"--temperature.bounds=[{lower}, 50.0]", "--trainer.logger.init_args.name=bounded"]) == 0
    error = capsys.readouterr().err
    assert "lsl: warning: temperature scaling:" in error and "oracle t = " in error, error
    assert "is at the edge of temperature.bounds" in error
    logged = scalars(quickstart_run / "logs" / "bounded" / "version_0")
    assert last(logged, "test/temperature_oracle") == pytest.approx(lower, rel=1e-6)


def test_no_validation_split_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", QUICKSTART, *SHORT, "--data.init_args.val_fraction=0.0"]) == 2
    error = capsys.readouterr().err
    assert "lsl: error:" in error and "val_fraction" in error and "--temperature.enabled=false" in error, error
    assert "Traceback" not in error and not (tmp_path / "logs").exists()

    assert run_main(["fit", "--config", QUICKSTART, *SHORT, "--data.init_args.val_fraction=0.0",
                     "--temperature.enabled=false"]) == 0
    logged = scalars(tmp_path / "logs" / "quickstart" / "version_0")
    assert "test/acc" in logged and not any("temperature" in tag for tag in logged)


def test_a_transition_file_that_does_not_fit_the_classes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "three.npy", np.eye(3))
    assert run_main(["fit", "--config", QUICKSTART, *SHORT, "--temperature.transition=three.npy"]) == 2
    error = capsys.readouterr().err
    assert "lsl: error:" in error and "three.npy" in error and "Traceback" not in error, error
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("bounds", [(2.0, 10.0), (0.1, 0.9), (0.0, 10.0), (float("nan"), 10.0)])
def test_bounds_that_leave_out_the_unscaled_model_are_refused(bounds: tuple[float, float]) -> None:
    with pytest.raises(ConfigError, match="bounds"):
        TemperatureScaling(bounds=bounds)


def test_scaled_metrics_at_t_1_are_the_raw_ece_and_nll() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(300, 5, generator=generator)
    targets = torch.randint(0, 5, (300,), generator=generator)
    probabilities = logits.double().softmax(dim=1)
    confidence, predictions = probabilities.max(dim=1)
    raw = scaled_metrics(logits, targets, 1.0, bins=15)
    assert raw["ece"] == pytest.approx(expected_calibration_error(confidence, predictions == targets, 15).item())
    assert raw["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), targets).item())
    # A temperature changes the calibration, never the predictions.
    assert scaled_metrics(logits, targets, 3.0, bins=15)["ece"] != pytest.approx(raw["ece"])


class _Gathering:
    """Stands in for a LightningModule's ``all_gather`` over ``ranks`` processes holding the same batch: DDP
    stacks one block per rank (``ranks=1``: DDP with one process, configs/hardware/ddp.yaml on a one-GPU
    machine); ``ranks=0`` is a strategy without a process group, which returns the tensor as it is."""

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([tensor] * self.ranks) if self.ranks else tensor


@pytest.mark.parametrize("ranks", [0, 1, 2], ids=["no process group", "DDP, one process", "DDP, two processes"])
def test_collected_predictions_are_one_row_per_image_and_rank_whatever_the_strategy(ranks: int) -> None:
    logits, targets = torch.randn(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    collected = CollectedPredictions()
    collected.add(logits[:4].half(), targets[:4])
    collected.add(logits[4:].half(), targets[4:])
    gathered_logits, gathered_targets = collected.gather(_Gathering(ranks))
    copies = max(ranks, 1)
    assert gathered_logits.dtype == torch.float32 and gathered_logits.shape == (7 * copies, 3)
    torch.testing.assert_close(gathered_logits, logits.half().float().repeat(copies, 1))
    assert gathered_targets.tolist() == targets.tolist() * copies
    assert not collected  # a collective step drops what it kept
