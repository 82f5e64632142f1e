"""Label-noise models and the noisy-label artifact.

Convention throughout lsl: a transition matrix is row-stochastic, ``T[i, j] = P(noisy = j | clean = i)``
(Patrini et al., CVPR 2017). Plain numpy: no Lightning here.

A noise model (a subclass of :class:`NoiseModel`) is chosen in YAML by ``class_path``; the labels it draws
are written once by :func:`load_or_create_noisy_labels` as a checksummed ``.npy`` with a ``.json`` sidecar,
and every later run reads that file back instead of drawing again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from lsl.errors import ConfigError

ROW_SUM_TOLERANCE = 1e-6


def validate_transition_matrix(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    num_classes: int | None = None,
    source: str = "transition matrix",
) -> np.ndarray:
    """Return ``matrix`` as a float64 K x K array, or raise ConfigError saying what is wrong with it."""
    T = np.asarray(matrix, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ConfigError(f"{source} must be a square K x K matrix, got shape {tuple(T.shape)}")
    if num_classes is not None and T.shape[0] != num_classes:
        raise ConfigError(
            f"{source} is {T.shape[0]}x{T.shape[0]} but the data has {num_classes} classes: "
            f"give a {num_classes}x{num_classes} matrix"
        )
    if not np.isfinite(T).all() or (T < 0).any():
        raise ConfigError(f"{source} has negative or non-finite entries: every T[i, j] is a probability")
    row_sums = T.sum(axis=1)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ConfigError(
            f"{source}: row {row} sums to {row_sums[row]:.6g}, not 1. Row i is P(noisy label | clean label i), "
            "so every row must sum to 1 (T[i, j] = P(noisy = j | clean = i))"
        )
    return T


def load_transition_matrix(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """Read a K x K row-stochastic matrix from ``.npy``, ``.csv`` (comma-separated) or ``.txt`` (whitespace)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"transition matrix file {str(path)!r} does not exist: give the path of a .npy, .csv or .txt file")
    try:
        if path.suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        else:
            matrix = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
    except (OSError, ValueError) as error:
        raise ConfigError(f"transition matrix file {str(path)!r} is unreadable ({error}): give a .npy array, or a "
                          ".csv (comma-separated) or .txt (whitespace-separated) table of numbers") from error
    return validate_transition_matrix(matrix, num_classes, source=f"transition matrix in {str(path)!r}")


TRANSITION_CONVENTION = "T[i, j] = P(noisy = j | clean = i)"
CIFAR_N_SOURCE = "http://noisylabels.com or https://github.com/UCSC-REAL/cifar-10-100n"
ARTIFACT_FORMAT = 1
SIDECAR_CHECKSUM_FIELD = "sidecar_sha256"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise ConfigError(f"rate={rate!r} is not a number: give the probability a label is corrupted, in [0, 1]")
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ConfigError(f"rate={rate!r} is outside [0, 1]: it is the probability a label is corrupted")
    return rate


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} is not an integer >= 2: give the number of classes")
    return int(num_classes)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not a non-negative integer: give the seed of the noise draw, e.g. 0")
    return int(seed)


def _as_labels(labels: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """``labels`` as a 1-D int64 array, checked to lie in ``[0, num_classes)``."""
    array = np.asarray(labels)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_):
        raise ConfigError(
            f"{name} must be a 1-D array of integer class indices, got dtype {array.dtype} and shape {array.shape}"
        )
    array = array.astype(np.int64, copy=False)
    if num_classes is not None and array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ConfigError(
            f"{name} has values in [{array.min()}, {array.max()}] but num_classes={num_classes}: "
            f"labels must lie in [0, {num_classes - 1}]; check num_classes or the label file"
        )
    return array


