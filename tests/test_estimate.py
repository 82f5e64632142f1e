"""Estimating T with Patrini et al.'s anchor points: the estimator on synthetic posteriors, and `lsl estimate-t`."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from conftest import QUICKSTART, QUIET, assert_clean_failure, run_main, scalars

from lsl import Classifier, ConfigError, CrossEntropy, ForwardCorrection
from lsl.estimate import anchor_points, estimate_transition_matrix, estimation_error
from lsl.estimate.command import load_data_module, load_model, write_estimate
from lsl.files import file_sha256
from lsl.inference import predict_logits
from lsl.noise import PairFlipNoise, SymmetricNoise, validate_transition_matrix
from lsl.temperature import fit_temperature_noisy, scaled_probabilities

NUM_CLASSES = 6
# Tolerance of the 97th-percentile estimate below: its anchors are near-anchors, whose clean posterior
# puts at least 0.99 on their class, so each entry of a row is off by at most about 0.01.
TOLERANCE = 0.02


def known_transition_matrix() -> np.ndarray:
    """An asymmetric, diagonally dominant T: pair flips of 30% plus a little uniform noise."""
    pair = PairFlipNoise(0.3).transition_matrix(NUM_CLASSES)
    return 0.9 * pair + 0.1 * SymmetricNoise(1.0, convention="redraw").transition_matrix(NUM_CLASSES)


def clean_posteriors(num_samples: int, seed: int = 0) -> np.ndarray:
    """Peaked Dirichlet posteriors: many samples are nearly certain of their class, as anchor points need."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(NUM_CLASSES, 0.05), size=num_samples)


