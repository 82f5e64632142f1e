"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): a loss added to lsl from outside the package.

The worked example of adding a loss: subclass :class:`lsl.losses.LogProbLoss` and implement
``per_example_loss`` on float32 log-probabilities; ``forward`` (float32, autocast off, batch mean) comes with
the base class. Select it with ``examples/gce.yaml``, with this folder on the path:

```bash
PYTHONPATH=examples lsl fit -c configs/quickstart.yaml -c examples/gce.yaml
```
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsl import ConfigError
from lsl.losses import LogProbLoss


class GeneralizedCrossEntropy(LogProbLoss):
    """Generalized cross-entropy (Zhang & Sabuncu, "Generalized cross entropy loss for training deep neural
    networks with noisy labels", NeurIPS 2018).

    Per example: ``(1 - p_y^q) / q``. q -> 0 recovers cross-entropy ``-log p_y``; q = 1 is the mean absolute
    error ``|e_y - p|_1 / 2``, which is robust to label noise but slow to train.

    ```yaml
    loss:
      class_path: generalized_cross_entropy.GeneralizedCrossEntropy
      init_args:
        q: 0.7
    ```

    Args:
        q: Exponent in (0, 1]; the paper uses 0.7.
    """

    def __init__(self, q: float = 0.7) -> None:
        super().__init__()
        if not 0.0 < q <= 1.0:  # NaN fails the comparison too
            raise ConfigError(f"GeneralizedCrossEntropy q={q!r} is not in (0, 1]: the paper uses 0.7")
        self.q = float(q)

    def per_example_loss(self, log_probs: Tensor, target: Tensor) -> Tensor:
        log_p_y = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        # expm1 keeps 1 - p_y^q = -expm1(q log p_y) accurate when p_y^q is close to 1, and log p_y is never log(0).
        return -torch.expm1(self.q * log_p_y) / self.q

    def extra_repr(self) -> str:
        return f"q={self.q}"
