"""Resuming a run: checkpoints written atomically, the random state they must carry, and where ``last`` is.

A run killed at any moment (SIGKILL, preemption, a node failure) and started again with the same command plus
``--ckpt_path last`` continues from its newest ``last.ckpt``, in its own run directory, and ends with the
metrics the uninterrupted run would have had (CPU, ``deterministic: true``, epoch-end checkpoints).
"""

from __future__ import annotations

import errno
import random
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lsl.errors import ConfigError, error_behind, warn
from lsl.files import write_atomically

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
    try:
        write_atomically([(path, lambda file: torch.save(content, file))])
    except BaseException as error:
        full = error_behind(error, _is_disk_full)
        if full is not None:
            raise ConfigError(f"could not write {str(path)!r}: {full.strerror}; the previous file there is "
                              "intact: free space on that disk (or raise the quota), or point "
                              "--trainer.logger.init_args.save_dir at another one") from error
        raise
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # from writers that were killed mid-write
        leftover.unlink(missing_ok=True)


def _is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def use_atomic_checkpoints(trainer: pl.Trainer) -> None:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` unless it was configured with a writer of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class RestoreAware(Callback):
    """Knows whether this fit was restored from a checkpoint and has trained no batch since.

    Lightning ends the restored epoch a second time, with no batch, when an iteration-based fit (``max_steps``)
    resumes from a checkpoint written at an epoch end: its fit loop counts such a checkpoint as "restarted on
    epoch end" and runs the epoch-end hooks again before the next epoch starts. The callbacks below tell that
    second ending apart from a real one with :attr:`untrained_since_restore`.
    """

    untrained_since_restore = False

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self.untrained_since_restore = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.untrained_since_restore = False


class ResumableCheckpoint(RestoreAware, ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, with ``save_last`` writing ``last.ckpt`` at the end of every epoch, and an
    iteration-based fit resuming from it as if it had never stopped.

    Since Lightning 2.6 an epoch-end ``last.ckpt`` is written only when a top-k checkpoint is saved at the same
    step: with ``save_top_k: 0`` not until the fit ends, and with a monitored metric only when it improves. A
    killed run then resumes from its start or from its best epoch, not from its last one.

    A ``max_steps`` fit resumed from an epoch-end checkpoint ends the restored epoch again (see
    :class:`RestoreAware`). Nothing is saved at that second ending (the epoch was saved before the kill, and the
    loop state then is one an uninterrupted run never has), and Lightning's count of the batches that stepped,
    which that ending advances by one, is set back to the optimizer steps taken: it is the step every logger
    writes at, so without it every later point of the run is one step late and each ``log_every_n_steps``
    point carries the value of the step ten before. Every argument is ``ModelCheckpoint``'s.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        epoch_loop = trainer.fit_loop.epoch_loop
        # Private: Lightning logs at epoch_loop._batches_that_stepped, with no public way to set it. Under
        # automatic optimization (one optimizer) an uninterrupted run keeps it equal to global_step.
        if self.untrained_since_restore and pl_module.automatic_optimization:
            epoch_loop._batches_that_stepped = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.untrained_since_restore:
            return
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


def check_resume_trained(trainer: pl.Trainer, resumed_step: int) -> None:
    """After a fit resumed at ``resumed_step``: one that trained no step is refused when a limit asked for more
    than another one allowed (``max_steps`` raised while ``max_epochs`` was already reached), and only warned
    about otherwise (a finished run started again).

    Lightning skips the whole training loop when a limit is reached at the restore, so no hook of a callback
    runs in between: the check reads the trainer once the fit returned, before anything is tested.
    """
    steps, epochs = trainer.global_step, trainer.current_epoch
    if steps != resumed_step:
        return
    limits = {"max_steps": (trainer.max_steps, steps), "max_epochs": (trainer.max_epochs, epochs)}
    set_limits = {name: (limit, done) for name, (limit, done) in limits.items() if limit not in (None, -1)}
    reached = [f"{name}={limit}" for name, (limit, done) in set_limits.items() if done >= limit]
    wanting = [f"{name}={limit}" for name, (limit, done) in set_limits.items() if done < limit]
    where = f"the checkpoint has already trained {steps} steps in {epochs} epochs"
    if wanting and reached:
        raise ConfigError(f"{' and '.join(wanting)} asks for more training, but {where}, which reaches "
                          f"{' and '.join(reached)}, so no step would be trained: raise "
                          f"{' and '.join('--trainer.' + limit.split('=')[0] for limit in reached)} too")
    warn(f"nothing left to train: {where} ({' and '.join(reached) or 'a stopping rule'} reached); raise the "
         "limit to train more")


class RandomStateCheckpoint(RestoreAware):
    """Stores the Python, numpy and torch (CPU and CUDA) random states in every checkpoint and restores them
    on resume.

    Without them a resumed run draws its next batch order, augmentation and dropout from the state that
    ``seed_everything`` and the model's initialisation left, not from where the killed run was.
    Lightning keeps only rank 0's callback state, so every rank resumes with rank 0's random state.

    When Lightning ends the restored epoch a second time (a ``max_steps`` fit, see :class:`RestoreAware`), that
    ending opens the training loader and draws from these states; the next epoch opens it again. The states
    are restored once more when that epoch starts, so that it shuffles and augments as the uninterrupted run did.
    """

    _restored: dict[str, Any] | None = None
    _ended_again = False

    def state_dict(self) -> dict[str, Any]:
        version, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": (version, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict
        self._set(state_dict)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ended_again = self.untrained_since_restore

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ended_again and self._restored is not None:  # no batch can run between an end and a start
            self._set(self._restored)
        self._restored, self._ended_again = None, False

    @staticmethod
    def _set(state_dict: dict[str, Any]) -> None:
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
    init_args = _logger_init_args(config)
    if init_args is None or config.checkpoint.dirpath is not None or getattr(init_args, "version", None) is not None:
        return None
    run = newest_run_with_last_checkpoint(config)
    if run is not None:
        init_args.version = int(_VERSION.match(run.name).group(1))
    return run


def newest_run_with_last_checkpoint(config: Any) -> Path | None:
    """The highest ``<save_dir>/<name>/version_N`` of the config's first logger that holds ``checkpoints/last.ckpt``.

    Args:
        config: A subcommand's parsed config (a jsonargparse namespace).
    """
    init_args = _logger_init_args(config)
    if init_args is None or getattr(init_args, "save_dir", None) is None:
        return None
    experiment = Path(init_args.save_dir) / (getattr(init_args, "name", None) or "")
    runs = [(int(match.group(1)), run) for run in (experiment.glob("version_*") if experiment.is_dir() else [])
            if (match := _VERSION.match(run.name)) and (run / "checkpoints" / "last.ckpt").is_file()]
    return max(runs)[1] if runs else None


def _logger_init_args(config: Any) -> Any:
    logger = config.trainer.logger
    logger = logger[0] if isinstance(logger, list) and logger else logger
    return getattr(logger, "init_args", None)
