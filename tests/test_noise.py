"""Noise models, their statistics, and the noisy-label artifact (lsl.noise)."""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from lsl.errors import ConfigError
from lsl.noise import (
    AsymmetricCIFAR10Noise,
    HumanNoise,
    MatrixNoise,
    NoiseModel,
    NoNoise,
    PairFlipNoise,
    SymmetricNoise,
    load_or_create_noisy_labels,
    realised_flip_rate,
    realised_transition_matrix,
    symmetric_transition_matrix,
)

K = 10
N = 20_000
CIFAR_N_DIR = Path(__file__).resolve().parents[2] / "shared/data/cifar-n"


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return np.random.default_rng(1234).integers(0, K, size=N)


@pytest.fixture
def matrix_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    transition = 0.7 * np.eye(K) + 0.3 * rng.dirichlet(np.ones(K), size=K)
    path = tmp_path / "T.csv"
    np.savetxt(path, transition, delimiter=",")
    return path


def all_models(matrix_file: Path) -> list[NoiseModel]:
    return [
        NoNoise(),
        SymmetricNoise(0.2),
        SymmetricNoise(0.2, convention="redraw"),
        AsymmetricCIFAR10Noise(0.4),
        PairFlipNoise(0.3),
        MatrixNoise(str(matrix_file)),
    ]


def four_standard_errors(transition: np.ndarray, clean: np.ndarray) -> np.ndarray:
    per_class = np.bincount(clean, minlength=transition.shape[0])[:, None]
    return 4 * np.sqrt(transition * (1 - transition) / per_class) + 1e-12


# ------------------------------------------------------------------ transition matrices


def test_every_model_gives_a_row_stochastic_float64_matrix(matrix_file):
    for model in all_models(matrix_file):
        transition = model.transition_matrix(K)
        assert transition.shape == (K, K) and transition.dtype == np.float64, model
        assert (transition >= 0).all(), model
        np.testing.assert_allclose(transition.sum(axis=1), 1.0, atol=1e-12, err_msg=repr(model))


def test_symmetric_flip_and_redraw_entries():
    rate = 0.2
    flip = SymmetricNoise(rate, convention="flip").transition_matrix(K)
    redraw = SymmetricNoise(rate, convention="redraw").transition_matrix(K)
    off_diagonal = ~np.eye(K, dtype=bool)
    np.testing.assert_allclose(np.diag(flip), 1 - rate)
    np.testing.assert_allclose(flip[off_diagonal], rate / (K - 1))
    np.testing.assert_allclose(np.diag(redraw), 1 - rate + rate / K)
    np.testing.assert_allclose(redraw[off_diagonal], rate / K)


def test_flip_rate_rho_equals_redraw_alpha_k_rho_over_k_minus_1():
    rho = 0.3
    flip = SymmetricNoise(rho, convention="flip").transition_matrix(K)
    redraw = SymmetricNoise(K * rho / (K - 1), convention="redraw").transition_matrix(K)
    np.testing.assert_allclose(flip, redraw, atol=1e-12)


def test_pair_flip_moves_class_i_to_the_next_one():
    rate = 0.3
    transition = PairFlipNoise(rate).transition_matrix(4)
    for i in range(4):
        expected = np.zeros(4)
        expected[i] = 1 - rate
        expected[(i + 1) % 4] = rate
        np.testing.assert_allclose(transition[i], expected)


def test_asymmetric_cifar10_flips_the_patrini_pairs_only():
    rate = 0.4
    transition = AsymmetricCIFAR10Noise(rate).transition_matrix(K)
    flips = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    for i in range(K):
        expected = np.zeros(K)
        if i in flips:
            expected[i] = 1 - rate
            expected[flips[i]] = rate
        else:
            expected[i] = 1.0
        np.testing.assert_allclose(transition[i], expected, err_msg=f"row {i}")