def noisy_posterior_model(clean: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """What a perfect model of the noisy labels outputs: p(noisy | x) = T^T p(clean | x)."""
    return clean @ transition


def test_the_plain_anchor_recovers_t_exactly_when_exact_anchors_exist() -> None:
    transition = known_transition_matrix()
    clean = np.concatenate([clean_posteriors(2000), np.eye(NUM_CLASSES)])  # one exact anchor per class

    estimate, anchors = estimate_transition_matrix(noisy_posterior_model(clean, transition), percentile=100.0)

    np.testing.assert_allclose(estimate, transition, atol=1e-12)
    assert (clean[anchors, np.arange(NUM_CLASSES)] > 1 - 1e-9).all()  # each anchor is surely of its class


def test_the_97th_percentile_estimate_is_within_tolerance_of_t() -> None:
    transition = known_transition_matrix()
    probabilities = noisy_posterior_model(clean_posteriors(20_000), transition)

    estimate, _ = estimate_transition_matrix(probabilities)  # percentile 97 by default

    validate_transition_matrix(estimate, NUM_CLASSES)
    error = estimation_error(estimate, transition)
    assert error["mean_abs_error"] < TOLERANCE / 2
    assert np.abs(estimate - transition).max() < TOLERANCE
    assert error["max_row_l1_error"] < 2 * TOLERANCE


def test_the_percentile_ignores_an_outlier_that_the_maximum_picks() -> None:
    transition = known_transition_matrix()
    probabilities = noisy_posterior_model(clean_posteriors(20_000), transition)
    outlier = np.full(NUM_CLASSES, 0.0)
    outlier[0] = 1.0  # a sample the model is wrongly certain about: no clean sample of class 0 gives p_0 = 1
    probabilities = np.concatenate([probabilities, outlier[None]])

    plain, plain_anchors = estimate_transition_matrix(probabilities, percentile=100.0)
    robust, _ = estimate_transition_matrix(probabilities, percentile=97.0)

    assert plain_anchors[0] == len(probabilities) - 1
    assert np.abs(plain[0] - transition[0]).sum() > 0.5
    assert np.abs(robust[0] - transition[0]).sum() < 2 * TOLERANCE


def test_anchor_points_are_the_samples_at_the_percentile() -> None:
    probabilities = np.array([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    assert anchor_points(probabilities, 100.0).tolist() == [2, 0]
    # Among the samples predicted as each class: class 0 has rows 1 (a tie goes to 0), 2, 3, whose "higher"
    # median of p_0 is 0.7 (row 3); class 1 has row 0 alone.
    assert anchor_points(probabilities, 50.0).tolist() == [3, 0]


def confident_clean_posteriors(num_samples: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Each sample's clean class gets 1 - eps (eps uniform in [0, 0.2]), the rest eps spread at random."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(num_classes, size=num_samples)
    eps = rng.uniform(0.0, 0.2, size=(num_samples, 1))
    posteriors = eps * rng.dirichlet(np.ones(num_classes), size=num_samples)
    posteriors[np.arange(num_samples), classes] += 1.0 - eps[:, 0]
    return posteriors


def test_the_default_percentile_finds_the_anchors_of_100_classes() -> None:
    """K = 100: each class is 1% of the data, so the 97th percentile of p(noisy = i | x) over all samples
    lands on a sample of another class; among the samples predicted as i it is a near-anchor of i."""
    transition = SymmetricNoise(0.2).transition_matrix(100)
    probabilities = noisy_posterior_model(confident_clean_posteriors(30_000, 100), transition)

    estimate, anchors = estimate_transition_matrix(probabilities)  # percentile 97 by default

    assert (probabilities[anchors].argmax(axis=1) == np.arange(100)).all()
    error = estimation_error(estimate, transition)
    assert np.abs(np.diag(estimate) - 0.8).max() < 0.02, np.diag(estimate)
    assert error["max_row_l1_error"] < 0.05, error


def test_a_class_that_no_sample_is_predicted_as_falls_back_to_all_samples() -> None:
    from lsl.estimate import find_anchors

    probabilities = np.array([[0.8, 0.15, 0.05], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]])

    anchors, fallback = find_anchors(probabilities, 100.0)

    assert fallback == [1]  # no row has its maximum at class 1
    assert anchors.tolist() == [0, 1, 2]  # class 1: the largest p_1 over all samples


def test_estimation_error_is_the_mean_absolute_and_the_largest_row_l1_difference() -> None:
    true = np.eye(3)
    estimate = np.eye(3)
    estimate[1] = [0.1, 0.8, 0.1]
    error = estimation_error(estimate, true)
    assert error["mean_abs_error"] == pytest.approx(0.4 / 9)
    assert error["max_row_l1_error"] == pytest.approx(0.4)


@pytest.mark.parametrize("probabilities, percentile", [
    (np.ones((0, 3)), 97.0), (np.ones(3), 97.0), (np.array([[0.5, np.nan]]), 97.0), (np.eye(3), 0.0),
    (np.eye(3), 101.0),
])
def test_bad_estimator_input_raises_config_error(probabilities: np.ndarray, percentile: float) -> None:
    with pytest.raises(ConfigError):
        estimate_transition_matrix(probabilities, percentile)


# ------------------------------------------------------------------------------- the two-stage recipe


def test_estimate_t_from_a_cross_entropy_run_then_forward_correction_with_it(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cross_entropy = ['--model.init_args.loss={"class_path": "lsl.losses.CrossEntropy"}']
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, *cross_entropy, "--trainer.max_epochs=2",
                     "--trainer.limit_train_batches=10", "--test_after_fit=false", "--views.every_n_epochs=0"]) == 0
    run = tmp_path / "logs" / "quickstart" / "version_0"
    checkpoint = run / "checkpoints" / "last.ckpt"
    capsys.readouterr()

    assert run_main(["estimate-t", "--ckpt", str(checkpoint), "--config", str(run / "config.yaml"),
                     "--out", "estimates/T.npy"]) == 0

    printed = capsys.readouterr()
    assert "error against the true T" in printed.out and "warning" not in printed.err
    estimate = np.load(tmp_path / "estimates" / "T.npy")
    sidecar = json.loads((tmp_path / "estimates" / "T.json").read_text())
    true = SymmetricNoise(0.4).transition_matrix(10)
    assert sidecar["checkpoint"] == {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint)}
    assert sidecar["data"]["split"] == "train" and sidecar["data"]["num_samples"] == 1293  # 1,437 less 10% val
    assert sidecar["data"]["noisy_labels"]["sha256"] == json.loads(
        next((tmp_path / "data" / "noisy_labels").glob("*.json")).read_text())["sha256"]
    np.testing.assert_allclose(sidecar["true_transition_matrix"], true)
    np.testing.assert_allclose(sidecar["transition_matrix"], estimate)
    assert sidecar["error"] == pytest.approx(estimation_error(estimate, true))
    anchors = sidecar["anchor_sample_indices"]  # indices into the 1,437-image training split
    assert len(anchors) == 10 and all(0 <= index < 1437 for index in anchors)
    np.testing.assert_allclose(ForwardCorrection(path="estimates/T.npy").transition_matrix.double().numpy(),
                               estimate, atol=1e-7)
    assert sidecar["temperature"] == {"fit": "none", "value": 1.0}

    # --temperature val: the logits divided by the temperature fitted to the val split's noisy labels first.
    assert run_main(["estimate-t", "--ckpt", str(checkpoint), "--config", str(run / "config.yaml"),
                     "--out", "estimates/T_val.npy", "--temperature", "val"]) == 0
    assert "fitted to the val split's noisy labels" in capsys.readouterr().out
    scaled = json.loads((tmp_path / "estimates" / "T_val.json").read_text())
    datamodule, config = load_data_module(run / "config.yaml")
    datamodule.augment = False
    datamodule.setup("fit")
    model = load_model(checkpoint, config, torch.device("cpu"))
    temperature = fit_temperature_noisy(predict_logits(model, datamodule, datamodule.val_set), datamodule.val_set.noisy)
    assert scaled["temperature"] == {"fit": "val", "value": pytest.approx(temperature)} and temperature != 1.0
    probabilities = scaled_probabilities(predict_logits(model, datamodule, datamodule.train_set), temperature)
    expected, _ = estimate_transition_matrix(probabilities)
    np.testing.assert_allclose(np.load(tmp_path / "estimates" / "T_val.npy"), expected, atol=1e-6)
    assert not np.allclose(expected, estimate, atol=1e-3)

    # The checkpoint records its noisy labels: a config with other labels (another noise seed) is refused.
    other = yaml.safe_load((run / "config.yaml").read_text())
    other["data"]["init_args"]["noise_seed"] = 1
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert run_main(["estimate-t", "--ckpt", str(checkpoint), "--config", "other.yaml", "--out", "other/T.npy"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "other noisy labels", "config.yaml of the run")
    assert not (tmp_path / "other").exists()

    # Stage two: forward correction with the estimate, end to end.
    corrected = ('--model.init_args.loss={"class_path": "lsl.losses.ForwardCorrection", '
                 '"init_args": {"alpha": null, "path": "estimates/T.npy"}}')
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, corrected, "--trainer.max_epochs=1",
                     "--trainer.limit_train_batches=5", "--views.every_n_epochs=0"]) == 0
    second = tmp_path / "logs" / "quickstart" / "version_1"
    assert np.isfinite(scalars(second)["test/acc"]).all()
    model = Classifier.load_from_checkpoint(second / "checkpoints" / "last.ckpt")
    assert isinstance(model.loss, ForwardCorrection) and model.loss.has_own_matrix
    np.testing.assert_allclose(model.loss.transition_matrix.double().numpy(), estimate, atol=1e-7)


