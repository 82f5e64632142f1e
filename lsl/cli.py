"""The ``lsl`` command: LightningCLI with the data's classes and noise linked into the model.

    lsl fit --config configs/quickstart.yaml
    lsl test --config configs/quickstart.yaml --ckpt_path logs/quickstart/version_0/checkpoints/last.ckpt
    lsl fit --config configs/ls_cifar100.yaml --print_config
    lsl estimate-t --ckpt RUN/checkpoints/last.ckpt --config RUN/config.yaml --out T.npy
    lsl sweep --config configs/sweeps/fashion_mnist_table.yaml --parallel 2
    lsl report logs/fashion_mnist_table
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lsl.allocator import tune_host_allocator  # noqa: F401 - lsl.cli.tune_host_allocator, as the README names it
from lsl.checkpoint_check import SPECIAL_PATHS, check_checkpoint_matches, hpc_checkpoint, read_checkpoint
from lsl.commands import DESCRIPTION, main, parser_error_line  # noqa: F401 - lsl.cli.main: the entry point before lsl.commands
from lsl.cpu_features import cpu_has_bf16
from lsl.data import NoisyLabelDataModule
from lsl.divergence import DivergenceGuard
from lsl.errors import ConfigError, warn
from lsl.files import read_yaml
from lsl.module import Classifier
from lsl.resume import (
    RandomStateCheckpoint,
    ResumableCheckpoint,
    check_resume_trained,
    continue_last_run,
    newest_run_with_last_checkpoint,
    use_atomic_checkpoints,
)
from lsl.temperature_scaling import TemperatureScaling
from lsl.train_eval import TrainEvalDiagnostics
from lsl.views import TensorBoardViews


class PredictionWriter(BasePredictionWriter):
    """Saves what ``lsl predict`` computes to ``<run dir>/<filename>``, a ``torch.save`` dict of the
    test set's ``probabilities`` [N, K], ``index`` [N] and clean ``target`` [N] (one file per rank under DDP).

    Args:
        filename: File name inside the run directory.
    """

    def __init__(self, filename: str = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices) -> None:
        outputs = {key: torch.cat([batch[key] for batch in predictions]).cpu() for key in predictions[0]}
        path = Path(trainer.log_dir or ".") / self.filename
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(outputs, path)


class LSLCLI(LightningCLI):
    """LightningCLI with lsl's links and defaults: TensorBoard under ``logs/``, a ``last.ckpt`` every epoch.

    Only ``last.ckpt`` is kept by default (the paper's protocol is the final model); ask for more with
    ``--checkpoint.monitor=val/acc_noisy --checkpoint.mode=max --checkpoint.save_top_k=1``; then the test
    after fit also tests that checkpoint and logs ``test_best/*``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--allow_changed_hparams", type=bool, default=False,
                            help="with --ckpt_path: use the config's model and data settings where the "
                                 "checkpoint's differ (without it such a checkpoint is refused, naming the keys)")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="fit only: evaluate the final weights on the clean test set and log test/* "
                                 "into the same run (the paper reports the last checkpoint, not the best)")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(DivergenceGuard, "divergence")
        parser.add_lightning_class_args(RandomStateCheckpoint, "random_state")
        parser.add_lightning_class_args(TensorBoardViews, "views")
        parser.add_lightning_class_args(TrainEvalDiagnostics, "train_eval")
        parser.add_lightning_class_args(TemperatureScaling, "temperature")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,
            # A plain config, not a lazy_instance: ddp_spawn pickles the trainer, and lazy instances cannot be.
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "logs", "name": "default", "default_hp_metric": False}},
        })
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.init_args.noise", "model.init_args.noise", apply_on="parse")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        self._checkpoint: tuple[str, dict] | None = None
        self._resumed_step: int | None = None
        if not subcommand:
            return
        config = self.config[subcommand]
        if subcommand == "fit":
            check_fit_limits(config.trainer)
        elif not config.get("ckpt_path"):
            raise ConfigError(f"lsl {subcommand} needs --ckpt_path (a checkpoint file, or 'last' for the newest "
                              "run's): without one it would evaluate untrained weights")
        check_seed(config.get("seed_everything"))
        check_save_dir(config.trainer)
        if config.get("ckpt_path") == "last" and subcommand != "fit":
            # Lightning's "last" means the last checkpoint of this process's own fit: in a new `lsl test` there
            # is none, and it would test the untrained weights.
            run = newest_run_with_last_checkpoint(config)
            if run is None:
                raise ConfigError(f"ckpt_path='last': no run of this experiment has a checkpoints/last.ckpt under "
                                  f"{_experiment_dir(config)}: give a checkpoint file, or the config of the run")
            config.ckpt_path = str(run / "checkpoints" / "last.ckpt")
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None and ckpt_path not in SPECIAL_PATHS and "://" not in str(ckpt_path):
            # Read whole now, before LightningCLI reads its hyperparameters (which a damaged file would crash).
            self._checkpoint = (ckpt_path, read_checkpoint(ckpt_path))
        # LightningCLI is about to put the checkpoint's hyperparameters over the config's; the config's are
        # restored before the model is built, and the checkpoint must then match them.
        self._model_config = copy.deepcopy(config.model)

    def before_instantiate_classes(self) -> None:
        if not self.subcommand:
            return
        config = self.config[self.subcommand]
        config.model = self._model_config
        if self.subcommand == "fit" and config.ckpt_path == "last":
            run = continue_last_run(config)
            if run is not None:
                path = run / "checkpoints" / "last.ckpt"
                self._checkpoint = (str(path), read_checkpoint(path))
        if self.subcommand == "fit" and config.ckpt_path is None and SLURMEnvironment.detect():
            # Under SLURM Lightning restores the newest hpc_ckpt_N.ckpt of the root folder, if there is one.
            path = hpc_checkpoint(config.trainer.default_root_dir or Path.cwd())
            if path is not None:
                self._checkpoint = (str(path), read_checkpoint(path))

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "fit" and bf16_emulated(self.trainer.precision, self.trainer.accelerator):
            warn(bf16_emulated_message(self.trainer.precision))
        for callback in self.trainer.callbacks:
            if isinstance(callback, TemperatureScaling):
                callback.check_data(self.datamodule)
        if self._checkpoint is None:
            return
        path, checkpoint = self._checkpoint
        fingerprint = self.datamodule.fingerprint if isinstance(self.datamodule, NoisyLabelDataModule) else None
        check_checkpoint_matches(checkpoint, path, self.model, fingerprint,
                                 may_differ=self.config[self.subcommand].allow_changed_hparams)
        self._resumed_step = checkpoint.get("global_step")
        self._checkpoint = None  # Lightning reads the file again itself: do not hold the weights twice

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def before_fit(self) -> None:
        # Fix each logger's version_N now: with ddp_spawn the fit runs in child processes, and a version
        # first resolved after them would put the test-after-fit metrics into a new version_N+1.
        for logger in self.trainer.loggers:
            _ = logger.version
        log_dir = self.trainer.log_dir
        self._new_run_dir = Path(log_dir) if log_dir and not Path(log_dir).exists() else None

    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        if self._resumed_step is not None:
            try:
                check_resume_trained(self.trainer, self._resumed_step)
            except ConfigError:
                if self._new_run_dir is not None and self.trainer.is_global_zero:
                    shutil.rmtree(self._new_run_dir, ignore_errors=True)  # a run that trained nothing is no run
                raise
        if not self.config.fit.test_after_fit:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
        best = _best_checkpoint(self.trainer)
        if best is not None:
            # Early stopping on the noisy validation split, the honest alternative to the best test epoch.
            with self.model.testing_as("test_best/"):
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=True)


def check_fit_limits(trainer: Any) -> None:
    """Refuse Trainer counts that would train nothing or that Lightning fails on mid-run with a bare
    ZeroDivisionError: ``max_epochs`` / ``max_steps`` of 0 or below -1, and a zero or negative
    ``accumulate_grad_batches``, ``val_check_interval`` or ``check_val_every_n_epoch``."""
    for name in ("max_epochs", "max_steps"):
        value = trainer.get(name)
        if value is not None and (value == 0 or value < -1):
            raise ConfigError(f"trainer.{name}={value} would train nothing: give a positive number "
                              f"(or -1 for no limit)")
    for name in ("accumulate_grad_batches", "val_check_interval", "check_val_every_n_epoch"):
        value = trainer.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"trainer.{name}={value} must be positive")


def bf16_emulated(precision: Any, accelerator: Any) -> bool:
    """Whether ``precision`` asks for bf16 autocast on a CPU that has no bf16 instructions (per
    :func:`lsl.cpu_features.cpu_has_bf16`), where it trains slower than float32 instead of faster.
    ``accelerator`` is the Trainer's (an instance) or the config's value (``"cpu"``, ``"auto"``, ...)."""
    if not str(precision).startswith("bf16"):
        return False
    if isinstance(accelerator, str):
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                          and not torch.backends.mps.is_available())
    else:
        on_cpu = isinstance(accelerator, CPUAccelerator)
    return on_cpu and cpu_has_bf16() is False


def bf16_emulated_message(precision: Any, fix: str = "pass --trainer.precision=32-true") -> str:
    return (f"trainer.precision={precision} on a CPU without bf16 instructions (no avx512_bf16 / amx_bf16 flag): "
            f"autocast emulates bf16 here and trains several times slower than float32 (docs/speed.md); {fix}, "
            "or run on a CPU or GPU with bf16")


def check_seed(seed: Any) -> None:
    """Refuse a ``seed_everything`` that numpy cannot take (Lightning raises a bare ValueError)."""
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
        raise ConfigError(f"seed_everything={seed} is outside [0, 2**32 - 1]: give a non-negative seed")


def check_save_dir(trainer: Any) -> None:
    """Refuse a logger ``save_dir`` that is a file, lies under one, or cannot be written, before anything runs."""
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        save_dir = getattr(getattr(logger, "init_args", None), "save_dir", None)
        if save_dir is None or "://" in str(save_dir):
            continue
        existing = Path(save_dir)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        fix = "point --trainer.logger.init_args.save_dir at a folder you can write"
        if not existing.is_dir():
            raise ConfigError(f"save_dir={str(save_dir)!r}: {str(existing)!r} is a file, not a folder: {fix}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"save_dir={str(save_dir)!r}: {str(existing)!r} is not writable: {fix}")


def _experiment_dir(config: Any) -> str:
    logger = config.trainer.get("logger")
    init_args = getattr(logger[0] if isinstance(logger, list) and logger else logger, "init_args", None)
    return str(Path(getattr(init_args, "save_dir", None) or ".") / (getattr(init_args, "name", None) or ""))


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint of a ModelCheckpoint that monitors a metric, if one kept any."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_path:
            return callback.best_model_path
    return None


# How `lsl` builds its LightningCLI; the sweep's config check parses with exactly the same parser.
CLI_OPTIONS = {
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "save_config_kwargs": {"overwrite": True},
    # The model's own optimizer and scheduler arguments are the one way to set them: LightningCLI's top-level
    # --optimizer / --lr_scheduler would replace them while hparams.yaml names the old ones.
    "auto_configure_optimizers": False,
    # Parse errors are raised, not printed with the usage text, so that they become one `lsl: error:` line.
    "parser_kwargs": {"prog": "lsl", "description": DESCRIPTION, "exit_on_error": False},
}


def check_config_files(argv: list[str]) -> None:
    """Refuse a ``--config`` / ``-c`` file that is empty or not a mapping, which the parser reports only as
    "Unexpected config:" with nothing after it."""
    for position, argument in enumerate(argv):
        if argument in ("--config", "-c") and position + 1 < len(argv):
            path = Path(argv[position + 1])
        elif argument.startswith("--config="):
            path = Path(argument.partition("=")[2])
        else:
            continue
        if not path.is_file():
            continue  # the parser names a missing file itself
        content = read_yaml(path, "config file")
        if content is None:
            raise ConfigError(f"config file {str(path)!r} is empty: give a config such as configs/quickstart.yaml "
                              "(`lsl fit --config configs/quickstart.yaml --print_config` prints a full one)")
        if not isinstance(content, dict):
            raise ConfigError(f"config file {str(path)!r} holds a {type(content).__name__}, not a mapping of "
                              "sections (trainer:, model:, data:): see configs/quickstart.yaml")


# ------------------------------------------------------------------------------- checking configs without running


class _Parsed(Exception):
    """Raised by :class:`_ParseOnlyCLI` once the arguments parsed: nothing is seeded or instantiated."""

    def __init__(self, cli: LSLCLI) -> None:
        super().__init__("parsed")
        self.cli = cli


class _ParseOnlyCLI(LSLCLI):
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self)


@functools.cache
def fit_config_checker():
    """A function ``check(config_files)`` that parses ``lsl fit --config F1 --config F2 ...`` exactly as the
    ``lsl`` command does, instantiating nothing, and returns the parsed ``fit`` config or raises ConfigError (one
    line) for a key or value ``lsl fit`` rejects. One per process: its parser is built on the first call and
    reused by every later one (each sweep command's check, each test), since building it is the costly part."""
    import warnings

    cli: LSLCLI | None = None

    def check(config_files: list[str]) -> Any:
        nonlocal cli
        args = ["fit"] + [part for path in config_files for part in ("--config", str(path))]
        try:
            with warnings.catch_warnings():
                # LightningCLI warns when `args` are given while sys.argv has its own (`lsl sweep ...`): as meant here.
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                if cli is None:
                    _ParseOnlyCLI(Classifier, NoisyLabelDataModule, **CLI_OPTIONS, args=args)
                else:
                    cli.parse_arguments(cli.parser, args)
        except _Parsed as parsed:
            cli = parsed.cli
        except (argparse.ArgumentError, SystemExit) as error:
            raise ConfigError(parser_error_line(str(error))) from None
        return cli.config["fit"]

    return check
