"""What a run is, read from its resolved ``config.yaml``: dataset, noise model and rate, method, alpha, and the
transition matrix a loss-correction method was given.

:func:`describe` is the one place a report learns a run's method; the tables and plots group and label runs
by what it returns.
"""

from __future__ import annotations

from typing import Any

from lsl.files import json_sha256

METHOD_NAMES = {"CrossEntropy": "CE", "LabelSmoothing": "LS", "ForwardCorrection": "FC",
                "BackwardCorrection": "BC", "TeacherStudentModule": "KD"}


def describe(config: dict[str, Any], teacher_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run is, read from its resolved ``config.yaml``: dataset, noise model and rate, method, alpha, and
    ``transition``, the T a loss that takes one (FC, BC) was given (see :func:`_transition`)."""
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
        "transition": None if model_name == "TeacherStudentModule" else _transition(loss),
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


def _transition(loss: dict[str, Any]) -> str | None:
    """Where a loss's T comes from, so that FC with an estimated T and FC with the data's T are told apart in a
    table: the file it names, "matrix <sha256 prefix>" for one written in the config, "data" for the T the noise
    realises against the clean labels (the default), None when a symmetric alpha gives it (the alpha column
    shows it) or the loss takes no T (it has neither a ``path`` nor a ``matrix`` argument)."""
    arguments = loss.get("init_args") or {}
    if "path" not in arguments and "matrix" not in arguments:
        return None
    if arguments.get("path"):
        return str(arguments["path"])
    if arguments.get("matrix") is not None:
        return f"matrix {json_sha256(arguments['matrix'])[:8]}"
    return None if arguments.get("alpha") is not None else "data"


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]