def _label_sha256(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def _safe_component(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "_", text.lower()).strip("_") or "x"


def _format_rate(rate: float) -> str:
    return repr(float(rate))  # shortest exact repr: 0.2 -> "0.2", so distinct rates never share a slug


# ----------------------------------------------------------------------------------------------------
# Statistics of a draw
# ----------------------------------------------------------------------------------------------------


def realised_transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised counts of (clean, noisy) pairs; a row whose clean class has no samples stays all-zero.

    Args:
        clean: Clean labels, shape ``[N]``.
        noisy: Noisy labels, shape ``[N]``.
        num_classes: Number of classes K.

    Returns:
        float64 ``[K, K]`` array with ``R[i, j]`` = share of clean-``i`` samples labelled ``j``.
    """
    num_classes = _check_num_classes(num_classes)
    clean = _as_labels(clean, "clean labels", num_classes)
    noisy = _as_labels(noisy, "noisy labels", num_classes)
    _check_same_length(clean, noisy)
    counts = np.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    row_totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)


def realised_flip_rate(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Share of samples whose noisy label differs from the clean one: ``mean(noisy != clean)``."""
    clean = _as_labels(clean, "clean labels")
    noisy = _as_labels(noisy, "noisy labels")
    _check_same_length(clean, noisy)
    if clean.size == 0:
        raise ConfigError("no labels given: the flip rate of an empty label set is undefined")
    return float(np.mean(noisy != clean))


def _check_same_length(clean: np.ndarray, noisy: np.ndarray) -> None:
    if clean.shape != noisy.shape:
        raise ConfigError(
            f"{clean.size} clean labels but {noisy.size} noisy labels: both must describe the same samples"
        )


def _nominal_flip_rate(transition: np.ndarray, clean: np.ndarray) -> float:
    """Expected share of flipped labels, ``mean_n (1 - T[c_n, c_n])``."""
    return float(np.mean(1.0 - np.diag(transition)[clean])) if clean.size else 0.0


# ----------------------------------------------------------------------------------------------------
# Noise models
# ----------------------------------------------------------------------------------------------------


class NoiseModel(ABC):
    """A label-noise process, described by its transition matrix ``T[i, j] = P(noisy = j | clean = i)``.

    Subclasses give ``_matrix`` (and, when they need to, ``corrupt``), ``spec`` and ``slug``.
    """

    def transition_matrix(self, num_classes: int) -> np.ndarray:
        """The float64 ``[K, K]`` row-stochastic transition matrix for ``num_classes`` classes.

        Raises:
            ConfigError: ``num_classes`` is not an integer >= 2, or the model does not fit it.
        """
        num_classes = _check_num_classes(num_classes)
        return validate_transition_matrix(
            self._matrix(num_classes), num_classes, source=f"transition matrix of {type(self).__name__}"
        )

    @abstractmethod
    def _matrix(self, num_classes: int) -> np.ndarray:
        """T for a validated ``num_classes``."""

    def corrupt(self, clean: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        """Draw one noisy label per sample: the label of a clean-``c`` sample comes from row ``T[c]``.

        The draw depends on ``seed`` alone (its own ``np.random.default_rng``, never the global state), so
        every process computes the same labels.

        Args:
            clean: Clean labels, shape ``[N]``, values in ``[0, num_classes)``.
            num_classes: Number of classes K.
            seed: Seed of the noise draw (a non-negative integer).

        Returns:
            int64 noisy labels, shape ``[N]``.
        """
        transition = self.transition_matrix(num_classes)
        clean = _as_labels(clean, "clean labels", num_classes)
        rng = np.random.default_rng(_check_seed(seed))
        noisy = np.empty_like(clean)
        # One stable sort instead of K boolean masks keeps the loop O(N) even for K = 1000.
        order = np.argsort(clean, kind="stable")
        boundaries = np.searchsorted(clean[order], np.arange(num_classes + 1))
        for cls in range(num_classes):
            members = order[boundaries[cls] : boundaries[cls + 1]]
            noisy[members] = _sample_from_row(rng, transition[cls], members.size)
        return noisy

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-able description: ``{"name": ..., "class_path": ..., parameters..., "convention": ...}``."""

    @abstractmethod
    def slug(self) -> str:
        """Short filename-safe key that tells this model's settings apart, e.g. ``"symmetric-flip-0.2"``."""

    def __repr__(self) -> str:
        # Every __init__ argument is kept under its own name, so the repr reads like the YAML init_args.
        parameters = inspect.signature(type(self).__init__).parameters.values()
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names = [p.name for p in parameters if p.kind in named and p.name != "self"]
        return f"{type(self).__name__}({', '.join(f'{name}={getattr(self, name)!r}' for name in names)})"

    def _base_spec(self, name: str, convention: str) -> dict[str, Any]:
        return {"name": name, "class_path": f"{__name__}.{type(self).__name__}", "convention": convention}


def _sample_from_row(rng: np.random.Generator, row: np.ndarray, size: int) -> np.ndarray:
    """``size`` draws from the categorical distribution ``row`` (inverse CDF: stable across numpy versions)."""
    cdf = np.cumsum(row)
    cdf /= cdf[-1]  # rows pass validation to 1e-6; renormalise so the last bin really ends at 1
    draws = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(draws, row.size - 1)


class NoNoise(NoiseModel):
    """Clean labels: ``T = I``.

    YAML::

        noise:
          class_path: lsl.noise.NoNoise
    """

    def _matrix(self, num_classes: int) -> np.ndarray:
        return np.eye(num_classes)

    def spec(self) -> dict[str, Any]:
        return self._base_spec("none", "none")

    def slug(self) -> str:
        return "none"


class SymmetricNoise(NoiseModel):
    """Symmetric (uniform) noise in one of two conventions, which papers and repositories mix up.

    - ``"flip"``: with probability ``rate`` the label becomes a uniformly drawn *other* class:
      ``T_ii = 1 - rate``, ``T_ij = rate / (K - 1)`` for ``j != i``. ``rate`` is the flip rate rho.
    - ``"redraw"``: with probability ``rate`` the label is redrawn uniformly from all K classes, so it may
      stay: ``T = (1 - rate) I + (rate / K) J``. This is the alpha parametrisation of Lukasik et al.
      (ICML 2020); only ``rate * (K - 1) / K`` of the labels actually change.

    The two describe the same matrices: flip rate rho equals redraw rate ``alpha = K * rho / (K - 1)``
    (e.g. K = 10: 20% flip is alpha = 0.2222; alpha = 0.2 flips 18%).

    YAML::

        noise:
          class_path: lsl.noise.SymmetricNoise
          init_args:
            rate: 0.2
            convention: flip
    """

    def __init__(self, rate: float, convention: Literal["flip", "redraw"] = "flip") -> None:
        """
        Args:
            rate: Probability that a label is corrupted, in [0, 1]: the flip rate for ``"flip"``, alpha for
                ``"redraw"``.
            convention: ``"flip"`` (to another class) or ``"redraw"`` (from all K classes, may stay).
        """
        if convention not in ("flip", "redraw"):
            raise ConfigError(
                f"convention={convention!r} is not 'flip' or 'redraw': 'flip' moves a label to another class, "
                "'redraw' draws it again from all classes"
            )
        self.rate = _check_rate(rate)
        self.convention = convention

    def _matrix(self, num_classes: int) -> np.ndarray:
        identity = np.eye(num_classes)
        if self.convention == "flip":
            return (1.0 - self.rate) * identity + self.rate / (num_classes - 1) * (1.0 - identity)
        return (1.0 - self.rate) * identity + self.rate / num_classes

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec("symmetric", self.convention), "rate": self.rate}

    def slug(self) -> str:
        return f"symmetric-{self.convention}-{_format_rate(self.rate)}"


class AsymmetricCIFAR10Noise(NoiseModel):
    """Class-dependent CIFAR-10 noise of Patrini et al. (CVPR 2017), between similar-looking classes.

    With probability ``rate``: truck (9) -> automobile (1), bird (2) -> airplane (0), deer (4) -> horse (7),
    cat (3) <-> dog (5); the other classes stay clean. So ``T_ii = 1 - rate`` and ``T[i, target(i)] = rate``
    for the five source classes, ``T_ii = 1`` otherwise. Only for K = 10.

    YAML::

        noise:
          class_path: lsl.noise.AsymmetricCIFAR10Noise
          init_args:
            rate: 0.4
    """

    FLIPS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

    def __init__(self, rate: float) -> None:
        """
        Args:
            rate: Probability that a label of a source class (truck, bird, deer, cat, dog) is flipped, in [0, 1].
        """
        self.rate = _check_rate(rate)

    def _matrix(self, num_classes: int) -> np.ndarray:
        if num_classes != 10:
            raise ConfigError(
                f"AsymmetricCIFAR10Noise is defined for CIFAR-10's 10 classes, got num_classes={num_classes}: "
                "use it with CIFAR-10, or use PairFlipNoise / MatrixNoise for other datasets"
            )
        transition = np.eye(num_classes)
        for source, target in self.FLIPS.items():
            transition[source, source] = 1.0 - self.rate
            transition[source, target] = self.rate
        return transition

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec("asymmetric-cifar10", "flip"), "rate": self.rate}

    def slug(self) -> str:
        return f"asymmetric-cifar10-{_format_rate(self.rate)}"