def test_no_noise_is_the_identity_and_keeps_labels(clean):
    np.testing.assert_array_equal(NoNoise().transition_matrix(K), np.eye(K))
    np.testing.assert_array_equal(NoNoise().corrupt(clean, K, seed=0), clean)


def test_matrix_noise_reads_the_file(matrix_file):
    expected = np.loadtxt(matrix_file, delimiter=",")
    np.testing.assert_allclose(MatrixNoise(str(matrix_file)).transition_matrix(K), expected)


# ------------------------------------------------------------------ drawn labels


def test_realised_matrix_is_within_four_standard_errors_of_t(clean, matrix_file):
    for model in all_models(matrix_file):
        noisy = model.corrupt(clean, K, seed=3)
        assert noisy.dtype == np.int64 and noisy.shape == clean.shape
        transition = model.transition_matrix(K)
        realised = realised_transition_matrix(clean, noisy, K)
        assert np.all(np.abs(realised - transition) <= four_standard_errors(transition, clean)), model
        np.testing.assert_allclose(realised, transition, atol=0.05, err_msg=repr(model))


def test_realised_flip_rate_matches_the_nominal_rate(clean, matrix_file):
    for model in all_models(matrix_file):
        nominal = float(np.mean(1 - np.diag(model.transition_matrix(K))[clean]))
        realised = realised_flip_rate(clean, model.corrupt(clean, K, seed=5))
        assert abs(realised - nominal) <= 4 * np.sqrt(nominal * (1 - nominal) / N) + 1e-12, model


def test_redraw_changes_only_rate_times_k_minus_1_over_k_of_the_labels(clean):
    rate = 0.2
    realised = realised_flip_rate(clean, SymmetricNoise(rate, "redraw").corrupt(clean, K, seed=0))
    effective = rate * (K - 1) / K
    assert abs(realised - effective) <= 4 * np.sqrt(effective * (1 - effective) / N)
    flip_realised = realised_flip_rate(clean, SymmetricNoise(rate, "flip").corrupt(clean, K, seed=0))
    assert abs(flip_realised - rate) <= 4 * np.sqrt(rate * (1 - rate) / N)


def test_flipped_labels_never_keep_their_class_under_flip_convention(clean):
    noisy = SymmetricNoise(1.0).corrupt(clean, K, seed=0)
    assert np.all(noisy != clean)
    assert set(np.unique(noisy)) == set(range(K))


def test_same_seed_same_labels_other_seed_other_labels(clean):
    model = SymmetricNoise(0.2)
    first = model.corrupt(clean, K, seed=11)
    np.testing.assert_array_equal(first, SymmetricNoise(0.2).corrupt(clean, K, seed=11))
    assert np.mean(first != model.corrupt(clean, K, seed=12)) > 0.1


def test_draw_ignores_global_numpy_and_torch_seeds(clean):
    model = PairFlipNoise(0.3)
    np.random.seed(0)
    torch.manual_seed(0)
    first = model.corrupt(clean, K, seed=2)
    np.random.seed(99)
    torch.manual_seed(99)
    np.random.random(1000)
    np.testing.assert_array_equal(first, model.corrupt(clean, K, seed=2))


