"""When a finished run is not a result: the collapse check shared by the classifier and ``lsl report``.

A loss that is unbounded below but stays finite (backward correction, negative label smoothing at a high
learning rate) can drive the network to predict one class for every input. The divergence guard never fires,
the run ends with exit status 0, and its accuracy is chance. The classifier logs ``test/top_class_share`` (the
share of test predictions that go to the most-predicted class) and warns loudly at or above
:data:`COLLAPSE_SHARE`; ``lsl report`` marks such runs instead of averaging them in silently.
"""

from __future__ import annotations

import math

TOP_CLASS_SHARE = "test/top_class_share"
# A test set of balanced classes never gives 90% of its predictions to one class unless the model collapsed.
COLLAPSE_SHARE = 0.9


def collapsed(top_class_share: float | None) -> bool:
    """Whether a run whose most-predicted class took ``top_class_share`` of the test predictions collapsed."""
    return top_class_share is not None and math.isfinite(top_class_share) and top_class_share >= COLLAPSE_SHARE
