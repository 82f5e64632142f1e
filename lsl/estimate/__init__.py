"""Estimating the noise transition matrix T: the anchor-point estimator (:mod:`lsl.estimate.anchors`, a
library on numpy arrays) and the ``lsl estimate-t`` command that runs a checkpoint for it
(:mod:`lsl.estimate.command`)."""

from lsl.estimate.anchors import (
    DEFAULT_PERCENTILE,
    anchor_points,
    estimate_transition_matrix,
    estimation_error,
    find_anchors,
    rows_at,
)
from lsl.estimate.command import estimate_t_command

__all__ = ["DEFAULT_PERCENTILE", "anchor_points", "estimate_t_command", "estimate_transition_matrix",
           "estimation_error", "find_anchors", "rows_at"]
