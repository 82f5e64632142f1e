"""The noisy-label artifact: labels drawn once, written as a checksummed ``.npy`` with a ``.json`` sidecar.

:func:`load_or_create_noisy_labels` reads the labels of ``(dataset, split, noise, seed)`` back, after checking
the file, its sidecar and the clean labels it was drawn for; or draws them and writes both files atomically.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lsl.errors import ConfigError
from lsl.files import json_sha256, write_atomically
from lsl.noise.checks import (
    LABEL_DTYPE,
    as_labels,
    check_num_classes,
    check_same_length,
    check_seed,
    label_sha256,
)
from lsl.noise.models import NoiseModel
from lsl.noise.statistics import (
    nominal_flip_rate,
    realised_flip_rate,
    realised_transition_matrix,
)
from lsl.noise.transition import TRANSITION_CONVENTION

ARTIFACT_FORMAT = 1
SIDECAR_CHECKSUM_FIELD = "sidecar_sha256"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Noisy labels read from (or just written to) their artifact.

    Attributes:
        labels: int64 noisy labels, one per training sample.
        path: The ``.npy`` file; its sidecar is ``path.with_suffix(".json")``.
        metadata: The sidecar's content.
    """

    labels: np.ndarray
    path: Path
    metadata: dict[str, Any]

    @property
    def sha256(self) -> str:
        """sha256 of the labels as little-endian int64, as recorded in the sidecar."""
        return self.metadata["sha256"]

    @property
    def metadata_path(self) -> Path:
        return self.path.with_suffix(".json")


def artifact_paths(
    noise: NoiseModel, *, dataset: str, split: str, seed: int, directory: str | Path
) -> tuple[Path, Path]:
    """The ``.npy`` and ``.json`` paths: ``{directory}/{dataset}-{split}-{noise.slug()}-seed{seed}.npy|json``."""
    for name, value in (("dataset", dataset), ("split", split)):
        if not isinstance(value, str) or not _SAFE_NAME.match(value):
            raise ConfigError(f"{name}={value!r} is not a plain name: use letters, digits, '.', '_' or '-'")
    stem = f"{dataset}-{split}-{noise.slug()}-seed{check_seed(seed)}"
    directory = Path(directory)
    return directory / f"{stem}.npy", directory / f"{stem}.json"


def load_or_create_noisy_labels(
    noise: NoiseModel,
    clean: np.ndarray,
    num_classes: int,
    *,
    dataset: str,
    split: str,
    seed: int,
    directory: str | Path,
    rows: np.ndarray | None = None,
) -> NoisyLabels:
    """Read the noisy labels of ``(dataset, split, noise, seed)`` from disk, or draw and write them once.

    An existing artifact is checked (readable, checksum, sidecar, same clean labels) and never drawn again:
    any mismatch raises. A new one is written atomically (temporary files, then ``os.replace``: sidecar first,
    labels last), so processes racing to create it all end with the same valid pair of files.

    Args:
        noise: The noise model.
        clean: Clean labels, shape ``[N]``.
        num_classes: Number of classes K.
        dataset: Dataset name, part of the file name (e.g. ``"cifar10"``).
        split: Split name, part of the file name (e.g. ``"train"``).
        seed: Seed of the noise draw.
        directory: Folder of the artifacts; created if needed.
        rows: For a subset of the split (``train_subset``), each sample's position in the whole split: noise tied
            to the images (human labels) takes those images' labels (:meth:`NoiseModel.corrupt_subset`).

    Returns:
        The labels, the ``.npy`` path and the sidecar content.

    Raises:
        ConfigError: The artifact exists but is damaged or belongs to other clean labels.
    """
    num_classes = check_num_classes(num_classes)
    clean = as_labels(clean, "clean labels", num_classes)
    labels_path, metadata_path = artifact_paths(noise, dataset=dataset, split=split, seed=seed, directory=directory)
    if labels_path.exists():
        return _load_artifact(noise, labels_path, metadata_path, clean, num_classes, dataset, split, seed)
    return _create_artifact(noise, clean, num_classes, dataset, split, seed, labels_path, metadata_path, rows)


def _fix(labels_path: Path, metadata_path: Path) -> str:
    return f"delete {str(labels_path)!r} and {str(metadata_path)!r} to draw the labels again, or restore them"


def _not_readable(path: Path, error: OSError) -> ConfigError:
    """A permission problem is not damage: deleting someone else's artifact is the wrong advice."""
    return ConfigError(
        f"{str(path)!r} exists but cannot be read ({error.strerror or error}): ask its owner to make it readable "
        f"(chmod a+r {str(path)!r}), or set the data's artifact_dir (data.init_args.artifact_dir) to a folder of "
        "your own, where the same labels are drawn again from the same noise_seed"
    )