def test_realised_statistics_on_a_hand_example():
    clean = np.array([0, 0, 0, 0, 2, 2])
    noisy = np.array([0, 1, 1, 0, 2, 0])
    realised = realised_transition_matrix(clean, noisy, 3)
    np.testing.assert_allclose(realised[0], [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(realised[1], [0.0, 0.0, 0.0])  # no clean-1 sample: row stays zero
    np.testing.assert_allclose(realised[2], [0.5, 0.0, 0.5])
    assert realised_flip_rate(clean, noisy) == pytest.approx(3 / 6)


# ------------------------------------------------------------------ spec and slug


def test_specs_are_json_and_slugs_are_distinct_and_filename_safe(matrix_file, tmp_path):
    other_matrix = tmp_path / "other" / "T.csv"
    other_matrix.parent.mkdir()
    np.savetxt(other_matrix, PairFlipNoise(0.1).transition_matrix(K), delimiter=",")
    models = all_models(matrix_file) + [MatrixNoise(str(other_matrix)), SymmetricNoise(0.3)]
    slugs = [model.slug() for model in models]
    assert len(set(slugs)) == len(slugs), slugs
    for model, slug in zip(models, slugs):
        assert slug.replace("-", "").replace(".", "").replace("_", "").isalnum(), slug
        spec = json.loads(json.dumps(model.spec()))
        assert {"name", "convention"} <= spec.keys()
    assert SymmetricNoise(0.2, "redraw").spec()["convention"] == "redraw"
    assert "redraw" in SymmetricNoise(0.2, "redraw").slug()
    assert SymmetricNoise(0.2).slug() == "symmetric-flip-0.2"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("rate", [1.5, -0.1])
@pytest.mark.parametrize("model", [SymmetricNoise, AsymmetricCIFAR10Noise, PairFlipNoise])
def test_rate_outside_0_1_is_refused_with_its_value(model, rate):
    with pytest.raises(ConfigError, match=rf"rate={rate}.*outside \[0, 1\]"):
        model(rate)


def test_other_bad_arguments_are_refused(clean):
    with pytest.raises(ConfigError, match="convention='uniform'"):
        SymmetricNoise(0.2, convention="uniform")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_classes=100"):
        AsymmetricCIFAR10Noise(0.2).transition_matrix(100)
    with pytest.raises(ConfigError, match="seed=-1"):
        SymmetricNoise(0.2).corrupt(clean, K, seed=-1)
    with pytest.raises(ConfigError, match="labels must lie in"):
        SymmetricNoise(0.2).corrupt(clean, 5, seed=0)


def test_matrix_noise_refuses_a_missing_or_non_stochastic_file(tmp_path, matrix_file):
    with pytest.raises(ConfigError, match="does not exist"):
        MatrixNoise(str(tmp_path / "absent.npy"))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((3, 3), 0.5))
    with pytest.raises(ConfigError, match="sums to 1.5"):
        MatrixNoise(str(bad))
    with pytest.raises(ConfigError, match="give a 5x5 matrix"):
        MatrixNoise(str(matrix_file)).transition_matrix(5)


# ------------------------------------------------------------------ the artifact


def create(noise: NoiseModel, clean: np.ndarray, directory: Path, seed: int = 0):
    return load_or_create_noisy_labels(noise, clean, K, dataset="toy", split="train", seed=seed, directory=directory)


def test_artifact_is_written_once_with_a_complete_sidecar(clean, tmp_path):
    noise = SymmetricNoise(0.2, "redraw")
    directory = tmp_path / "labels"
    artifact = create(noise, clean, directory, seed=4)
    assert artifact.path == directory / f"toy-train-{noise.slug()}-seed4.npy"
    assert sorted(p.name for p in directory.iterdir()) == [artifact.path.stem + ".json", artifact.path.name]
    np.testing.assert_array_equal(artifact.labels, noise.corrupt(clean, K, seed=4))
    np.testing.assert_array_equal(np.load(artifact.path), artifact.labels)

    metadata = json.loads(artifact.path.with_suffix(".json").read_text())
    assert metadata == artifact.metadata
    transition = noise.transition_matrix(K)
    assert metadata["dataset"] == "toy" and metadata["split"] == "train" and metadata["seed"] == 4
    assert metadata["num_classes"] == K and metadata["num_samples"] == N
    assert metadata["noise"] == noise.spec() and metadata["noise"]["convention"] == "redraw"
    assert metadata["nominal_rate"] == pytest.approx(np.mean(1 - np.diag(transition)[clean]))
    assert metadata["realised_rate"] == pytest.approx(realised_flip_rate(clean, artifact.labels))
    np.testing.assert_allclose(metadata["transition_matrix"], transition)
    np.testing.assert_allclose(
        metadata["realised_transition_matrix"], realised_transition_matrix(clean, artifact.labels, K)
    )
    assert artifact.sha256 == hashlib.sha256(artifact.labels.astype("<i8").tobytes()).hexdigest()
    assert metadata["clean_sha256"] == hashlib.sha256(clean.astype("<i8").tobytes()).hexdigest()


def test_second_call_reads_the_file_without_rewriting_it(clean, tmp_path):
    first = create(PairFlipNoise(0.3), clean, tmp_path)
    json_path = first.path.with_suffix(".json")
    stamps = (first.path.stat().st_mtime_ns, json_path.stat().st_mtime_ns)
    second = create(PairFlipNoise(0.3), clean, tmp_path)
    assert (first.path.stat().st_mtime_ns, json_path.stat().st_mtime_ns) == stamps
    np.testing.assert_array_equal(first.labels, second.labels)
    assert second.metadata["created"] == first.metadata["created"]


def test_other_seed_gives_another_artifact(clean, tmp_path):
    first = create(SymmetricNoise(0.2), clean, tmp_path, seed=0)
    second = create(SymmetricNoise(0.2), clean, tmp_path, seed=1)
    assert first.path != second.path and first.sha256 != second.sha256


def test_an_edited_label_fails_the_checksum(clean, tmp_path):
    artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    edited = artifact.labels.copy()
    edited[0] = (edited[0] + 1) % K
    np.save(artifact.path, edited)
    with pytest.raises(ConfigError, match=r"checksum.*delete .*\.npy.* and .*\.json"):
        create(SymmetricNoise(0.2), clean, tmp_path)


def test_a_truncated_npy_is_refused(clean, tmp_path):
    artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    content = artifact.path.read_bytes()
    artifact.path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ConfigError, match="unreadable or truncated"):
        create(SymmetricNoise(0.2), clean, tmp_path)