class PairFlipNoise(NoiseModel):
    """Pair flipping of Han et al. (NeurIPS 2018, Co-teaching): class i -> (i + 1) mod K with probability ``rate``.

    ``T_ii = 1 - rate``, ``T[i, (i + 1) mod K] = rate``.

    YAML::

        noise:
          class_path: lsl.noise.PairFlipNoise
          init_args:
            rate: 0.45
    """

    def __init__(self, rate: float) -> None:
        """
        Args:
            rate: Probability that a label moves to the next class, in [0, 1].
        """
        self.rate = _check_rate(rate)

    def _matrix(self, num_classes: int) -> np.ndarray:
        identity = np.eye(num_classes)
        return (1.0 - self.rate) * identity + self.rate * np.roll(identity, 1, axis=1)

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec("pairflip", "flip"), "rate": self.rate}

    def slug(self) -> str:
        return f"pairflip-{_format_rate(self.rate)}"


class MatrixNoise(NoiseModel):
    """Any row-stochastic ``T[i, j] = P(noisy = j | clean = i)`` read from a file (e.g. an estimated T).

    The file is ``.npy``, ``.csv`` (comma-separated) or ``.txt`` (whitespace-separated), one row per clean
    class. The slug carries a sha256 prefix of the matrix, so two files never share an artifact.

    YAML::

        noise:
          class_path: lsl.noise.MatrixNoise
          init_args:
            path: configs/noise/my_T.csv
    """

    def __init__(self, path: str) -> None:
        """
        Args:
            path: File holding the K x K row-stochastic matrix (.npy, .csv or .txt).
        """
        self.path = str(path)
        self.matrix = load_transition_matrix(self.path)
        self.matrix_sha256 = hashlib.sha256(np.ascontiguousarray(self.matrix, dtype="<f8").tobytes()).hexdigest()

    def _matrix(self, num_classes: int) -> np.ndarray:
        return validate_transition_matrix(self.matrix, num_classes, source=f"transition matrix in {self.path!r}")

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec("matrix", "matrix"), "path": self.path, "matrix_sha256": self.matrix_sha256}

    def slug(self) -> str:
        return f"matrix-{_safe_component(Path(self.path).stem)}-{self.matrix_sha256[:12]}"


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
        self.labels_sha256 = _label_sha256(self.noisy_labels)

    def _matrix(self, num_classes: int) -> np.ndarray:
        self._check_fits(num_classes)
        transition = realised_transition_matrix(self.clean_labels, self.noisy_labels, num_classes)
        empty_rows = transition.sum(axis=1) == 0
        transition[empty_rows, empty_rows] = 1.0  # no image of that class: nothing to flip
        return transition

    def corrupt(self, clean: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        """The file's labels for ``key``, after checking that ``clean`` is the file's clean labels (seed unused)."""
        self._check_fits(num_classes)
        clean = _as_labels(clean, "clean labels", num_classes)
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
        return f"human-{_safe_component(self.key)}-{self.labels_sha256[:12]}"


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
    clean = _as_labels(content[clean_key], f"{clean_key} in {str(path)!r}")
    noisy = _as_labels(content[key], f"{key} in {str(path)!r}")
    _check_same_length(clean, noisy)
    return clean, noisy


# ----------------------------------------------------------------------------------------------------
# The noisy-label artifact
# ----------------------------------------------------------------------------------------------------


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
    stem = f"{dataset}-{split}-{noise.slug()}-seed{_check_seed(seed)}"
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

    Returns:
        The labels, the ``.npy`` path and the sidecar content.

    Raises:
        ConfigError: The artifact exists but is damaged or belongs to other clean labels.
    """
    num_classes = _check_num_classes(num_classes)
    clean = _as_labels(clean, "clean labels", num_classes)
    labels_path, metadata_path = artifact_paths(noise, dataset=dataset, split=split, seed=seed, directory=directory)
    if labels_path.exists():
        return _load_artifact(noise, labels_path, metadata_path, clean, num_classes, dataset, split, seed)
    return _create_artifact(noise, clean, num_classes, dataset, split, seed, labels_path, metadata_path)


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
    actual = _label_sha256(labels)
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
    if metadata["num_samples"] != clean.size or metadata["clean_sha256"] != _label_sha256(clean):
        raise ConfigError(
            f"{where!r} was drawn for other clean labels ({metadata['num_samples']} samples, clean sha256 "
            f"{metadata['clean_sha256'][:16]}...) than these ({clean.size} samples, clean sha256 "
            f"{_label_sha256(clean)[:16]}...): check the dataset and its order, or {fix}"
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
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
) -> NoisyLabels:
    labels = _as_labels(noise.corrupt(clean, num_classes, seed), f"labels drawn by {noise!r}", num_classes)
    _check_same_length(clean, labels)
    metadata = _artifact_metadata(noise, clean, labels, num_classes, dataset, split, seed)
    metadata[SIDECAR_CHECKSUM_FIELD] = _sidecar_checksum(metadata)
    _check_orphan_sidecar(metadata_path, labels_path, metadata["sha256"])
    try:
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(labels_path, metadata_path, labels, metadata)
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
        "nominal_rate": _nominal_flip_rate(transition, clean),
        "realised_rate": realised_flip_rate(clean, labels) if clean.size else 0.0,
        "transition_convention": TRANSITION_CONVENTION,
        "transition_matrix": transition.tolist(),
        "realised_transition_matrix": realised_transition_matrix(clean, labels, num_classes).tolist(),
        "sha256": _label_sha256(labels),
        "clean_sha256": _label_sha256(clean),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lsl_version": _lsl_version(),
    }


def _lsl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lsl")
    except PackageNotFoundError:
        return "unknown"


def _write_atomically(labels_path: Path, metadata_path: Path, labels: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write both files via temporaries in the same folder; the sidecar lands first, so a reader that finds
    the ``.npy`` always finds its ``.json``. Racing writers hold identical labels, so any winner is right."""
    directory = labels_path.parent
    temporaries: list[str] = []
    try:
        metadata_tmp = _write_temporary(directory, metadata_path.name, lambda f: f.write(_json_bytes(metadata)))
        temporaries.append(metadata_tmp)
        labels_tmp = _write_temporary(
            directory, labels_path.name, lambda f: np.save(f, labels.astype("<i8"), allow_pickle=False)
        )
        temporaries.append(labels_tmp)
        os.replace(metadata_tmp, metadata_path)
        os.replace(labels_tmp, labels_path)
    finally:
        for leftover in temporaries:
            if os.path.exists(leftover):
                os.unlink(leftover)


def _write_temporary(directory: Path, final_name: str, write: Any) -> str:
    return write_new_file(directory, f".{final_name}.", write)


def write_new_file(directory: str | Path, prefix: str, write: Any) -> str:
    """Create a new uniquely named ``{prefix}XXXXXXXX.tmp`` in ``directory``, fill it with ``write(file)``,
    fsync it and return its path (to be ``os.replace``d onto the final name); deleted again if writing fails.

    Unlike ``tempfile`` (mode 0600, private), the file gets mode ``0666 & ~umask``, as ``open(path, "w")``
    would give: the artifacts are shared, and a run of another user must be able to read them.
    """
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}.tmp")
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 64 random bits
        raise FileExistsError(f"no free temporary name in {directory}")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return path


def _json_bytes(metadata: dict[str, Any]) -> bytes:
    return (json.dumps(metadata, indent=1) + "\n").encode()
