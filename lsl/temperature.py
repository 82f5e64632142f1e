"""Post-hoc temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017), three ways.

A trained model's logits ``f`` are divided by one scalar ``t > 0`` fitted on a held-out (validation) split:

    p_t(x) = softmax(f(x) / t).

``t > 1`` softens an over-confident model, ``t < 1`` sharpens an under-confident one; the predicted class
never changes, so accuracy does not either, only calibration (ECE, NLL). The fit minimises a negative
log-likelihood of the split's labels over ``t``; under label noise the question is *which* labels:

- :func:`fit_temperature_noisy`: the NLL of the noisy labels, ``mean(-log p_t(x)_noisy)``. This is what a
  practitioner can do, and it calibrates the model to the *noisy* label distribution: with symmetric noise
  it picks a much larger ``t`` than the clean labels want (the noise looks like uncertainty).
- :func:`fit_temperature_noise_aware`: the forward-corrected NLL (Patrini et al., CVPR 2017) of the noisy
  labels, ``mean(-log [T^T p_t(x)]_noisy) = mean(-log sum_i p_t(x)_i T[i, noisy])`` with the row-stochastic
  ``T[i, j] = P(noisy = j | clean = i)``. If ``p_t`` is the clean-label posterior then ``T^T p_t`` is the
  noisy-label posterior, so this likelihood is maximised by the temperature that is right for the *clean*
  labels, seen only through noisy ones. ``T`` is the data's true matrix or an estimate (``lsl estimate-t``'s
  ``.npy``, read with :func:`lsl.noise.load_transition_matrix`).
- :func:`fit_temperature_oracle`: the NLL of the *clean* labels of the same validation split. No practitioner
  has these; it is the reference the other two are judged against. Never fit it on the test set: the test
  set is where the calibration of all three is measured.

All arithmetic is float64; the softmax goes through log-sum-exp and the corrected probability is clamped at
the smallest positive float before its log, so no fit produces ``inf`` or ``nan``. The 1-D minimisation is over
``log t`` in ``bounds`` (by default ``[0.001, 10000]``): a coarse grid finds the best bracket, golden-section search
refines it (:func:`minimise_on_interval`), so a non-convex objective (the corrected NLL need not be convex)
still gets its global minimum up to the grid's resolution.

How to use::

    from lsl.inference import predict_logits
    from lsl.noise import load_transition_matrix
    from lsl.temperature import fit_temperature_noise_aware, scaled_probabilities

    datamodule.setup("fit"); datamodule.setup("test")
    val = datamodule.val_set                                     # None when val_fraction is 0
    logits = predict_logits(model, datamodule, val)              # float32 [N, K]
    T = load_transition_matrix("transition.npy", num_classes=logits.shape[1])
    t = fit_temperature_noise_aware(logits, val.noisy, T)        # val.clean only for fit_temperature_oracle
    test_logits = predict_logits(model, datamodule, datamodule.test_set)
    probabilities = scaled_probabilities(test_logits, t)         # calibrated float64 [M, K]
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from lsl.errors import ConfigError
from lsl.noise import validate_transition_matrix

# Wide: a model whose loss drove its logits huge (a diverged negative label smoothing) wants t far above 100.
DEFAULT_BOUNDS = (1e-3, 1e4)
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 1 / golden ratio: the share of the bracket kept each step
GRID_POINTS = 41
LOG_T_TOLERANCE = 1e-9
TINY = np.finfo(np.float64).tiny


def _as_array(values: object) -> np.ndarray:
    """``values`` as a numpy array: torch tensors (any device, with or without grad) go through the CPU,
    floating ones as float64 (numpy has no bfloat16)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.double() if values.is_floating_point() else values).numpy()
    return np.asarray(values)


