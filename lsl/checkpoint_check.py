"""A checkpoint is what the user asked for: a whole file, with the config's hyperparameters and data.

LightningCLI reads a checkpoint's hyperparameters *over* the config, so on its own ``lsl fit --ckpt_path X
--model.init_args.loss.init_args.alpha=0.1`` resumes with the checkpoint's alpha and records it, and ``lsl test``
evaluates a checkpoint of another architecture or dataset and exits 0. Here every checkpoint a run will
restore (an explicit file, ``last``, or the ``hpc_ckpt_N.ckpt`` that Lightning picks up under SLURM) is read
whole first, and refused with the differing keys listed unless it matches the resolved config.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from lsl.errors import ConfigError

SPECIAL_PATHS = ("last", "best", "hpc", "registry")
_IGNORED_HPARAMS = {"_instantiator"}  # how Lightning rebuilds the model, not what it is
_HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")
_SHOWN_DIFFERENCES = 6


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, refused unless it is whole: a readable zip archive whose every record
    matches the CRC-32 it was written with (``torch.load`` does not check them, so a flipped byte in the
    weights would otherwise load as different weights), holding model weights.

    Raises:
        ConfigError: naming the file, what is wrong with it, and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r} does not exist: give a checkpoint file, e.g. "
                          "logs/<name>/version_N/checkpoints/last.ckpt, or 'last' for the newest run's")
    damaged = (f"ckpt_path={str(path)!r} is damaged ({{}}): it was truncated or changed after it was written; "
               "pick an earlier checkpoint, or train again")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_record = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ConfigError(damaged.format(f"not a whole checkpoint archive: {error}")) from error
    if bad_record is not None:
        raise ConfigError(damaged.format(f"record {bad_record} fails its CRC-32 check"))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports a bad pickle in several types; none is the user's to debug
        raise ConfigError(damaged.format(f"torch.load failed: {type(error).__name__}: {str(error)[:200]}")) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={str(path)!r} holds no model weights (no 'state_dict'): it is not a "
                          "checkpoint written by `lsl fit`; give one from logs/<name>/version_N/checkpoints/")
    return checkpoint


def hpc_checkpoint(root_dir: str | Path) -> Path | None:
    """The ``hpc_ckpt_N.ckpt`` with the highest N in ``root_dir``: what Lightning restores under SLURM when no
    ``ckpt_path`` is given (it saves one there when a job is requeued)."""
    root = Path(root_dir)
    found = [(int(match.group(1)), path) for path in (root.glob("hpc_ckpt_*.ckpt") if root.is_dir() else [])
             if (match := _HPC_CHECKPOINT.match(path.name))]
    return max(found)[1] if found else None


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: A in the checkpoint, B now`` for every dotted key whose value differs between two nested dicts."""
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(saved_flat.keys() | current_flat.keys()):
        if key.split(".")[0] in _IGNORED_HPARAMS:
            continue
        before, now = saved_flat.get(key, "(unset)"), current_flat.get(key, "(unset)")
        if before != now:
            lines.append(f"{key}: {before!r} in the checkpoint, {now!r} now")
    return lines


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def check_checkpoint_matches(checkpoint: dict[str, Any], path: str | Path, model: Any, data_fingerprint: Any,
                             may_differ: bool) -> None:
    """Refuse a checkpoint whose model hyperparameters or training data differ from the resolved config.

    Args:
        checkpoint: The checkpoint, as :func:`read_checkpoint` returned it.
        path: Where it was read from (named in the message).
        model: The model the config built; its ``hparams`` are compared with the checkpoint's.
        data_fingerprint: A callable returning the data module's ``fingerprint()``, or None when the data
            cannot tell; compared with what the checkpoint recorded (``lsl_data``), the noisy labels' checksum
            included. Called only when the checkpoint recorded one.
        may_differ: ``--allow_changed_hparams``: the user asked to continue with other values.

    Raises:
        ConfigError: listing the differing keys and the two ways on.
    """
    found = differences(dict(checkpoint.get("hyper_parameters") or {}), dict(getattr(model, "hparams", {}) or {}))
    if not found and checkpoint.get("lsl_data") is not None and data_fingerprint is not None:
        found = [f"data.{line}" for line in differences(checkpoint["lsl_data"], data_fingerprint())]
    if not found or may_differ:
        return
    shown = "; ".join(found[:_SHOWN_DIFFERENCES]) + (f"; and {len(found) - _SHOWN_DIFFERENCES} more"
                                                     if len(found) > _SHOWN_DIFFERENCES else "")
    own_config = Path(path).resolve().parent.parent / "config.yaml"
    fix = f"run with its own config (--config {own_config})" if own_config.is_file() else "run with its own config"
    raise ConfigError(f"checkpoint {str(path)!r} does not match this config ({shown}): {fix}, or pass "
                      "--allow_changed_hparams=true to use the config's values with its weights")


# What makes two runs' training labels the same: the noise spec may be spelled differently (a path moved) and
# still give these labels, so a teacher or an estimate-t checkpoint is compared on these keys alone.
TRAINING_LABEL_KEYS = ("dataset", "num_classes", "noisy_labels_sha256")


def training_label_differences(recorded: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """``key: A recorded, B now`` for each of :data:`TRAINING_LABEL_KEYS` on which two data fingerprints
    (``NoisyLabelDataModule.fingerprint()``, as a checkpoint records it) differ; empty when the training
    labels are the same."""
    return [f"{key}: {_short(recorded.get(key))} recorded, {_short(ours.get(key))} now"
            for key in TRAINING_LABEL_KEYS if recorded.get(key) != ours.get(key)]


def _short(value: Any) -> str:
    text = repr(value)
    return text[:19] + "...'" if isinstance(value, str) and len(value) == 64 else text  # a sha256 in full is noise