BAD_ARGUMENTS = {
    "not .npy": (["--out", "T.csv"], "must end in .npy"),
    "no checkpoint": (["--ckpt", "missing.ckpt"], "missing.ckpt"),
    "no config": (["--config", "missing.yaml"], "missing.yaml"),
    "percentile 0": (["--percentile", "0"], "percentile"),
    "temperature of another kind": (["--temperature", "test"], "temperature: Expected"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_estimate_t_arguments_exit_2_and_write_nothing(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.ckpt").write_bytes(b"not read")
    (tmp_path / "config.yaml").write_text(Path(QUICKSTART).read_text())
    defaults = {"--ckpt": "run.ckpt", "--config": "config.yaml", "--out": "T.npy"}
    overrides, expected = BAD_ARGUMENTS[case]
    defaults.update(dict(zip(overrides[::2], overrides[1::2])))
    before = set(tmp_path.iterdir())

    assert run_main(["estimate-t", *[item for pair in defaults.items() for item in pair]]) == 2

    assert_clean_failure(2, capsys.readouterr().err, expected)
    assert set(tmp_path.iterdir()) == before


# ------------------------------------------------------------------- where --out cannot go (issue 15)


def _estimate_t(tmp_path: Path, out: str, ckpt: str = "run.ckpt") -> list[str]:
    (tmp_path / "config.yaml").write_text(Path(QUICKSTART).read_text())
    return ["--ckpt", ckpt, "--config", "config.yaml", "--out", out]


@pytest.mark.parametrize("case", ["parent is a file", "grandparent is a file", "out is a folder"])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(case: str, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder.npy").mkdir()
    out = {"parent is a file": "afile/T.npy", "grandparent is a file": "afile/deeper/T.npy",
           "out is a folder": "folder.npy"}[case]
    arguments = _estimate_t(tmp_path, out, ckpt="missing.ckpt")
    before = sorted(tmp_path.rglob("*"))

    assert run_main(["estimate-t", *arguments]) == 2

    err = capsys.readouterr().err
    assert_clean_failure(2, err, "--out")
    assert err.strip().count("\n") == 0 and "missing.ckpt" not in err  # refused before the checkpoint is read
    assert sorted(tmp_path.rglob("*")) == before


def test_an_out_folder_without_write_permission_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    import os

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shared").mkdir()
    real_access = os.access
    # The tests may run as root, for whom every folder is writable: the OS says this one is not.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "shared" and real_access(path, mode))

    assert run_main(["estimate-t", *_estimate_t(tmp_path, str(tmp_path / "shared" / "new" / "T.npy"))]) == 2

    assert_clean_failure(2, capsys.readouterr().err, "the folder", "shared' is not writable: give --out in a folder")
    assert list((tmp_path / "shared").iterdir()) == []


def test_a_failed_write_is_a_config_error_and_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    import os

    def full_disk(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ConfigError, match="No space left on device.*give --out"):
        write_estimate(tmp_path / "T.npy", np.eye(2), {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_estimate_files_are_created_like_normal_files_under_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    previous = os.umask(0o002)
    try:
        sidecar = write_estimate(tmp_path / "T.npy", np.eye(2), {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "T.npy").stat().st_mode) == 0o664
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o664
    assert json.loads(sidecar.read_text()) == {"a": 1}
    np.testing.assert_array_equal(np.load(tmp_path / "T.npy"), np.eye(2))


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "empty"])
def test_a_damaged_checkpoint_is_one_clean_line(damage: str, tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, tmp_path / "whole.ckpt")
    content = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "run.ckpt").write_bytes({"truncated": content[: len(content) // 2],
                                         "not a checkpoint": b"garbage, not a zip and not a pickle",
                                         "empty": b""}[damage])

    assert run_main(["estimate-t", *_estimate_t(tmp_path, "out/T.npy")]) == 2

    err = capsys.readouterr().err
    assert_clean_failure(2, err, "run.ckpt", "damaged")
    error_lines = [line for line in err.splitlines() if line.strip()]
    assert error_lines[-1].startswith("lsl: error:") and "weights_only" not in err, err
    assert sum(line.startswith("lsl: error:") for line in error_lines) == 1
    assert "\n" not in err[err.index("lsl: error:"):].strip(), err
    assert not (tmp_path / "out").exists()


class NeverSeven(pl.LightningModule):
    """A stand-in for a model that left one class unpredicted: it predicts class (pixel sum) mod 10 of a
    Digits image, with 8 in place of 7, so every class but 7 is some sample's argmax."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = CrossEntropy()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        predicted = (images.flatten(1).sum(dim=1) * 10).floor().long() % 10
        return 4.0 * torch.nn.functional.one_hot(torch.where(predicted == 7, 8, predicted), 10).float()


def test_estimate_t_warns_in_the_sidecar_about_a_class_no_sample_is_predicted_as(tmp_path: Path, monkeypatch,
                                                                                   capsys) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": NeverSeven().state_dict(), "hyper_parameters": {},
                "pytorch-lightning_version": pl.__version__}, tmp_path / "run.ckpt")
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    config["model"] = {"class_path": f"{__name__}.NeverSeven"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))

    assert run_main(["estimate-t", "--ckpt", "run.ckpt", "--config", "run.yaml", "--out", "T.npy",
                     "--device", "cpu"]) == 0

    sidecar = json.loads((tmp_path / "T.json").read_text())
    assert sidecar["anchor_fallback_classes"] == [7]
    assert sidecar["model_loss"] == "CrossEntropy"
    assert "class 7" in sidecar["warnings"][0] and "unreliable" in sidecar["warnings"][0]
    assert "lsl: warning: no sample is predicted as class 7" in capsys.readouterr().err
    anchors = sidecar["anchor_sample_indices"]  # each class's anchor is a sample predicted as that class
    assert len(anchors) == 10 and len(set(anchors[:7] + anchors[8:])) == 9