def _load_artifact(
    noise: NoiseModel, labels_path: Path, metadata_path: Path, clean: np.ndarray, num_classes: int,
    dataset: str, split: str, seed: int,
) -> NoisyLabels:
    fix = _fix(labels_path, metadata_path)
    metadata = _read_metadata(metadata_path, fix)
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except PermissionError as exc:
        raise _not_readable(labels_path, exc) from exc
    except Exception as exc:
        raise ConfigError(f"noisy-label file {str(labels_path)!r} is unreadable or truncated ({exc}): {fix}") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{str(labels_path)!r} holds {labels.dtype} of shape {labels.shape}, not 1-D labels: {fix}")
    labels = labels.astype(np.int64, copy=False)
    actual = label_sha256(labels)
    if actual != metadata["sha256"]:
        raise ConfigError(
            f"checksum mismatch: {str(labels_path)!r} has sha256 {actual[:16]}..., its sidecar records "
            f"{metadata['sha256'][:16]}... (the labels were changed after they were drawn): {fix}"
        )
    _check_artifact_matches(metadata, clean, num_classes, seed, labels_path, fix)
    expected = _artifact_metadata(noise, clean, labels, num_classes, dataset, split, seed)
    _check_sidecar_unchanged(metadata, expected, metadata_path, fix)
    return NoisyLabels(labels=labels, path=labels_path, metadata=metadata)


def _read_metadata(metadata_path: Path, fix: str) -> dict[str, Any]:
    if not metadata_path.is_file():
        raise ConfigError(f"sidecar {str(metadata_path)!r} is missing, so the labels cannot be checked: {fix}")
    try:
        metadata = json.loads(metadata_path.read_text())
    except PermissionError as exc:
        raise _not_readable(metadata_path, exc) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sidecar {str(metadata_path)!r} is unreadable ({exc}): {fix}") from exc
    required = ("sha256", "clean_sha256", "num_classes", "num_samples", "seed")
    if not isinstance(metadata, dict) or any(field not in metadata for field in required):
        raise ConfigError(f"sidecar {str(metadata_path)!r} lacks some of the fields {list(required)}: {fix}")
    return metadata


def _check_artifact_matches(
    metadata: dict[str, Any], clean: np.ndarray, num_classes: int, seed: int, labels_path: Path, fix: str
) -> None:
    where = str(labels_path)
    if metadata["num_samples"] != clean.size or metadata["clean_sha256"] != label_sha256(clean):
        raise ConfigError(
            f"{where!r} was drawn for other clean labels ({metadata['num_samples']} samples, clean sha256 "
            f"{metadata['clean_sha256'][:16]}...) than these ({clean.size} samples, clean sha256 "
            f"{label_sha256(clean)[:16]}...): check the dataset and its order, or {fix}"
        )
    if metadata["num_classes"] != num_classes or metadata["seed"] != seed:
        raise ConfigError(
            f"the sidecar of {where!r} records num_classes={metadata['num_classes']}, seed={metadata['seed']}, "
            f"not num_classes={num_classes}, seed={seed}: {fix}"
        )


# Fields that do not describe the labels: when and by which version they were written, and where a CIFAR-N
# file was read from (its labels' sha256 is checked instead).
_PROVENANCE_FIELDS = ("created", "lsl_version", "noise.path")


def _sidecar_checksum(metadata: dict[str, Any]) -> str:
    """sha256 of the sidecar's content without its own checksum field (canonical JSON: sorted keys)."""
    content = {key: value for key, value in metadata.items() if key != SIDECAR_CHECKSUM_FIELD}
    return json_sha256(content)


def _check_sidecar_unchanged(metadata: dict[str, Any], expected: dict[str, Any], metadata_path: Path, fix: str) -> None:
    """Refuse a sidecar edited by hand: every field must be what the noise model, the clean and the noisy labels
    give, and the whole content must match the checksum it was written with (sidecars from before that
    checksum carry none: their fields are still checked)."""
    differences = _differences(metadata, json.loads(json.dumps(expected)), "")
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise ConfigError(
            f"sidecar {str(metadata_path)!r} does not describe its labels (edited by hand?): {shown}: {fix}"
        )
    recorded = metadata.get(SIDECAR_CHECKSUM_FIELD)
    if recorded is not None and recorded != _sidecar_checksum(metadata):
        raise ConfigError(
            f"sidecar {str(metadata_path)!r} was changed after it was written: its content no longer matches "
            f"the {SIDECAR_CHECKSUM_FIELD} it was written with (a field such as 'created' was edited): {fix}"
        )


