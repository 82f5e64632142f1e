"""Label-noise models and the noisy-label artifact.

Convention throughout lsl: a transition matrix is row-stochastic, ``T[i, j] = P(noisy = j | clean = i)``
(Patrini et al., CVPR 2017). Plain numpy: no Lightning here.

A noise model (a subclass of :class:`NoiseModel`) is chosen in YAML by ``class_path`` (``lsl.noise.SymmetricNoise``,
...); the labels it draws are written once by :func:`load_or_create_noisy_labels` as a checksummed ``.npy`` with a
``.json`` sidecar, and every later run reads that file back instead of drawing again.

One concept per module:

- :mod:`lsl.noise.transition`: the convention, :func:`validate_transition_matrix`, :func:`load_transition_matrix`
  and the one :func:`symmetric_transition_matrix` (also used by the losses).
- :mod:`lsl.noise.checks`: checks of rates, class counts, seeds and label arrays.
- :mod:`lsl.noise.statistics`: the realised transition matrix and flip rate of a draw.
- :mod:`lsl.noise.models`: :class:`NoiseModel` and the synthetic noise models.
- :mod:`lsl.noise.human`: :class:`HumanNoise` and the CIFAR-10N / CIFAR-100N file reader.
- :mod:`lsl.noise.artifacts`: :class:`NoisyLabels`, :func:`artifact_paths`, :func:`load_or_create_noisy_labels`,
  the sidecar and its checks.

Everything below is importable from ``lsl.noise`` itself, the path configs and users write.
"""

from lsl.noise.artifacts import (
    ARTIFACT_FORMAT,
    SIDECAR_CHECKSUM_FIELD,
    NoisyLabels,
    artifact_paths,
    load_or_create_noisy_labels,
)
from lsl.noise.human import CIFAR_N_SOURCE, HumanNoise
from lsl.noise.models import (
    AsymmetricCIFAR10Noise,
    MatrixNoise,
    NoiseModel,
    NoNoise,
    PairFlipNoise,
    SymmetricNoise,
)
from lsl.noise.statistics import realised_flip_rate, realised_transition_matrix
from lsl.noise.transition import (
    ROW_SUM_TOLERANCE,
    TRANSITION_CONVENTION,
    load_transition_matrix,
    symmetric_transition_matrix,
    validate_transition_matrix,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "AsymmetricCIFAR10Noise",
    "CIFAR_N_SOURCE",
    "HumanNoise",
    "MatrixNoise",
    "NoNoise",
    "NoiseModel",
    "NoisyLabels",
    "PairFlipNoise",
    "ROW_SUM_TOLERANCE",
    "SIDECAR_CHECKSUM_FIELD",
    "SymmetricNoise",
    "TRANSITION_CONVENTION",
    "artifact_paths",
    "load_or_create_noisy_labels",
    "load_transition_matrix",
    "realised_flip_rate",
    "realised_transition_matrix",
    "symmetric_transition_matrix",
    "validate_transition_matrix",
]
