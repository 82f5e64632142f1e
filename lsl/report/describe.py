"""What a run is, read from its resolved ``config.yaml``: dataset, noise model and rate, method, alpha.

:func:`describe` is the one place a report learns a run's method; the tables and plots group and label runs
by what it returns.
"""

from __future__ import annotations

from typing import Any

METHOD_NAMES = {"CrossEntropy": "CE", "LabelSmoothing": "LS", "ForwardCorrection": "FC",
                "BackwardCorrection": "BC", "TeacherStudentModule": "KD"}


def describe(config: dict[str, Any], teacher_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run is, read from its resolved ``config.yaml``: dataset, noise model and rate, method, alpha."""
    data = (config.get("data") or {}).get("init_args") or {}
    model = config.get("model") or {}
    noise = data.get("noise") or {}
    loss = (model.get("init_args") or {}).get("loss") or {"class_path": "lsl.losses.CrossEntropy"}
    model_name = _short(model.get("class_path", ""))
    description = {
        "dataset": _short((data.get("dataset") or {}).get("class_path", "")),
        "noise": _noise_name(noise),
        "rate": (noise.get("init_args") or {}).get("rate"),
        "method": METHOD_NAMES.get(model_name) or METHOD_NAMES.get(_short(loss["class_path"]), _short(loss["class_path"])),
        "alpha": None if model_name == "TeacherStudentModule" else _alpha(loss),
        "teacher": None,
    }
    if teacher_config == {}:  # a student whose teacher run cannot be read: never guess its method
        description["teacher"] = "unknown"
    elif teacher_config is not None:
        teacher = describe(teacher_config)
        description["teacher"] = teacher["method"] + (f" {teacher['alpha']:g}" if teacher["alpha"] else "")
    return description


def _noise_name(noise: dict[str, Any]) -> str:
    """``SymmetricNoise``; a human-noise label set is named by its key: ``HumanNoise(worse_label)``."""
    if not noise:
        return "none"
    key = (noise.get("init_args") or {}).get("key")
    return _short(noise.get("class_path", "")) + (f"({key})" if key else "")


def _alpha(loss: dict[str, Any]) -> float | None:
    name = _short(loss.get("class_path", ""))
    if name == "CrossEntropy":
        return 0.0  # the paper's convention: cross-entropy is label smoothing with alpha 0
    alpha = (loss.get("init_args") or {}).get("alpha")
    return float(alpha) if alpha is not None else None


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]
