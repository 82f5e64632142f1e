"""Human label noise: :class:`HumanNoise` and the reader of the CIFAR-10N / CIFAR-100N label files it uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lsl.errors import ConfigError
from lsl.noise.checks import as_labels, check_same_length, label_sha256
from lsl.noise.models import NoiseModel, safe_component
from lsl.noise.statistics import realised_transition_matrix

CIFAR_N_SOURCE = "http://noisylabels.com or https://github.com/UCSC-REAL/cifar-10-100n"


class HumanNoise(NoiseModel):
    """Human label noise of CIFAR-10N / CIFAR-100N (Wei et al., ICLR 2022): the noisy labels are read, not drawn.

    The file (``CIFAR-10_human.pt`` or ``CIFAR-100_human.pt``, from http://noisylabels.com or the CIFAR-N
    GitHub repository) is a torch-saved dict of label arrays; index i is training image i in the original
    CIFAR order. ``T`` is the realised matrix of the file, ``T[i, j]`` = share of clean-``i`` images labelled
    ``j`` (a class with no images gets ``T_ii = 1``). The seed is ignored.

    Keys: CIFAR-10N ``aggre_label`` (9.0% noise), ``random_label1..3`` (about 17-18%), ``worse_label``
    (40.2%); CIFAR-100N ``noisy_label`` (40.2%), ``noisy_coarse_label`` (against ``clean_coarse_label``).

    YAML::

        noise:
          class_path: lsl.noise.HumanNoise
          init_args:
            path: data/cifar-n/CIFAR-10_human.pt
            key: worse_label
    """

    def __init__(self, path: str, key: str = "worse_label") -> None:
        """
        Args:
            path: The CIFAR-N ``.pt`` file.
            key: Which label set of the file to use, e.g. ``worse_label``, ``aggre_label`` or ``noisy_label``.
        """
        self.path = str(path)
        self.key = key
        self.clean_labels, self.noisy_labels = _read_cifar_n(Path(self.path), key)  # cached per instance
        self.labels_sha256 = label_sha256(self.noisy_labels)

    def _matrix(self, num_classes: int) -> np.ndarray:
        self._check_fits(num_classes)
        transition = realised_transition_matrix(self.clean_labels, self.noisy_labels, num_classes)
        empty_rows = transition.sum(axis=1) == 0
        transition[empty_rows, empty_rows] = 1.0  # no image of that class: nothing to flip
        return transition

    def corrupt(self, clean: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        """The file's labels for ``key``, after checking that ``clean`` is the file's clean labels (seed unused)."""
        self._check_fits(num_classes)
        clean = as_labels(clean, "clean labels", num_classes)
        if clean.shape != self.clean_labels.shape or not np.array_equal(clean, self.clean_labels):
            detail = (
                f"the dataset has {clean.size} training labels, {self.path!r} has {self.clean_labels.size}"
                if clean.shape != self.clean_labels.shape
                else f"{int(np.sum(clean != self.clean_labels))} clean labels differ"
            )
            raise ConfigError(
                f"{detail}: the labels do not line up with this dataset's training set; CIFAR-N index i is "
                "training image i in the original CIFAR order (use the full, unshuffled training set and the "
                "file that matches the dataset)"
            )
        return self.noisy_labels.copy()

    def corrupt_subset(self, clean: np.ndarray, rows: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        """The file's labels for the training images at ``rows`` (positions in the original CIFAR order), after
        checking that ``clean`` is the file's clean labels of those images (seed unused)."""
        self._check_fits(num_classes)
        clean = as_labels(clean, "clean labels", num_classes)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != clean.shape or rows.min(initial=0) < 0 or rows.max(initial=0) >= self.clean_labels.size:
            raise ConfigError(f"a subset of {clean.size} training images at rows up to {int(rows.max(initial=0))} "
                              f"does not fit {self.path!r}, which labels {self.clean_labels.size} images")
        differ = int(np.sum(clean != self.clean_labels[rows]))
        if differ:
            raise ConfigError(
                f"{differ} clean labels of the training subset differ from {self.path!r}'s: the labels do not line "
                "up with this dataset's training set; CIFAR-N index i is training image i in the original CIFAR "
                "order (use the file that matches the dataset)"
            )
        return self.noisy_labels[rows].copy()

    def _check_fits(self, num_classes: int) -> None:
        largest = int(max(self.clean_labels.max(initial=0), self.noisy_labels.max(initial=0)))
        if largest >= num_classes:
            raise ConfigError(
                f"{self.path!r} ({self.key}) has labels up to {largest} but num_classes={num_classes}: "
                "use the CIFAR-N file of this dataset (CIFAR-10_human.pt for 10 classes, CIFAR-100_human.pt "
                "for 100)"
            )

    def spec(self) -> dict[str, Any]:
        return {
            **self._base_spec("human", "human"),
            "path": self.path,
            "key": self.key,
            "labels_sha256": self.labels_sha256,
        }

    def slug(self) -> str:
        return f"human-{safe_component(self.key)}-{self.labels_sha256[:12]}"


def _read_cifar_n(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) label arrays for ``key`` from a CIFAR-N file."""
    if not path.is_file():
        raise ConfigError(
            f"CIFAR-N label file {str(path)!r} does not exist (looked at {str(path.resolve())!r}): download "
            f"CIFAR-10_human.pt / CIFAR-100_human.pt from {CIFAR_N_SOURCE} and give its path"
        )
    import torch  # only to unpickle the file; kept local so importing lsl.noise stays light

    try:
        # The file pickles numpy arrays, which weights_only=True (the torch >= 2.6 default) refuses.
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(
            f"cannot read CIFAR-N file {str(path)!r} ({exc}): download it again from {CIFAR_N_SOURCE}"
        ) from exc
    if not isinstance(content, dict):
        raise ConfigError(f"{str(path)!r} holds a {type(content).__name__}, not a CIFAR-N dict of label arrays")
    if key not in content:
        raise ConfigError(f"key={key!r} is not in {str(path)!r}: the file has keys {sorted(content)}")
    # Coarse (superclass) labels are compared with the coarse clean labels, fine ones with the fine ones.
    clean_key = "clean_coarse_label" if "coarse" in key else "clean_label"
    if clean_key not in content:
        raise ConfigError(f"{str(path)!r} has no {clean_key!r} to compare {key!r} with: it is not a CIFAR-N file")
    clean = as_labels(content[clean_key], f"{clean_key} in {str(path)!r}")
    noisy = as_labels(content[key], f"{key} in {str(path)!r}")
    check_same_length(clean, noisy)
    return clean, noisy
