"""lsl.losses against the paper's identities and independent naive formulas (CPU, float64 references)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import QUICKSTART, QUIET, REPO, run_main, scalars
from torch.testing import assert_close

from lsl.errors import ConfigError
from lsl.losses import (
    BackwardCorrection,
    CrossEntropy,
    ForwardCorrection,
    LabelSmearing,
    LabelSmoothing,
    LogProbLoss,
    TransitionMatrixLoss,
)

SEEDS = [0, 1, 2]
NUM_CLASSES = [2, 10, 100]
BATCH = 32
TOL = dict(atol=1e-5, rtol=1e-5)


def random_batch(seed: int, num_classes: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(BATCH, num_classes, generator=generator)
    target = torch.randint(num_classes, (BATCH,), generator=generator)
    return logits, target


def random_transition_matrix(seed: int, num_classes: int) -> np.ndarray:
    """Asymmetric, diagonally dominant (so invertible) and row-stochastic."""
    rng = np.random.default_rng(seed)
    noise = rng.random((num_classes, num_classes)) * rng.random((num_classes, 1))
    matrix = noise / noise.sum(axis=1, keepdims=True) * 0.4 + 0.6 * np.eye(num_classes)
    return matrix / matrix.sum(axis=1, keepdims=True)


def symmetric_matrix(alpha: float, num_classes: int) -> np.ndarray:
    return (1 - alpha) * np.eye(num_classes) + alpha / num_classes * np.ones((num_classes, num_classes))


def naive_forward_correction(logits, target, matrix) -> torch.Tensor:
    probs = torch.softmax(logits.double(), dim=-1)
    noisy_probs = probs @ torch.as_tensor(matrix, dtype=torch.float64)
    return -torch.log(noisy_probs[torch.arange(len(target)), target]).mean().float()


def naive_backward_correction(logits, target, matrix) -> torch.Tensor:
    losses = -torch.log(torch.softmax(logits.double(), dim=-1))
    inverse = torch.as_tensor(np.linalg.inv(matrix))
    return (inverse[target] * losses).sum(dim=-1).mean().float()


cases = pytest.mark.parametrize("seed", SEEDS)
sizes = pytest.mark.parametrize("num_classes", NUM_CLASSES)


# --- the paper's identities ---------------------------------------------------------------------------------


@cases
@sizes
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9])
def test_label_smoothing_matches_pytorch(seed, num_classes, alpha):
    logits, target = random_batch(seed, num_classes)
    expected = F.cross_entropy(logits, target, label_smoothing=alpha)
    assert_close(LabelSmoothing(alpha)(logits, target), expected, **TOL)


@cases
@sizes
def test_cross_entropy_is_label_smoothing_at_zero(seed, num_classes):
    logits, target = random_batch(seed, num_classes)
    expected = F.cross_entropy(logits, target)
    assert_close(CrossEntropy()(logits, target), expected, **TOL)
    assert_close(LabelSmoothing(0.0)(logits, target), expected, **TOL)


@cases
@sizes
def test_negative_label_smoothing_matches_target_formula(seed, num_classes):
    logits, target = random_batch(seed, num_classes)
    alpha = -0.4
    soft_targets = (1 - alpha) * F.one_hot(target, num_classes).double() + alpha / num_classes
    expected = -(soft_targets * torch.log_softmax(logits.double(), dim=-1)).sum(-1).mean().float()
    assert_close(LabelSmoothing(alpha)(logits, target), expected, **TOL)


@cases
@sizes
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.6])
def test_backward_correction_is_negative_label_smoothing(seed, num_classes, alpha):
    logits, target = random_batch(seed, num_classes)
    expected = LabelSmoothing(-alpha / (1 - alpha))(logits, target)
    assert_close(BackwardCorrection(alpha=alpha)(logits, target), expected, **TOL)


@cases
@sizes
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.6])
def test_forward_correction_symmetric(seed, num_classes, alpha):
    logits, target = random_batch(seed, num_classes)
    probs = torch.softmax(logits.double(), dim=-1)
    true_class = probs[torch.arange(BATCH), target]
    expected = -torch.log((1 - alpha) * true_class + alpha / num_classes).mean().float()
    assert_close(ForwardCorrection(alpha=alpha)(logits, target), expected, **TOL)


@cases
@sizes
def test_label_smearing_special_cases(seed, num_classes):
    logits, target = random_batch(seed, num_classes)
    alpha = 0.3
    smoothing = ((1 - alpha) * np.eye(num_classes) + alpha / num_classes).tolist()
    inverse_transition = np.linalg.inv(symmetric_matrix(alpha, num_classes)).tolist()
    identity = np.eye(num_classes).tolist()
    assert_close(LabelSmearing(smoothing)(logits, target), LabelSmoothing(alpha)(logits, target), **TOL)
    assert_close(
        LabelSmearing(inverse_transition)(logits, target), BackwardCorrection(alpha=alpha)(logits, target), **TOL
    )
    assert_close(LabelSmearing(identity)(logits, target), F.cross_entropy(logits, target), **TOL)


@cases
@sizes
def test_corrections_with_asymmetric_matrix_match_naive(seed, num_classes):
    logits, target = random_batch(seed, num_classes)
    matrix = random_transition_matrix(seed, num_classes)
    assert not np.allclose(matrix, matrix.T)
    forward = ForwardCorrection(matrix=matrix.tolist())(logits, target)
    backward = BackwardCorrection(matrix=matrix.tolist())(logits, target)
    assert_close(forward, naive_forward_correction(logits, target, matrix), **TOL)
    assert_close(backward, naive_backward_correction(logits, target, matrix), **TOL)


@sizes
def test_forward_correction_uses_columns_not_rows(num_classes):
    """With an asymmetric T, using T[y] instead of T[:, y] must give a different value."""
    logits, target = random_batch(5, num_classes)
    matrix = random_transition_matrix(5, num_classes)
    transposed = matrix.T / matrix.T.sum(axis=1, keepdims=True)
    loss = ForwardCorrection(matrix=matrix.tolist())(logits, target)
    assert not torch.allclose(loss, naive_forward_correction(logits, target, transposed), atol=1e-4)


# --- where T comes from -------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_path_gives_the_same_as_matrix(tmp_path, loss_class, suffix):
    logits, target = random_batch(3, 10)
    matrix = random_transition_matrix(3, 10)
    file = tmp_path / f"T{suffix}"
    if suffix == ".npy":
        np.save(file, matrix)
    else:
        np.savetxt(file, matrix, delimiter="," if suffix == ".csv" else " ", fmt="%.17g")
    from_file = loss_class(path=str(file))(logits, target)
    assert_close(from_file, loss_class(matrix=matrix.tolist())(logits, target), **TOL)


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
def test_data_matrix_used_without_own_source(loss_class):
    logits, target = random_batch(4, 10)
    data_matrix = random_transition_matrix(4, 10)
    loss = loss_class()
    assert not loss.has_own_matrix
    loss.use_data_transition_matrix(data_matrix)
    assert_close(loss(logits, target), loss_class(matrix=data_matrix.tolist())(logits, target), **TOL)


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
@pytest.mark.parametrize("own", [dict(alpha=0.3), dict(matrix=symmetric_matrix(0.3, 10).tolist()), "path"])
def test_own_source_wins_over_data_matrix(tmp_path, loss_class, own):
    if own == "path":
        np.save(tmp_path / "T.npy", symmetric_matrix(0.3, 10))
        own = dict(path=str(tmp_path / "T.npy"))
    logits, target = random_batch(6, 10)
    loss = loss_class(**own)
    assert loss.has_own_matrix
    expected = loss_class(alpha=0.3)(logits, target)
    loss.use_data_transition_matrix(random_transition_matrix(6, 10).tolist())
    assert_close(loss(logits, target), expected, **TOL)


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
def test_no_transition_matrix_is_a_config_error(loss_class):
    logits, target = random_batch(0, 10)
    loss = loss_class()
    loss.use_data_transition_matrix(None)
    with pytest.raises(ConfigError, match="alpha, matrix or path"):
        loss(logits, target)


def test_alpha_matrix_follows_the_number_of_classes():
    loss = ForwardCorrection(alpha=0.2)
    for num_classes in (10, 2, 10):
        logits, target = random_batch(num_classes, num_classes)
        assert_close(loss(logits, target), naive_forward_correction(logits, target, symmetric_matrix(0.2, num_classes)), **TOL)
        assert loss.transition_matrix.shape == (num_classes, num_classes)


def test_transition_matrix_is_a_non_persistent_buffer():
    loss = BackwardCorrection(matrix=random_transition_matrix(0, 3).tolist())
    assert "transition_matrix" in dict(loss.named_buffers())
    assert loss.state_dict() == {}
    assert isinstance(loss, TransitionMatrixLoss)


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 1.5, float("nan")])
def test_label_smoothing_rejects_alpha_from_one(alpha):
    with pytest.raises(ConfigError, match=f"alpha={alpha}"):
        LabelSmoothing(alpha)


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5])
def test_corrections_reject_alpha_outside_unit_interval(loss_class, alpha):
    with pytest.raises(ConfigError, match=f"alpha={alpha}"):
        loss_class(alpha=alpha)


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
def test_two_sources_are_a_config_error(tmp_path, loss_class):
    matrix = symmetric_matrix(0.2, 3).tolist()
    with pytest.raises(ConfigError, match="alpha and matrix"):
        loss_class(alpha=0.2, matrix=matrix)
    with pytest.raises(ConfigError, match="matrix and path"):
        loss_class(matrix=matrix, path=str(tmp_path / "T.npy"))


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
def test_non_stochastic_matrix_is_a_config_error(loss_class):
    with pytest.raises(ConfigError, match="sums to 1.1"):
        loss_class(matrix=[[0.9, 0.2], [0.1, 0.9]])
    with pytest.raises(ConfigError, match="sums to 1.1"):
        loss_class().use_data_transition_matrix([[0.9, 0.2], [0.1, 0.9]])


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: ForwardCorrection(matrix=symmetric_matrix(0.2, 3).tolist()),
        lambda: BackwardCorrection(matrix=symmetric_matrix(0.2, 3).tolist()),
        lambda: LabelSmearing(np.eye(3).tolist()),
    ],
)
def test_wrong_size_matrix_is_a_config_error(make_loss):
    logits, target = random_batch(0, 10)
    with pytest.raises(ConfigError, match="3x3 but the logits have 10 classes"):
        make_loss()(logits, target)


def test_wrong_size_data_matrix_is_a_config_error():
    loss = ForwardCorrection()
    loss.use_data_transition_matrix(symmetric_matrix(0.2, 3))
    with pytest.raises(ConfigError, match="3x3 but the logits have 10 classes"):
        loss(*random_batch(0, 10))


@pytest.mark.parametrize("matrix", [[[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5 + 1e-8, 0.5 - 1e-8]]])
def test_backward_correction_rejects_singular_matrix(matrix):
    with pytest.raises(ConfigError, match="singular or badly conditioned"):
        BackwardCorrection(matrix=matrix)
    with pytest.raises(ConfigError, match="singular or badly conditioned"):
        BackwardCorrection().use_data_transition_matrix(matrix)


def test_forward_correction_accepts_singular_matrix():
    logits, target = random_batch(0, 2)
    loss = ForwardCorrection(matrix=[[0.5, 0.5], [0.5, 0.5]])(logits, target)
    assert_close(loss, torch.tensor(np.log(2.0), dtype=torch.float32), **TOL)


@pytest.mark.parametrize("matrix", [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, float("nan")], [0.0, 1.0]]])
def test_label_smearing_rejects_non_square_or_non_finite(matrix):
    with pytest.raises(ConfigError, match="square|NaN"):
        LabelSmearing(matrix)


# --- numerics -----------------------------------------------------------------------------------------------


def all_losses(num_classes: int):
    transition = random_transition_matrix(0, num_classes)
    transition[0, 1:] = 0.0  # class 0 is never flipped: zeros in T, log T = -inf
    transition[0, 0] = 1.0
    return {
        "ce": CrossEntropy(),
        "ls": LabelSmoothing(0.2),
        "nls": LabelSmoothing(-0.2),
        "smearing": LabelSmearing(symmetric_matrix(0.2, num_classes).tolist()),
        "fc": ForwardCorrection(matrix=transition.tolist()),
        "bc": BackwardCorrection(alpha=0.2),
    }


@pytest.mark.parametrize("name", ["ce", "ls", "nls", "smearing", "fc", "bc"])
def test_bf16_autocast_gives_finite_float32_scalar_and_gradients(name):
    loss_fn = all_losses(10)[name]
    logits, target = random_batch(0, 10)
    weight = torch.randn(10, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_logits = logits @ weight
        assert bf16_logits.dtype == torch.bfloat16
        loss = loss_fn(bf16_logits, target)
    assert loss.dtype == torch.float32
    assert loss.dim() == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ce", "ls", "fc", "smearing"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_stay_finite(name, dtype):
    loss_fn = all_losses(10)[name]
    logits, target = random_batch(1, 10)
    extreme = (torch.sign(logits) * 1e4).to(dtype).requires_grad_()
    target[0] = 0
    extreme.data[0] = -1e4
    extreme.data[0, 1] = 1e4  # the true class (0) gets probability ~exp(-2e4)
    loss = loss_fn(extreme, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize("name", ["ce", "ls", "nls", "smearing", "fc", "bc"])
def test_loss_is_batch_mean_scalar(name):
    loss_fn = all_losses(10)[name]
    logits, target = random_batch(2, 10)
    per_example = torch.stack([loss_fn(logits[i : i + 1], target[i : i + 1]) for i in range(BATCH)])
    batch_loss = loss_fn(logits, target)
    assert batch_loss.shape == ()
    assert_close(batch_loss, per_example.mean(), **TOL)


def test_forward_correction_is_bounded_and_backward_correction_is_not():
    """FC >= 0 always; BC goes below 0 on confident correct predictions (the paper's 'unbounded below')."""
    target = torch.zeros(4, dtype=torch.long)
    confident = torch.zeros(4, 10)
    confident[:, 0] = 50.0
    assert ForwardCorrection(alpha=0.4)(confident, target) >= 0
    assert BackwardCorrection(alpha=0.4)(confident, target) < 0
    assert LabelSmoothing(-0.5)(confident, target) < 0


# ------------------------------------------------------------- T that forward correction cannot use (issue 15)


def transition_with_zero_column(num_classes: int = 5, column: int = 3) -> np.ndarray:
    """Row-stochastic, invertible nowhere near: clean class `column` always flips to 0, nothing flips to it."""
    matrix = 0.8 * np.eye(num_classes) + 0.2 / num_classes
    matrix[:, column] = 0.0
    matrix[column] = np.eye(num_classes)[0]
    return matrix / matrix.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("source", ["matrix", "path", "data"])
def test_forward_correction_refuses_a_t_with_an_all_zero_column(tmp_path, source):
    matrix = transition_with_zero_column()
    with pytest.raises(ConfigError, match=r"column 3 of .* is all zero: no sample could carry noisy label 3"):
        if source == "matrix":
            ForwardCorrection(matrix=matrix.tolist())
        elif source == "path":
            np.save(tmp_path / "T.npy", matrix)
            ForwardCorrection(path=str(tmp_path / "T.npy"))
        else:
            ForwardCorrection().use_data_transition_matrix(matrix)


# ----------------------------------------- alpha (redraw convention) against the data's T (issue 15)


def flip_noise(rate: float, num_classes: int) -> np.ndarray:
    """SymmetricNoise(rate), flip convention: 1 - rate on the diagonal, rate / (K - 1) off it."""
    return (1 - rate) * np.eye(num_classes) + rate / (num_classes - 1) * (1 - np.eye(num_classes))


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
def test_alpha_beside_flip_noise_of_the_same_number_is_refused(loss_class):
    from lsl.noise import SymmetricNoise

    loss = loss_class(alpha=0.2)
    with pytest.raises(ConfigError) as error:
        loss.use_data_transition_matrix(SymmetricNoise(0.2).transition_matrix(10))
    message = str(error.value)
    assert "alpha=0.2" in message and "Drop alpha" in message and "0.2222222222" in message, message
    assert "matrix" in message and "path" in message and "\n" not in message


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
def test_alpha_that_gives_the_data_t_is_accepted(loss_class):
    from lsl.noise import SymmetricNoise

    logits, target = random_batch(3, 10)
    flip = SymmetricNoise(0.2).transition_matrix(10)
    matched = loss_class(alpha=10 * 0.2 / 9)
    matched.use_data_transition_matrix(flip)  # the same T under flip: accepted
    assert_close(matched(logits, target), loss_class(matrix=flip.tolist())(logits, target), **TOL)

    redraw = loss_class(alpha=0.2)
    redraw.use_data_transition_matrix(SymmetricNoise(0.2, convention="redraw").transition_matrix(10))
    assert_close(redraw(logits, target), loss_class(matrix=symmetric_matrix(0.2, 10).tolist())(logits, target), **TOL)


@pytest.mark.parametrize("loss_class", [ForwardCorrection, BackwardCorrection])
def test_a_deliberately_different_t_stays_possible_through_matrix_or_clean_data(loss_class):
    loss = loss_class(matrix=symmetric_matrix(0.2, 10).tolist())
    loss.use_data_transition_matrix(flip_noise(0.2, 10))  # own matrix: the data's T is ignored
    np.testing.assert_allclose(loss.transition_matrix.double().numpy(), symmetric_matrix(0.2, 10), atol=1e-7)
    loss_class(alpha=0.2).use_data_transition_matrix(np.eye(10))  # clean labels: alpha is a regulariser


def test_alpha_mismatch_is_checked_only_for_symmetric_data_t():
    ForwardCorrection(alpha=0.2).use_data_transition_matrix(random_transition_matrix(1, 10))  # no error


# --- the public extension points ------------------------------------------------------------------------------


class FocalLike(LogProbLoss):
    """A loss written only through the public hook: -(1 - p_y)^2 log p_y."""

    def per_example_loss(self, log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.seen_dtype = log_probs.dtype
        self.autocast_on = torch.is_autocast_enabled("cpu")
        log_p_y = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return -(1.0 - log_p_y.exp()) ** 2 * log_p_y


def test_a_log_prob_loss_averages_its_per_example_loss_in_float32_with_autocast_off():
    loss_fn = FocalLike()
    logits, target = random_batch(0, 10)
    p_y = torch.softmax(logits.double(), dim=-1)[torch.arange(BATCH), target]
    expected = (-((1.0 - p_y) ** 2) * torch.log(p_y)).mean().float()
    assert_close(loss_fn(logits, target), expected, **TOL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(logits.bfloat16(), target)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
    assert loss_fn.seen_dtype == torch.float32 and not loss_fn.autocast_on


def test_per_example_loss_is_public_and_gives_the_values_forward_averages():
    logits, target = random_batch(1, 10)
    for loss_fn in all_losses(10).values():
        if isinstance(loss_fn, LogProbLoss):
            per_example = loss_fn.per_example_loss(F.log_softmax(logits, dim=-1), target)
            assert per_example.shape == (BATCH,)
            assert_close(per_example.mean(), loss_fn(logits, target), **TOL)


def test_a_log_prob_loss_without_per_example_loss_cannot_be_built():
    class Unfinished(LogProbLoss):
        pass

    with pytest.raises(TypeError, match="per_example_loss"):
        Unfinished()


class SquaredTransition(TransitionMatrixLoss):
    """A loss that needs T, written through the public hooks: smearing with M = T @ T."""

    def derive(self, transition: torch.Tensor) -> torch.Tensor:
        self.derived_from = transition.dtype
        self.calls = getattr(self, "calls", 0) + 1
        return transition @ transition

    def per_example_loss(self, log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(self.derived_matrix_for(log_probs)[target] * log_probs).sum(dim=-1)


def test_a_transition_matrix_loss_derives_its_matrix_once_in_float64():
    transition = random_transition_matrix(0, 10)
    loss_fn = SquaredTransition(matrix=transition.tolist())
    logits, target = random_batch(0, 10)
    for _ in range(3):
        loss = loss_fn(logits, target)
    assert loss_fn.calls == 1 and loss_fn.derived_from == torch.float64
    assert_close(loss, LabelSmearing((transition @ transition).tolist())(logits, target), **TOL)


def test_derive_defaults_to_t_itself_and_alpha_builds_t_for_the_logits_classes():
    class Identity(TransitionMatrixLoss):
        def per_example_loss(self, log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return -(self.derived_matrix_for(log_probs)[target] * log_probs).sum(dim=-1)

    logits, target = random_batch(2, 5)
    expected = LabelSmearing(symmetric_matrix(0.3, 5).tolist())(logits, target)
    assert_close(Identity(alpha=0.3)(logits, target), expected, **TOL)


def test_derive_can_refuse_a_t_with_a_config_error():
    with pytest.raises(ConfigError, match="singular"):
        BackwardCorrection().derive(torch.ones(3, 3, dtype=torch.float64) / 3)


# --- the worked example: examples/generalized_cross_entropy.py --------------------------------------------------

EXAMPLES = REPO / "examples"


@pytest.fixture
def gce_module(monkeypatch):
    """The example module, imported the way `PYTHONPATH=examples lsl fit` imports it."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("generalized_cross_entropy")


@sizes
@pytest.mark.parametrize("q", [0.1, 0.7, 1.0])
def test_generalized_cross_entropy_is_the_papers_formula(gce_module, num_classes, q):
    logits, target = random_batch(0, num_classes)
    p_y = torch.softmax(logits.double(), dim=-1)[torch.arange(BATCH), target]
    expected = ((1.0 - p_y**q) / q).mean().float()
    assert_close(gce_module.GeneralizedCrossEntropy(q)(logits, target), expected, **TOL)


def test_generalized_cross_entropy_approaches_cross_entropy_as_q_goes_to_zero(gce_module):
    logits, target = random_batch(1, 10)
    cross_entropy = F.cross_entropy(logits.double(), target).float()
    gaps = [(gce_module.GeneralizedCrossEntropy(q)(logits, target) - cross_entropy).abs().item()
            for q in (1e-2, 1e-4, 1e-6)]
    # (1 - p^q) / q = -log p - q (log p)^2 / 2 - ...: the gap shrinks with q, to float32 rounding at q = 1e-6.
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4


def test_generalized_cross_entropy_under_bf16_autocast_is_a_finite_float32_scalar(gce_module):
    logits, target = random_batch(0, 10, scale=30.0)  # large logits: some p_y underflow to 0, log p_y must not
    weight = torch.eye(10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_logits = logits @ weight
        assert bf16_logits.dtype == torch.bfloat16
        loss = gce_module.GeneralizedCrossEntropy(0.7)(bf16_logits, target)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_generalized_cross_entropy_refuses_q_outside_zero_one(gce_module, q):
    with pytest.raises(ConfigError, match="q="):
        gce_module.GeneralizedCrossEntropy(q)


def test_the_example_loss_trains_through_lsl_fit_and_its_checkpoint_reloads(gce_module, tmp_path: Path,
                                                                          monkeypatch) -> None:
    from lsl import Classifier

    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "-c", QUICKSTART, "-c", str(EXAMPLES / "gce.yaml"), *QUIET, "--trainer.max_steps=3",
                     "--views.every_n_epochs=0"]) == 0
    run = tmp_path / "logs" / "quickstart" / "version_0"

    model = Classifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt")

    assert type(model.loss).__name__ == "GeneralizedCrossEntropy" and model.loss.q == 0.7
    assert isinstance(model.loss, LogProbLoss)
    logged = scalars(run)
    assert len(logged["test/acc"]) == 1 and 0.0 <= logged["test/acc"][0] <= 1.0
