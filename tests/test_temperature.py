"""Temperature scaling three ways (lsl/temperature.py): on a synthetic model whose right temperature is known.

The model: random logits ``z``, clean labels drawn from ``softmax(z)`` (so ``z`` is perfectly calibrated for
the clean labels), and the model's logits are ``3 z`` (over-confident by a factor 3): the clean-label
temperature is 3. Noisy labels are drawn from the row of ``T`` of each clean label.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsl.errors import ConfigError
from lsl.noise import symmetric_transition_matrix
from lsl.temperature import (
    fit_temperature_noise_aware,
    fit_temperature_noisy,
    fit_temperature_oracle,
    forward_corrected_nll,
    minimise_on_interval,
    nll,
    scaled_probabilities,
)

K = 10
N = 10_000
OVERCONFIDENCE = 3.0


def draw(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One class per row of ``probabilities`` (rows sum to 1), by inverse CDF."""
    u = rng.random((probabilities.shape[0], 1))
    return np.minimum((u > np.cumsum(probabilities, axis=1)).sum(axis=1), probabilities.shape[1] - 1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def overconfident_model() -> tuple[np.ndarray, np.ndarray]:
    """``(logits, clean labels)``: labels from softmax(z), logits 3 z."""
    rng = np.random.default_rng(17)
    z = rng.normal(0.0, 2.0, size=(N, K))
    clean = draw(rng, softmax(z))
    return OVERCONFIDENCE * z, clean


def pair_flip_matrix(rate: float) -> np.ndarray:
    """Class i becomes class i + 1 (mod K) with probability ``rate``: not symmetric, zeros off two diagonals."""
    return (1.0 - rate) * np.eye(K) + rate * np.roll(np.eye(K), 1, axis=1)


# (a) the oracle fit on an over-confident but otherwise calibrated model.

def test_oracle_recovers_the_overconfidence_factor(overconfident_model):
    logits, clean = overconfident_model
    t = fit_temperature_oracle(logits, clean)
    assert t == pytest.approx(OVERCONFIDENCE, rel=0.05)
    # and scaling by it improves the clean-label NLL over the raw logits
    assert nll(logits, clean, t) < nll(logits, clean, 1.0) - 0.1


def test_a_calibrated_model_keeps_temperature_one(overconfident_model):
    logits, clean = overconfident_model
    assert fit_temperature_oracle(logits / OVERCONFIDENCE, clean) == pytest.approx(1.0, rel=0.05)


# (b), (c) noise: the noise-aware fit finds the clean-label temperature, the noisy fit does not.

@pytest.mark.parametrize("name, transition", [
    ("symmetric 40% flip", symmetric_transition_matrix(0.4, K, convention="flip")),
    ("pair flip 35%", pair_flip_matrix(0.35)),
    ("random non-symmetric", 0.5 * np.eye(K) + 0.5 * np.random.default_rng(3).dirichlet(np.full(K, 0.5), size=K)),
])
def test_noise_aware_recovers_the_clean_temperature_and_noisy_does_not(overconfident_model, name, transition):
    logits, clean = overconfident_model
    noisy = draw(np.random.default_rng(1), transition[clean])
    assert (noisy != clean).mean() > 0.3, "the noise must be heavy enough to matter"
    oracle = fit_temperature_oracle(logits, clean)
    aware = fit_temperature_noise_aware(logits, noisy, transition)
    naive = fit_temperature_noisy(logits, noisy)
    assert aware == pytest.approx(oracle, rel=0.05), name
    assert aware == pytest.approx(OVERCONFIDENCE, rel=0.05), name
    # The noisy labels look like uncertainty: the naive fit softens far too much (about 2.4x here).
    assert naive > 1.8 * oracle, name


def test_the_transposed_matrix_is_wrong_for_non_symmetric_noise(overconfident_model):
    # T[i, j] = P(noisy = j | clean = i); cleanlab's noise_matrix is the transpose. The pair-flip T is doubly
    # stochastic, so its transpose passes validation: only the fit can tell, and it is far off.
    logits, clean = overconfident_model
    transition = pair_flip_matrix(0.35)
    noisy = draw(np.random.default_rng(1), transition[clean])
    assert fit_temperature_noise_aware(logits, noisy, transition.T) > 1.5 * OVERCONFIDENCE


def test_noise_aware_with_the_identity_is_the_plain_fit(overconfident_model):
    logits, clean = overconfident_model
    assert fit_temperature_noise_aware(logits, clean, np.eye(K)) == pytest.approx(
        fit_temperature_oracle(logits, clean), rel=1e-6)


def test_torch_float32_logits_give_the_float64_answer(overconfident_model):
    logits, clean = overconfident_model
    t64 = fit_temperature_oracle(logits, clean)
    t32 = fit_temperature_oracle(torch.from_numpy(logits).float().requires_grad_(), torch.from_numpy(clean))
    assert t32 == pytest.approx(t64, rel=1e-4)
    t16 = fit_temperature_oracle(torch.from_numpy(logits).bfloat16(), torch.from_numpy(clean))
    assert t16 == pytest.approx(t64, rel=0.02)


# (e) the optimiser.

@pytest.mark.parametrize("objective", [
    lambda x: 0.1 * (x - 2.0) ** 2 + np.sin(3.0 * x),
    # five local minima, the global one deepened by a narrow dip near the left end
    lambda x: 0.02 * x * x + np.cos(4.0 * x) - 0.5 * np.exp(-4.0 * (x + 2.2) ** 2),
], ids=["sine in a bowl", "narrow global dip"])
def test_minimiser_finds_the_global_minimum_of_a_multimodal_objective(objective):
    grid = np.linspace(-3.0, 3.0, 600_001)
    values = objective(grid)
    x = minimise_on_interval(lambda v: float(objective(v)), -3.0, 3.0)
    assert x == pytest.approx(grid[np.argmin(values)], abs=2e-5)
    assert objective(x) <= values.min() + 1e-12


def test_minimiser_returns_the_boundary_of_a_monotone_objective():
    assert minimise_on_interval(lambda x: x, 1.0, 2.0) == 1.0
    assert minimise_on_interval(lambda x: -x, 1.0, 2.0) == 2.0


def test_fitted_temperatures_are_the_minima_of_their_objectives(overconfident_model):
    logits, clean = overconfident_model
    logits, clean = logits[:2000], clean[:2000]
    transition = pair_flip_matrix(0.35)
    noisy = draw(np.random.default_rng(2), transition[clean])
    temperatures = np.exp(np.linspace(math.log(0.5), math.log(20.0), 1001))
    for fitted, objective in [
        (fit_temperature_noisy(logits, noisy), lambda t: nll(logits, noisy, t)),
        (fit_temperature_noise_aware(logits, noisy, transition),
         lambda t: forward_corrected_nll(logits, noisy, transition, t)),
    ]:
        values = [objective(t) for t in temperatures]
        assert objective(fitted) <= min(values) + 1e-9
        assert fitted == pytest.approx(temperatures[int(np.argmin(values))], rel=5e-3)


def test_a_bound_caps_the_fit(overconfident_model):
    logits, clean = overconfident_model
    assert fit_temperature_oracle(logits, clean, bounds=(0.5, 2.0)) == pytest.approx(2.0)


# scaled probabilities and the clamp.

def test_scaled_probabilities_are_a_softmax_and_keep_the_argmax():
    logits = np.array([[1.0, 2.0, 0.5], [1000.0, -1000.0, 0.0]])
    for t in (0.1, 1.0, 7.0):
        p = scaled_probabilities(logits, t)
        assert p.dtype == np.float64 and np.isfinite(p).all()
        assert p.sum(axis=1) == pytest.approx([1.0, 1.0])
        assert (p.argmax(axis=1) == logits.argmax(axis=1)).all()
    expected = torch.softmax(torch.tensor(logits) / 7.0, dim=1).numpy()
    assert scaled_probabilities(logits, 7.0) == pytest.approx(expected, rel=1e-12)


def test_corrected_probability_of_zero_is_clamped_not_infinite():
    # T = I and a label the model gives exp(-2000): the corrected probability underflows to 0.
    loss = forward_corrected_nll(np.array([[1000.0, -1000.0]]), np.array([1]), np.eye(2), 1.0)
    assert math.isfinite(loss) and loss > 700.0


# (d) bad inputs are refused with a ConfigError naming the problem.

@pytest.mark.parametrize("call, fragment", [
    (lambda: fit_temperature_noisy(np.zeros(5), np.zeros(5, dtype=int)), "[N, K]"),
    (lambda: fit_temperature_noisy(np.zeros((5, 1)), np.zeros(5, dtype=int)), "K >= 2"),
    (lambda: fit_temperature_noisy(np.full((2, 3), np.nan), np.zeros(2, dtype=int)), "nan or inf"),
    (lambda: fit_temperature_noisy(np.zeros((4, 3)), np.zeros(5, dtype=int)), "one class per row"),
    (lambda: fit_temperature_oracle(np.zeros((2, 3)), np.array([0, 3])), "clean_labels[1] = 3 is not a class"),
    (lambda: fit_temperature_noisy(np.zeros((2, 3)), np.array([0, -1])), "is not a class"),
    (lambda: fit_temperature_noisy(np.zeros((2, 3)), np.array([0.0, 1.0])), "integer class indices"),
    (lambda: fit_temperature_noise_aware(np.zeros((2, 3)), np.array([0, 1]), np.eye(2)), "3 classes"),
    (lambda: fit_temperature_noise_aware(np.zeros((2, 3)), np.array([0, 1]), np.ones((3, 2)) / 2), "square"),
    (lambda: fit_temperature_noise_aware(np.zeros((2, 3)), np.array([0, 1]), np.ones((3, 3)) / 2), "sums to"),
    (lambda: fit_temperature_noisy(np.zeros((2, 3)), np.array([0, 1]), bounds=(0.0, 2.0)), "bounds"),
    (lambda: fit_temperature_noisy(np.zeros((2, 3)), np.array([0, 1]), bounds=(3.0, 2.0)), "bounds"),
    (lambda: fit_temperature_noisy(np.zeros((2, 3)), np.array([0, 1]), bounds=(1.0,)), "bounds"),
    (lambda: scaled_probabilities(np.zeros((2, 3)), 0.0), "temperature must be"),
    (lambda: scaled_probabilities(np.zeros((2, 3)), "hot"), "temperature must be"),
    (lambda: scaled_probabilities(np.zeros((2, 3)), float("nan")), "temperature must be"),
    (lambda: minimise_on_interval(lambda x: x, 1.0, 1.0), "lower < upper"),
])
def test_bad_inputs_are_refused(call, fragment):
    with pytest.raises(ConfigError) as error:
        call()
    assert fragment in str(error.value)
