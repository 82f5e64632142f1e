"""Resuming a run: checkpoints written atomically, the random state they must carry, and where ``last`` is.

A run killed at any moment (SIGKILL, preemption, a node failure) and started again with the same command plus
``--ckpt_path last`` continues from its newest ``last.ckpt``, in its own run directory, and ends with the
metrics the uninterrupted run would have had (CPU, ``deterministic: true``, epoch-end checkpoints).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lsl.errors import ConfigError

_VERSION = re.compile(r"^version_(\d+)$")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, syncs it to disk, then renames it over the
    target: a kill at any moment leaves either the previous complete file or the new complete one.

    Lightning's own writer stages the file in the system temporary folder and moves it from there, which is a
    copy, not an atomic rename, whenever that folder is on another file system (a tmpfs ``/tmp`` on most
    clusters). Remote paths (``s3://`` and the like) still go through Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, path)


def save_atomically(content: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it: a reader (or a kill at
    any moment) sees either the previous complete file or the new complete one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())  # else a node crash right after the rename can leave an empty file
        os.chmod(temporary, 0o644)  # mkstemp makes it private; Lightning's own writer leaves it readable
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # from writers that were killed mid-write
        leftover.unlink(missing_ok=True)


def use_atomic_checkpoints(trainer: pl.Trainer) -> None:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` unless it was configured with a writer of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, with ``save_last`` writing ``last.ckpt`` at the end of every epoch.

    Since Lightning 2.6 an epoch-end ``last.ckpt`` is written only when a top-k checkpoint is saved at the same
    step: with ``save_top_k: 0`` not until the fit ends, and with a monitored metric only when it improves. A
    killed run then resumes from its start or from its best epoch, not from its last one. Every argument is
    ``ModelCheckpoint``'s.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def _save_last_if_not_saved(self, trainer: pl.Trainer) -> None:
        # _should_skip_saving_checkpoint is also true when the parent has just saved at this step.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RandomStateCheckpoint(Callback):
    """Stores the Python, numpy and torch (CPU and CUDA) random states in every checkpoint and restores them
    on resume.

    Without them a resumed run draws its next batch order, augmentation and dropout from the state that
    ``seed_everything`` and the model's initialisation left, not from where the killed run was.
    Lightning keeps only rank 0's callback state, so every rank resumes with rank 0's random state.
    """

    def state_dict(self) -> dict[str, Any]:
        version, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": (version, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        torch.set_rng_state(state_dict["torch"])
        version, keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state((version, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        cuda = state_dict.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def continue_last_run(config: Any) -> Path | None:
    """For ``lsl fit --ckpt_path last``: point the logger at the newest earlier run that has a ``last.ckpt``.

    Lightning 2.6 looks for ``last.ckpt`` only in the checkpoint folder of the run it is starting, which is a
    new ``version_N``, so on its own it never finds the killed run's checkpoint and silently starts from
    scratch. Here the first logger's ``version`` is set to the highest ``version_N`` of the experiment whose
    ``checkpoints/last.ckpt`` exists, so the resumed run continues in that folder, where Lightning finds it.
    Left alone: an explicit logger ``version``, an explicit ``checkpoint.dirpath``, or no such earlier run
    (then the run starts afresh, so that a requeued job can always pass ``--ckpt_path last``).

    Args:
        config: The ``fit`` subcommand's parsed config (a jsonargparse namespace), changed in place.

    Returns:
        The run directory that will be continued, or None.
    """
    logger = config.trainer.logger
    logger = logger[0] if isinstance(logger, list) and logger else logger
    init_args = getattr(logger, "init_args", None)
    if init_args is None or config.checkpoint.dirpath is not None or getattr(init_args, "version", None) is not None:
        return None
    if getattr(init_args, "save_dir", None) is None:
        return None
    experiment = Path(init_args.save_dir) / (getattr(init_args, "name", None) or "")
    runs = [(int(match.group(1)), run) for run in (experiment.glob("version_*") if experiment.is_dir() else [])
            if (match := _VERSION.match(run.name)) and (run / "checkpoints" / "last.ckpt").is_file()]
    if not runs:
        return None
    version, run = max(runs)
    init_args.version = version
    return run


def check_checkpoint_path(ckpt_path: str | None) -> None:
    """Refuse a ``--ckpt_path`` file that is missing or not a whole checkpoint before any run directory exists.

    Only the zip archive's index, at the end of the file, is read, so a truncated file is found at no cost.
    ``last``, ``best``, ``hpc``, ``registry`` and remote paths are left to Lightning.
    """
    if ckpt_path is None or ckpt_path in ("last", "best", "hpc", "registry") or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(ckpt_path)!r} does not exist: give a checkpoint file, e.g. "
                          "logs/<name>/version_N/checkpoints/last.ckpt, or 'last' to resume the newest run")
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"ckpt_path={str(ckpt_path)!r} is not a readable checkpoint ({error}): it is truncated "
                          "or not a file written by torch.save; pick an earlier checkpoint") from error