def test_a_missing_or_corrupt_sidecar_is_refused(clean, tmp_path):
    artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    json_path = artifact.path.with_suffix(".json")
    json_path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        create(SymmetricNoise(0.2), clean, tmp_path)
    json_path.unlink()
    with pytest.raises(ConfigError, match="sidecar .* is missing"):
        create(SymmetricNoise(0.2), clean, tmp_path)
    assert not json_path.exists()  # refused, not regenerated


def test_other_clean_labels_are_refused(clean, tmp_path):
    create(SymmetricNoise(0.2), clean, tmp_path)
    shuffled = np.random.default_rng(0).permutation(clean)
    with pytest.raises(ConfigError, match="other clean labels"):
        create(SymmetricNoise(0.2), shuffled, tmp_path)


def test_a_sidecar_without_labels_is_refilled_only_if_the_draw_agrees(clean, tmp_path):
    artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    artifact.path.unlink()
    again = create(SymmetricNoise(0.2), clean, tmp_path)
    np.testing.assert_array_equal(again.labels, artifact.labels)
    again.path.unlink()
    json_path = again.path.with_suffix(".json")
    json_path.write_text(json.dumps({**again.metadata, "sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="drawing again gives"):
        create(SymmetricNoise(0.2), clean, tmp_path)


def test_no_temporary_files_are_left_behind(clean, tmp_path):
    create(SymmetricNoise(0.2), clean, tmp_path, seed=0)
    create(SymmetricNoise(0.2), clean, tmp_path, seed=0)
    create(NoNoise(), clean, tmp_path, seed=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and all(name.endswith((".npy", ".json")) and not name.startswith(".") for name in names)


def _race_worker(directory: str, clean: np.ndarray, barrier, results) -> None:
    barrier.wait()
    artifact = load_or_create_noisy_labels(
        SymmetricNoise(0.4), clean, K, dataset="toy", split="train", seed=9, directory=directory
    )
    results.put(artifact.labels)


def test_racing_processes_end_with_one_valid_artifact(clean, tmp_path):
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    workers = [
        context.Process(target=_race_worker, args=(str(tmp_path), clean, barrier, results)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    labels = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    for other in labels[1:]:
        np.testing.assert_array_equal(labels[0], other)
    assert len(list(tmp_path.iterdir())) == 2
    reread = load_or_create_noisy_labels(
        SymmetricNoise(0.4), clean, K, dataset="toy", split="train", seed=9, directory=tmp_path
    )
    np.testing.assert_array_equal(reread.labels, labels[0])


# ------------------------------------------------------------------ CIFAR-N human noise


@pytest.fixture
def fake_cifar10n(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    clean_label = rng.integers(0, K, size=500)
    content = {"clean_label": clean_label}
    for key, rate in [("aggre_label", 0.1), ("worse_label", 0.4), ("random_label1", 0.2)]:
        content[key] = SymmetricNoise(rate).corrupt(clean_label, K, seed=len(key))
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(content, path)
    return path, content


def test_human_noise_returns_the_file_labels(fake_cifar10n):
    path, content = fake_cifar10n
    noise = HumanNoise(str(path), key="worse_label")
    noisy = noise.corrupt(content["clean_label"], K, seed=0)
    assert noisy.dtype == np.int64
    np.testing.assert_array_equal(noisy, content["worse_label"])
    np.testing.assert_array_equal(noise.corrupt(content["clean_label"], K, seed=1), noisy)
    np.testing.assert_allclose(
        noise.transition_matrix(K), realised_transition_matrix(content["clean_label"], noisy, K)
    )


def test_human_noise_artifact_round_trip(fake_cifar10n, tmp_path):
    path, content = fake_cifar10n
    artifact = load_or_create_noisy_labels(
        HumanNoise(str(path), "aggre_label"), content["clean_label"], K,
        dataset="cifar10", split="train", seed=0, directory=tmp_path / "labels",
    )
    np.testing.assert_array_equal(artifact.labels, content["aggre_label"])
    assert artifact.metadata["nominal_rate"] == pytest.approx(artifact.metadata["realised_rate"])


def test_a_subset_of_the_images_keeps_each_images_own_human_label(fake_cifar10n, tmp_path):
    path, content = fake_cifar10n
    noise = HumanNoise(str(path), "worse_label")
    rows = np.sort(np.random.default_rng(3).choice(500, 120, replace=False))
    clean = content["clean_label"][rows]
    np.testing.assert_array_equal(noise.corrupt_subset(clean, rows, K, seed=0), content["worse_label"][rows])
    artifact = load_or_create_noisy_labels(noise, clean, K, dataset="cifar10-subset120", split="train", seed=0,
                                           directory=tmp_path / "labels", rows=rows)
    np.testing.assert_array_equal(artifact.labels, content["worse_label"][rows])
    with pytest.raises(ConfigError, match="clean labels of the training subset differ"):
        noise.corrupt_subset(clean, np.roll(rows, 1), K, seed=0)
    with pytest.raises(ConfigError, match="does not fit"):
        noise.corrupt_subset(clean, rows + 500, K, seed=0)


def test_drawn_noise_on_a_subset_does_not_depend_on_which_images_it_holds():
    clean = np.random.default_rng(0).integers(0, K, size=200)
    noise = SymmetricNoise(0.4)
    for rows in (np.arange(200), np.arange(200) + 1000):
        np.testing.assert_array_equal(noise.corrupt_subset(clean, rows, K, seed=5), noise.corrupt(clean, K, seed=5))


def test_human_noise_unknown_key_lists_the_file_keys(fake_cifar10n):
    path, _ = fake_cifar10n
    with pytest.raises(ConfigError, match=r"key='noisy_label'.*aggre_label.*worse_label"):
        HumanNoise(str(path), key="noisy_label")


def test_human_noise_refuses_labels_that_do_not_line_up(fake_cifar10n):
    path, content = fake_cifar10n
    noise = HumanNoise(str(path))
    shuffled = np.random.default_rng(1).permutation(content["clean_label"])
    with pytest.raises(ConfigError, match="do not line up"):
        noise.corrupt(shuffled, K, seed=0)
    with pytest.raises(ConfigError, match="do not line up"):
        noise.corrupt(content["clean_label"][:-1], K, seed=0)


def test_human_noise_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist.*noisylabels\.com"):
        HumanNoise(str(tmp_path / "CIFAR-10_human.pt"))


def test_real_cifar10n_noise_rates():
    path = CIFAR_N_DIR / "CIFAR-10_human.pt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    for key, published_rate in [("worse_label", 0.402), ("aggre_label", 0.09)]:
        noise = HumanNoise(str(path), key=key)
        noisy = noise.corrupt(noise.clean_labels, K, seed=0)
        assert realised_flip_rate(noise.clean_labels, noisy) == pytest.approx(published_rate, abs=0.001)
        transition = noise.transition_matrix(K)
        nominal = np.mean(1 - np.diag(transition)[noise.clean_labels])
        assert nominal == pytest.approx(published_rate, abs=0.001)


# ------------------------------------------------------------------ the artifact store (issue 15)


def _edit_sidecar(json_path: Path, field: str, value) -> None:
    metadata = json.loads(json_path.read_text())
    *parents, last = field.split(".")
    target = metadata
    for parent in parents:
        target = target[parent]
    if isinstance(value, str) and value == "DELETE":
        del target[last]
    else:
        target[last] = value
    json_path.write_text(json.dumps(metadata, indent=1))


@pytest.mark.parametrize("field, value, named", [
    ("noise.rate", 0.3, "noise.rate is 0.3"),
    ("noise.convention", "redraw", "noise.convention"),
    ("nominal_rate", 0.5, "nominal_rate is 0.5"),
    ("dataset", "other", "dataset"),
    ("created", "2020-01-01T00:00:00+00:00", "changed after it was written"),
    ("lsl_version", "9.9", "changed after it was written"),
])
def test_a_sidecar_edited_by_hand_is_refused(clean, tmp_path, field, value, named):
    artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    labels_bytes = artifact.path.read_bytes()
    _edit_sidecar(artifact.metadata_path, field, value)

    with pytest.raises(ConfigError) as error:
        create(SymmetricNoise(0.2), clean, tmp_path)

    message = str(error.value)
    assert named in message and str(artifact.metadata_path) in message, message
    assert "delete" in message and "restore" in message and "\n" not in message
    assert artifact.path.read_bytes() == labels_bytes  # the labels were never touched


def test_a_sidecar_edited_in_its_matrix_is_refused(clean, tmp_path):
    artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    metadata = json.loads(artifact.metadata_path.read_text())
    metadata["transition_matrix"][0][0] = 0.7
    metadata["transition_matrix"][0][1] += 0.1
    artifact.metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ConfigError, match=r"transition_matrix\[0\]\[0\] is 0.7 in the sidecar"):
        create(SymmetricNoise(0.2), clean, tmp_path)


def test_a_sidecar_from_before_its_checksum_is_still_checked_field_by_field(clean, tmp_path):
    artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    _edit_sidecar(artifact.metadata_path, "sidecar_sha256", "DELETE")
    np.testing.assert_array_equal(create(SymmetricNoise(0.2), clean, tmp_path).labels, artifact.labels)
    _edit_sidecar(artifact.metadata_path, "noise.rate", 0.4)
    with pytest.raises(ConfigError, match="noise.rate is 0.4 in the sidecar"):
        create(SymmetricNoise(0.2), clean, tmp_path)


def test_a_moved_cifar_n_file_still_reads_its_artifact(fake_cifar10n, tmp_path):
    path, content = fake_cifar10n
    load_or_create_noisy_labels(HumanNoise(str(path), "worse_label"), content["clean_label"], K,
                                dataset="cifar10", split="train", seed=0, directory=tmp_path / "labels")
    moved = tmp_path / "elsewhere" / path.name
    moved.parent.mkdir()
    path.rename(moved)
    again = load_or_create_noisy_labels(HumanNoise(str(moved), "worse_label"), content["clean_label"], K,
                                        dataset="cifar10", split="train", seed=0, directory=tmp_path / "labels")
    np.testing.assert_array_equal(again.labels, content["worse_label"])


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_artifact_files_are_created_like_normal_files_under_the_umask(clean, tmp_path, umask):
    previous = os.umask(umask)
    try:
        artifact = create(SymmetricNoise(0.2), clean, tmp_path)
    finally:
        os.umask(previous)
    for path in (artifact.path, artifact.metadata_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, oct(path.stat().st_mode)


def test_an_artifact_dir_that_cannot_be_created_names_the_setting_to_change(clean, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"data\.init_args\.artifact_dir.*folder you can write to"):
        create(SymmetricNoise(0.2), clean, tmp_path / "afile" / "labels")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions (not root)")
def test_a_read_only_artifact_dir_is_refused_with_the_setting_to_change(clean, tmp_path):
    directory = tmp_path / "labels"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"Permission denied.*data\.init_args\.artifact_dir"):
            create(SymmetricNoise(0.2), clean, directory)
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o755)


def test_an_artifact_that_cannot_be_read_is_not_advised_to_be_deleted(clean, tmp_path, monkeypatch):
    """Another user's private file is a permission problem: deleting it (the advice for damage) is wrong."""
    create(SymmetricNoise(0.2), clean, tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # numpy's own loader refuses, as for a file of another user; chmod cannot show this when the tests run as
    # root, who reads every file.
    monkeypatch.setattr(np, "load", denied)
    with pytest.raises(ConfigError) as error:
        create(SymmetricNoise(0.2), clean, tmp_path)
    message = str(error.value)
    assert "Permission denied" in message and "chmod a+r" in message and "artifact_dir" in message, message
    assert "delete" not in message


# ------------------------------------------------------------------ the package's public names


# Every public name of lsl/noise.py before it became a package (write_new_file excepted: the one temporary-file
# writer is lsl.files.new_temporary_file now). Configs, the README and other modules import them from lsl.noise.
NAMES_BEFORE_THE_SPLIT = [
    "ARTIFACT_FORMAT", "AsymmetricCIFAR10Noise", "CIFAR_N_SOURCE", "HumanNoise", "MatrixNoise", "NoNoise",
    "NoiseModel", "NoisyLabels", "PairFlipNoise", "ROW_SUM_TOLERANCE", "SIDECAR_CHECKSUM_FIELD", "SymmetricNoise",
    "TRANSITION_CONVENTION", "artifact_paths", "load_or_create_noisy_labels", "load_transition_matrix",
    "realised_flip_rate", "realised_transition_matrix", "validate_transition_matrix",
]


@pytest.mark.parametrize("name", NAMES_BEFORE_THE_SPLIT + ["symmetric_transition_matrix"])
def test_every_public_name_is_importable_from_lsl_noise(name):
    module = importlib.import_module("lsl.noise")
    assert getattr(module, name, None) is not None, f"lsl.noise.{name} is gone"
    assert name in module.__all__


def test_specs_record_the_class_path_users_write(matrix_file, fake_cifar10n):
    """Sidecars record ``lsl.noise.<Class>``, not the submodule the class lives in: the recorded spec is
    compared with the model's, so another path would refuse every artifact written before."""
    path, _ = fake_cifar10n
    models = all_models(matrix_file) + [HumanNoise(str(path), "worse_label")]
    for model in models:
        class_path = model.spec()["class_path"]
        assert class_path == f"lsl.noise.{type(model).__name__}", class_path
        module_name, class_name = class_path.rsplit(".", 1)
        assert getattr(importlib.import_module(module_name), class_name) is type(model)


@pytest.mark.parametrize("num_classes", [2, 3, 10, 100])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 1 / 3, 0.45, 1.0])
def test_symmetric_transition_matrix_is_exactly_the_formulas_it_replaced(num_classes, rate):
    """Bit for bit the arithmetic of SymmetricNoise and of lsl.losses before the one constructor, so every
    recorded transition matrix and every loss value stays the same."""
    identity = np.eye(num_classes)
    flip = (1.0 - rate) * identity + rate / (num_classes - 1) * (1.0 - identity)
    redraw = (1.0 - rate) * np.eye(num_classes) + rate / num_classes
    assert np.array_equal(symmetric_transition_matrix(rate, num_classes, "flip"), flip)
    assert np.array_equal(symmetric_transition_matrix(rate, num_classes, "redraw"), redraw)
    assert np.array_equal(symmetric_transition_matrix(rate, num_classes), redraw)  # alpha of label smoothing
    assert np.array_equal(SymmetricNoise(rate, "flip").transition_matrix(num_classes), flip)
    assert np.array_equal(SymmetricNoise(rate, "redraw").transition_matrix(num_classes), redraw)


def test_the_losses_use_the_one_symmetric_transition_matrix():
    import lsl.losses

    assert lsl.losses.symmetric_transition_matrix is symmetric_transition_matrix


def test_symmetric_transition_matrix_refuses_an_unknown_convention():
    with pytest.raises(ConfigError, match="'flip' or 'redraw'"):
        symmetric_transition_matrix(0.2, K, "uniform")


# Labels drawn for 5000 clean labels of default_rng(7) with noise seed 11, and the sha256 of the .npy file
# written for them. Artifacts on disk record these checksums: a change here would refuse all of them.
RECORDED_DRAWS = [
    (NoNoise(), "c91b6396eedd0ff3181e18341a8112ed7c905a81249d7a55cd25bd3990eec937",
     "81771de4868534a2267ce5335279d03453e12e81c7781df844822f0c11970cba"),
    (SymmetricNoise(0.2), "a929981794580ab74314d8735c47a8cc97f42dcd29a75a76222451c6df024fa6",
     "7508e996261dc648de8e3ec946843f46a97128d6a3219d228d7dd227f3e23d56"),
    (SymmetricNoise(0.2, "redraw"), "197dfaebb0f7f7115780231921bd6660db586e1208355d2268885af7751d23db",
     "f8b8003fbdac84f5f79159d695629fd73cce019c64a76ed029d625e54c3cf964"),
    (AsymmetricCIFAR10Noise(0.4), "161eadea840c9df2fedef6e734ff54d5f25bfa3ba3e2166c10f4cdd147c4d8f4",
     "97a6ad8e7d0a75c24f686f4b3151a6e14c11a4238c9d9d80b1b1a780092a8e71"),
    (PairFlipNoise(0.45), "8706e502b1206333217d9b16731594752208ad5da80b0e4ed3247545c5dab0be",
     "bff5ff00178894e68b9fbfb9bbfd3da1d82248acc075bee8e4fd595768a4cf5d"),
]


@pytest.mark.parametrize("model, labels_sha256, file_sha256", RECORDED_DRAWS, ids=lambda value: str(value)[:24])
def test_draws_and_artifact_files_are_the_recorded_ones(model, labels_sha256, file_sha256, tmp_path):
    clean = np.random.default_rng(7).integers(0, K, size=5000)
    labels = model.corrupt(clean, K, seed=11)
    assert hashlib.sha256(labels.astype("<i8").tobytes()).hexdigest() == labels_sha256
    artifact = load_or_create_noisy_labels(model, clean, K, dataset="toy", split="train", seed=11, directory=tmp_path)
    assert artifact.sha256 == labels_sha256
    assert hashlib.sha256(artifact.path.read_bytes()).hexdigest() == file_sha256
