"""Cross-entropy, the baseline every other loss is compared with."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class CrossEntropy(nn.Module):
    """Cross-entropy, the baseline of Lukasik et al., "Does label smoothing mitigate label noise?" (ICML 2020).

    Per example: ``-log p_y``, in float32 (autocast keeps ``cross_entropy`` in float32).

    ```yaml
    loss:
      class_path: lsl.losses.CrossEntropy
    ```
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        # PyTorch's fused kernel: the same value as log_softmax + gather, in fewer passes over the logits.
        return F.cross_entropy(logits.float(), target)
