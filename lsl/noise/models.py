"""Noise models: the :class:`NoiseModel` base (a transition matrix and a seeded draw from it) and the
synthetic models chosen in YAML by ``class_path``: no noise, symmetric, Patrini et al.'s CIFAR-10 flips, pair
flipping, and any matrix from a file. Human noise read from a CIFAR-N file is in :mod:`lsl.noise.human`.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lsl.errors import ConfigError
from lsl.files import array_sha256
from lsl.noise.checks import as_labels, check_num_classes, check_rate, check_seed
from lsl.noise.transition import (
    check_convention,
    load_transition_matrix,
    symmetric_transition_matrix,
    validate_transition_matrix,
)

# The import path users write in YAML, recorded in every sidecar: the classes live in submodules of lsl.noise,
# and a path that followed them would make every existing sidecar disagree with its noise model.
PUBLIC_MODULE = "lsl.noise"


def safe_component(text: str) -> str:
    """``text`` as a lower-case, filename-safe part of a slug."""
    return re.sub(r"[^a-z0-9._-]+", "_", text.lower()).strip("_") or "x"


def format_rate(rate: float) -> str:
    """``rate`` for a slug: the shortest exact repr, 0.2 -> "0.2", so distinct rates never share a slug."""
    return repr(float(rate))


class NoiseModel(ABC):
    """A label-noise process, described by its transition matrix ``T[i, j] = P(noisy = j | clean = i)``.

    Subclasses give ``_matrix`` (and, when they need to, ``corrupt``), ``spec`` and ``slug``.
    """

    def transition_matrix(self, num_classes: int) -> np.ndarray:
        """The float64 ``[K, K]`` row-stochastic transition matrix for ``num_classes`` classes.

        Raises:
            ConfigError: ``num_classes`` is not an integer >= 2, or the model does not fit it.
        """
        num_classes = check_num_classes(num_classes)
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
        clean = as_labels(clean, "clean labels", num_classes)
        rng = np.random.default_rng(check_seed(seed))
        noisy = np.empty_like(clean)
        # One stable sort instead of K boolean masks keeps the loop O(N) even for K = 1000.
        order = np.argsort(clean, kind="stable")
        boundaries = np.searchsorted(clean[order], np.arange(num_classes + 1))
        for cls in range(num_classes):
            members = order[boundaries[cls] : boundaries[cls + 1]]
            noisy[members] = _sample_from_row(rng, transition[cls], members.size)
        return noisy

    def corrupt_subset(self, clean: np.ndarray, rows: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        """Noisy labels of a subset of the training images (``train_subset``): ``rows`` are their positions in
        the whole training split, ``clean`` their clean labels.

        Drawn noise does not depend on which images these are, so this draws for ``clean`` alone, exactly as
        :meth:`corrupt`. Noise tied to the images themselves (human labels, :class:`HumanNoise`) overrides it
        to give those images' own labels.

        Returns:
            int64 noisy labels, shape ``[N]``, one per row.
        """
        return self.corrupt(clean, num_classes, seed)

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
        return {"name": name, "class_path": f"{PUBLIC_MODULE}.{type(self).__name__}", "convention": convention}


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
        self.convention = check_convention(convention)
        self.rate = check_rate(rate)

    def _matrix(self, num_classes: int) -> np.ndarray:
        return symmetric_transition_matrix(self.rate, num_classes, self.convention)

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec("symmetric", self.convention), "rate": self.rate}

    def slug(self) -> str:
        return f"symmetric-{self.convention}-{format_rate(self.rate)}"


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
        self.rate = check_rate(rate)

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
        return f"asymmetric-cifar10-{format_rate(self.rate)}"


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
        self.rate = check_rate(rate)

    def _matrix(self, num_classes: int) -> np.ndarray:
        identity = np.eye(num_classes)
        return (1.0 - self.rate) * identity + self.rate * np.roll(identity, 1, axis=1)

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec("pairflip", "flip"), "rate": self.rate}

    def slug(self) -> str:
        return f"pairflip-{format_rate(self.rate)}"


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
        self.matrix_sha256 = array_sha256(self.matrix, "<f8")

    def _matrix(self, num_classes: int) -> np.ndarray:
        return validate_transition_matrix(self.matrix, num_classes, source=f"transition matrix in {self.path!r}")

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec("matrix", "matrix"), "path": self.path, "matrix_sha256": self.matrix_sha256}

    def slug(self) -> str:
        return f"matrix-{safe_component(Path(self.path).stem)}-{self.matrix_sha256[:12]}"