def _differences(recorded: Any, expected: Any, where: str) -> list[str]:
    """Where ``recorded`` (a sidecar's JSON) differs from ``expected``, as ``"field: X in the sidecar, Y expected"``."""
    if where in _PROVENANCE_FIELDS:
        return []
    if isinstance(expected, dict) and isinstance(recorded, dict):
        found = []
        for key in sorted(set(expected) | set(recorded)):
            if key == SIDECAR_CHECKSUM_FIELD and not where:
                continue
            path = f"{where}.{key}" if where else key
            if key not in recorded:
                if path not in _PROVENANCE_FIELDS:
                    found.append(f"{path} is missing")
            elif key not in expected:
                if path not in _PROVENANCE_FIELDS:
                    found.append(f"{path} is not a field lsl writes")
            else:
                found.extend(_differences(recorded[key], expected[key], path))
        return found
    if isinstance(expected, list) and isinstance(recorded, list) and len(expected) == len(recorded):
        return [line for index, (r, e) in enumerate(zip(recorded, expected))
                for line in _differences(r, e, f"{where}[{index}]")]
    same = (recorded == expected and type(recorded) is type(expected)) or (
        isinstance(recorded, float) and isinstance(expected, float)
        and math.isclose(recorded, expected, rel_tol=1e-12, abs_tol=1e-15))
    return [] if same else [f"{where} is {json.dumps(recorded)} in the sidecar, but {json.dumps(expected)} here"]


def _create_artifact(
    noise: NoiseModel,
    clean: np.ndarray,
    num_classes: int,
    dataset: str,
    split: str,
    seed: int,
    labels_path: Path,
    metadata_path: Path,
    rows: np.ndarray | None = None,
) -> NoisyLabels:
    drawn = noise.corrupt(clean, num_classes, seed) if rows is None else noise.corrupt_subset(clean, rows,
                                                                                              num_classes, seed)
    labels = as_labels(drawn, f"labels drawn by {noise!r}", num_classes)
    check_same_length(clean, labels)
    metadata = _artifact_metadata(noise, clean, labels, num_classes, dataset, split, seed)
    metadata[SIDECAR_CHECKSUM_FIELD] = _sidecar_checksum(metadata)
    _check_orphan_sidecar(metadata_path, labels_path, metadata["sha256"])
    try:
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        _write_artifact(labels_path, metadata_path, labels, metadata)
    except OSError as error:
        raise ConfigError(
            f"cannot write the noisy labels to {str(labels_path.parent)!r} ({error.strerror or error}): set the "
            "data's artifact_dir (data.init_args.artifact_dir; by default <dataset root>/noisy_labels) to a folder "
            "you can write to, or ask the folder's owner to create the labels there once"
        ) from error
    return NoisyLabels(labels=labels, path=labels_path, metadata=metadata)


def _check_orphan_sidecar(metadata_path: Path, labels_path: Path, sha256: str) -> None:
    """A sidecar without labels is a concurrent writer mid-way, or a deleted .npy: fine only if the draws agree."""
    if not metadata_path.exists():
        return
    recorded = _read_metadata(metadata_path, _fix(labels_path, metadata_path))["sha256"]
    if recorded != sha256:
        raise ConfigError(
            f"{str(labels_path)!r} is missing and drawing again gives sha256 {sha256[:16]}..., not the "
            f"{recorded[:16]}... its sidecar records (the noise code or inputs changed): restore the labels, "
            f"or delete {str(metadata_path)!r} to keep the new draw"
        )


def _artifact_metadata(
    noise: NoiseModel,
    clean: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    dataset: str,
    split: str,
    seed: int,
) -> dict[str, Any]:
    transition = noise.transition_matrix(num_classes)
    return {
        "format": ARTIFACT_FORMAT,
        "dataset": dataset,
        "split": split,
        "num_classes": num_classes,
        "num_samples": int(clean.size),
        "noise": noise.spec(),
        "seed": seed,
        "nominal_rate": nominal_flip_rate(transition, clean),
        "realised_rate": realised_flip_rate(clean, labels) if clean.size else 0.0,
        "transition_convention": TRANSITION_CONVENTION,
        "transition_matrix": transition.tolist(),
        "realised_transition_matrix": realised_transition_matrix(clean, labels, num_classes).tolist(),
        "sha256": label_sha256(labels),
        "clean_sha256": label_sha256(clean),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lsl_version": _lsl_version(),
    }


def _lsl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lsl")
    except PackageNotFoundError:
        return "unknown"


def _write_artifact(labels_path: Path, metadata_path: Path, labels: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write both files atomically; the sidecar lands first, so a reader that finds the ``.npy`` always finds
    its ``.json``. Racing writers hold identical labels, so any winner is right."""
    write_atomically([
        (metadata_path, lambda file: file.write(_json_bytes(metadata))),
        (labels_path, lambda file: np.save(file, labels.astype(LABEL_DTYPE), allow_pickle=False)),
    ])


def _json_bytes(metadata: dict[str, Any]) -> bytes:
    return (json.dumps(metadata, indent=1) + "\n").encode()
