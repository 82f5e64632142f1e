"""The teacher-logit cache: a teacher's logits over the un-augmented training set, computed once, kept on disk.

One float16 ``[N, K]`` tensor under ``<artifact_dir>/teacher_logits/``, keyed by the teacher checkpoint's
sha256, the dataset, the noise artifact's sha256 and the transform. A file that is missing, damaged or made
for another key is recomputed, never trusted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lsl.data import NoisyDataset, NoisyLabelDataModule
from lsl.distill.teacher import FrozenTeacher
from lsl.files import json_sha256
from lsl.resume import save_atomically


def cached_training_logits(teacher: FrozenTeacher, data: NoisyLabelDataModule, samples: NoisyDataset) -> Tensor:
    """The teacher's logits for ``samples`` (the data module's un-augmented training samples), from the cache
    when it holds them for this teacher, data and transform; else computed, and written to the cache.

    Returns:
        float32 ``[N, K]``: as read back (float16 values, on the CPU) or as computed (on the teacher's device).
    """
    fingerprint = data.fingerprint()
    key = {"teacher_sha256": teacher.sha256, "dataset": fingerprint["dataset"],
           "noisy_labels_sha256": fingerprint["noisy_labels_sha256"], "transform": data.eval_transform,
           "num_samples": len(samples), "num_classes": teacher.num_classes}
    digest = json_sha256(key)[:16]
    path = Path(data.artifact_dir) / "teacher_logits" / f"{key['dataset']}-{digest}.pt"
    cached = _read_logits(path, key)
    if cached is not None:
        return cached
    logits = teacher.logits(data, samples)
    save_atomically({"key": key, "logits": logits.to(torch.float16).cpu()}, path)
    return logits


def _read_logits(path: Path, key: dict) -> Tensor | None:
    """The cached logits at ``path`` if they are readable and were made for ``key``; None means recompute."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: a cache is recomputed, never trusted
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    logits = cached.get("logits")
    if not isinstance(logits, Tensor) or logits.shape != (key["num_samples"], key["num_classes"]):
        return None
    return logits.float()