def validate_logits(logits: object) -> np.ndarray:
    """``logits`` as a float64 ``[N, K]`` array (N >= 1, K >= 2, all finite), or ConfigError saying what is wrong."""
    array = _as_array(logits)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
        raise ConfigError(f"logits must be an [N, K] array with N >= 1 samples and K >= 2 classes, "
                          f"got shape {tuple(array.shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)) \
            or np.issubdtype(array.dtype, np.bool_):
        raise ConfigError(f"logits must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ConfigError("logits contain nan or inf: fit a temperature on the logits of a model that did not diverge")
    return array


def validate_labels(labels: object, num_samples: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """``labels`` as an int64 ``[N]`` array of classes in ``[0, K)``, or ConfigError saying what is wrong."""
    array = _as_array(labels)
    if array.ndim != 1 or array.shape[0] != num_samples:
        raise ConfigError(f"{name} must be one class per row of the logits ({num_samples}), got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_):
        raise ConfigError(f"{name} must be integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    outside = np.flatnonzero((array < 0) | (array >= num_classes))
    if outside.size:
        raise ConfigError(f"{name}[{int(outside[0])}] = {int(array[outside[0]])} is not a class: "
                          f"the logits have K = {num_classes} classes, 0 to {num_classes - 1}")
    return array


def _check_temperature(temperature: float) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0.0):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


def check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """``bounds`` as two floats ``0 < lower < upper``, or ConfigError."""
    try:
        lower, upper = (float(value) for value in bounds)
    except (TypeError, ValueError):
        lower = upper = math.nan
    if not (math.isfinite(lower) and math.isfinite(upper) and 0.0 < lower < upper):
        raise ConfigError(f"temperature bounds must be two finite numbers 0 < lower < upper, got {bounds!r}")
    return lower, upper


def _log_softmax(scaled: np.ndarray) -> np.ndarray:
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _shifted(f: np.ndarray) -> np.ndarray:
    """``f`` minus each row's max: for any ``t > 0`` the max of ``f / t`` is ``max(f) / t``, so one shift, done
    once per fit, keeps every ``exp`` of the search from overflowing."""
    return f - f.max(axis=1, keepdims=True)


def _nll(g: np.ndarray, y: np.ndarray, t: float) -> float:
    """``mean(logsumexp(g / t) - g_y / t)`` for row-shifted logits ``g``."""
    scaled = g / t
    return float(np.log(np.exp(scaled).sum(axis=1)).mean() - scaled[np.arange(y.shape[0]), y].mean())


def _corrected_nll(g: np.ndarray, columns: np.ndarray, t: float) -> float:
    """``mean(-log sum_i softmax(g / t)_i T[i, y])`` for row-shifted logits ``g`` and ``columns[n] = T[:, y_n]``."""
    p = np.exp(g / t)
    corrected = (p * columns).sum(axis=1) / p.sum(axis=1)
    return float(-np.log(np.maximum(corrected, TINY)).mean())


def _label_columns(T: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[N, K]``, row ``n`` the column ``T[:, y_n]``: P(this noisy label | each clean class)."""
    return np.ascontiguousarray(T[:, y].T)


def scaled_log_probabilities(logits: object, temperature: float) -> np.ndarray:
    """``log softmax(f / t)``, float64 ``[N, K]``, through log-sum-exp (no overflow for huge logits).

    Args:
        logits: ``[N, K]`` logits (numpy or torch).
        temperature: ``t > 0``.

    Returns:
        The log-probabilities of the temperature-scaled model.
    """
    return _log_softmax(validate_logits(logits) / _check_temperature(temperature))


def scaled_probabilities(logits: object, temperature: float) -> np.ndarray:
    """``softmax(f / t)``, float64 ``[N, K]``: the calibrated probabilities once ``t`` is fitted.

    Args:
        logits: ``[N, K]`` logits (numpy or torch).
        temperature: ``t > 0`` from one of the ``fit_temperature_*`` functions.

    Returns:
        Rows that sum to 1.
    """
    return np.exp(scaled_log_probabilities(logits, temperature))


def nll(logits: object, labels: object, temperature: float) -> float:
    """``mean(-log softmax(f / t)_y)``: the objective of :func:`fit_temperature_noisy` (noisy labels) and
    :func:`fit_temperature_oracle` (clean labels).

    Args:
        logits: ``[N, K]`` logits (numpy or torch).
        labels: ``[N]`` class indices.
        temperature: ``t > 0``.

    Returns:
        The mean negative log-likelihood, in nats.
    """
    f = validate_logits(logits)
    return _nll(_shifted(f), validate_labels(labels, f.shape[0], f.shape[1]), _check_temperature(temperature))


def forward_corrected_nll(logits: object, noisy_labels: object, transition: object, temperature: float) -> float:
    """``mean(-log sum_i softmax(f / t)_i T[i, noisy])``: the objective of :func:`fit_temperature_noise_aware`.

    The corrected probability is clamped at the smallest positive float before the log, so a zero column of
    ``T`` (a noisy class no clean class produces) gives a large finite loss, not ``inf``.

    Args:
        logits: ``[N, K]`` logits (numpy or torch).
        noisy_labels: ``[N]`` observed labels.
        transition: ``[K, K]`` row-stochastic ``T[i, j] = P(noisy = j | clean = i)``.
        temperature: ``t > 0``.

    Returns:
        The mean forward-corrected negative log-likelihood, in nats.
    """
    f = validate_logits(logits)
    y = validate_labels(noisy_labels, f.shape[0], f.shape[1], name="noisy_labels")
    T = validate_transition_matrix(_as_array(transition), f.shape[1])
    return _corrected_nll(_shifted(f), _label_columns(T, y), _check_temperature(temperature))


def minimise_on_interval(objective: Callable[[float], float], lower: float, upper: float,
                         grid_points: int = GRID_POINTS, tolerance: float = LOG_T_TOLERANCE) -> float:
    """The ``x`` in ``[lower, upper]`` where ``objective`` is least: a grid, then golden-section search.

    ``grid_points`` evenly spaced points locate the best one; golden-section search (Kiefer 1953) then
    narrows the bracket between its two neighbours to ``tolerance``. A unimodal objective gets its exact
    minimiser; any other gets the minimum of the basin the grid found best (so a local dip narrower than the
    grid spacing can be missed). A minimiser on the boundary is returned as the boundary.

    Args:
        objective: The function to minimise; called about ``grid_points + 1.44 * log2(spacing / tolerance)``
            times.
        lower: Left end of the interval.
        upper: Right end (> ``lower``).
        grid_points: Points of the initial grid (>= 3).
        tolerance: Width of the final bracket.

    Returns:
        The minimiser found.
    """
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ConfigError(f"minimise_on_interval needs finite lower < upper, got [{lower}, {upper}]")
    if grid_points < 3:
        raise ConfigError(f"grid_points must be at least 3, got {grid_points}")
    grid = np.linspace(lower, upper, grid_points)
    values = [objective(float(x)) for x in grid]
    best = int(np.argmin(values))
    a, b = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, grid_points - 1)])
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = objective(c), objective(d)
    while b - a > tolerance:
        if fc <= fd:  # the minimum is in [a, d]
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = objective(c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = objective(d)
    candidates = [(values[best], float(grid[best])), (fc, c), (fd, d)]
    return min(candidates)[1]


def _fit(objective: Callable[[float], float], bounds: tuple[float, float]) -> float:
    """The temperature in ``bounds`` minimising ``objective(t)``, searched over ``log t``."""
    lower, upper = check_bounds(bounds)
    log_t = minimise_on_interval(lambda s: objective(math.exp(s)), math.log(lower), math.log(upper))
    return min(max(math.exp(log_t), lower), upper)


def fit_temperature_noisy(logits: object, noisy_labels: object,
                          bounds: tuple[float, float] = DEFAULT_BOUNDS) -> float:
    """The temperature minimising the NLL of the noisy labels: ``argmin_t mean(-log softmax(f / t)_noisy)``.

    What a practitioner with a noisy validation split can fit (Guo et al., ICML 2017). It calibrates the model
    to the noisy labels, so under noise it over-softens; compare :func:`fit_temperature_noise_aware`.

    Args:
        logits: ``[N, K]`` validation logits (numpy or torch, e.g. from :func:`lsl.inference.predict_logits`).
        noisy_labels: ``[N]`` observed (noisy) labels of the same samples.
        bounds: The interval ``(lower, upper)``, ``0 < lower < upper``, searched for ``t``.

    Returns:
        The fitted temperature ``t``.
    """
    return _fit_label_nll(logits, noisy_labels, "noisy_labels", bounds)


def fit_temperature_noise_aware(logits: object, noisy_labels: object, transition: object,
                                bounds: tuple[float, float] = DEFAULT_BOUNDS) -> float:
    """The temperature minimising the forward-corrected NLL of the noisy labels:
    ``argmin_t mean(-log sum_i softmax(f / t)_i T[i, noisy])``.

    With ``T[i, j] = P(noisy = j | clean = i)`` (row-stochastic; Patrini et al., CVPR 2017), ``T^T p`` is the
    noisy-label distribution a clean-label posterior ``p`` implies, so this fit targets the temperature that
    is right for the clean labels while seeing only noisy ones. It is only as good as ``T``.

    Args:
        logits: ``[N, K]`` validation logits (numpy or torch).
        noisy_labels: ``[N]`` observed (noisy) labels of the same samples.
        transition: ``[K, K]`` row-stochastic ``T``: the data's, or an estimate (``lsl estimate-t``).
        bounds: The interval ``(lower, upper)``, ``0 < lower < upper``, searched for ``t``.

    Returns:
        The fitted temperature ``t``.
    """
    f = validate_logits(logits)
    y = validate_labels(noisy_labels, f.shape[0], f.shape[1], name="noisy_labels")
    T = validate_transition_matrix(_as_array(transition), f.shape[1])
    g, columns = _shifted(f), _label_columns(T, y)
    return _fit(lambda t: _corrected_nll(g, columns, t), bounds)


def fit_temperature_oracle(logits: object, clean_labels: object,
                           bounds: tuple[float, float] = DEFAULT_BOUNDS) -> float:
    """The temperature minimising the NLL of the *clean* labels of the validation split.

    A reference no practitioner has (the clean labels are known only because lsl made the noise): it says
    what temperature the clean labels want, so the other two fits can be judged against it. Fit it on the
    validation split, never on the test set (where the calibration of all three is measured).

    Args:
        logits: ``[N, K]`` validation logits (numpy or torch).
        clean_labels: ``[N]`` true labels of the same samples.
        bounds: The interval ``(lower, upper)``, ``0 < lower < upper``, searched for ``t``.

    Returns:
        The fitted temperature ``t``.
    """
    return _fit_label_nll(logits, clean_labels, "clean_labels", bounds)


def _fit_label_nll(logits: object, labels: object, name: str, bounds: tuple[float, float]) -> float:
    """``argmin_t mean(-log softmax(f / t)_label)``: the noisy fit and the oracle differ only in the labels."""
    f = validate_logits(logits)
    y = validate_labels(labels, f.shape[0], f.shape[1], name=name)
    g = _shifted(f)
    return _fit(lambda t: _nll(g, y, t), bounds)
