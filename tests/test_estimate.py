"""Estimating T with Patrini et al.'s anchor points: the estimator on synthetic posteriors, and `lsl estimate-t`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cli import QUICKSTART, QUIET, assert_clean_failure, run_main, scalars

from lsl import Classifier, ConfigError, ForwardCorrection
from lsl.distill import file_sha256
from lsl.estimate import anchor_points, estimate_transition_matrix, estimation_error
from lsl.noise import PairFlipNoise, SymmetricNoise, validate_transition_matrix

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
    assert anchor_points(probabilities, 50.0).tolist() == [3, 1]  # "higher" median: 0.7 and 0.5


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
