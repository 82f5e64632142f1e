"""The ``lsl`` command: LightningCLI with the data's classes and noise linked into the model.

    lsl fit --config configs/quickstart.yaml
    lsl test --config configs/quickstart.yaml --ckpt_path logs/quickstart/version_0/checkpoints/last.ckpt
    lsl fit --config configs/ls_cifar100.yaml --print_config
    lsl estimate-t --ckpt RUN/checkpoints/last.ckpt --config RUN/config.yaml --out T.npy
    lsl sweep --config configs/sweeps/fashion_mnist_table.yaml --parallel 2
    lsl report logs/fashion_mnist_table
"""

from __future__ import annotations

import ctypes
import platform
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI, LightningArgumentParser

from lsl.data import NoisyLabelDataModule
from lsl.divergence import DivergenceGuard
from lsl.errors import ConfigError
from lsl.estimate import estimate_t_command
from lsl.module import Classifier
from lsl.report import report_command
from lsl.resume import (RandomStateCheckpoint, ResumableCheckpoint, check_checkpoint_path, continue_last_run,
                        use_atomic_checkpoints)
from lsl.sweep import sweep_command
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
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="fit only: evaluate the final weights on the clean test set and log test/* "
                                 "into the same run (the paper reports the last checkpoint, not the best)")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(DivergenceGuard, "divergence")
        parser.add_lightning_class_args(RandomStateCheckpoint, "random_state")
        parser.add_lightning_class_args(TensorBoardViews, "views")
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
        # Before LightningCLI reads the checkpoint's hyperparameters, which a truncated file would crash.
        if self.config.get("subcommand"):
            check_checkpoint_path(self.config[self.config.subcommand].get("ckpt_path"))

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit" and self.config.fit.ckpt_path == "last":
            continue_last_run(self.config.fit)

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def before_fit(self) -> None:
        # Fix each logger's version_N now: with ddp_spawn the fit runs in child processes, and a version
        # first resolved after them would put the test-after-fit metrics into a new version_N+1.
        for logger in self.trainer.loggers:
            _ = logger.version

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit or self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
        best = _best_checkpoint(self.trainer)
        if best is not None:
            # Early stopping on the noisy validation split, the honest alternative to the best test epoch.
            self.model.test_prefix = "test_best/"
            try:
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=True)
            finally:
                self.model.test_prefix = "test/"


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint of a ModelCheckpoint that monitors a metric, if one kept any."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_path:
            return callback.best_model_path
    return None


DESCRIPTION = ("lsl: label smoothing under label noise. The Trainer subcommands are below. Three more, each with "
               "its own --help: `lsl sweep --config SWEEP.yaml` runs a grid of runs (or writes SLURM jobs for it), "
               "`lsl report logs/<sweep>` writes its tables and plots, `lsl estimate-t --ckpt ... --config ... "
               "--out T.npy` estimates the noise transition matrix from a checkpoint.")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_LARGEST_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def tune_host_allocator() -> bool:
    """Keep freed tensor memory in the process heap instead of handing it back to the kernel (glibc only).

    By default glibc serves large allocations with fresh ``mmap`` pages and trims the heap's top when it
    frees, so a CPU training step, which frees and reallocates the same activation buffers every step,
    page-faults on each of their 4 KiB pages again: 600 to 5,500 faults per step of the small CNN, about 10%
    of its step time (docs/benchmarks.md). Fixed thresholds (up to 32 MiB from the heap, trim only past
    2 GiB free) keep those buffers mapped; the price is that the process can hold on to freed memory until
    it exits. Returns False, and changes nothing, where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lsl`` console script and ``python -m lsl``; exits 2 on bad input."""
    argv = sys.argv[1:] if args is None else list(args)
    tune_host_allocator()
    try:
        # Not Trainer subcommands, so LightningCLI cannot parse them.
        if argv[:1] == ["estimate-t"]:
            estimate_t_command(argv[1:])
            return
        if argv[:1] == ["sweep"]:
            status = sweep_command(argv[1:])
            if status:
                sys.exit(status)
            return
        if argv[:1] == ["report"]:
            report_command(argv[1:])
            return
        LSLCLI(
            Classifier,
            NoisyLabelDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": DESCRIPTION},
            args=args,
        )
    except Exception as error:
        config_error = _config_error_behind(error)
        if config_error is None:
            raise
        print(f"lsl: error: {config_error}", file=sys.stderr)
        sys.exit(2)


def _config_error_behind(error: BaseException | None) -> ConfigError | None:
    """The ConfigError that caused ``error``: jsonargparse wraps errors raised while it instantiates classes."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


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


def fit_config_checker():
    """A function ``check(config_files)`` that parses ``lsl fit --config F1 --config F2 ...`` exactly as the
    ``lsl`` command does, instantiating nothing, and raises ConfigError (one line) for a key or value
    ``lsl fit`` rejects. The parser is built on the first call and reused (a parse then takes milliseconds)."""
    import argparse
    import warnings

    cli: LSLCLI | None = None

    def check(config_files: list[str]) -> None:
        nonlocal cli
        args = ["fit"] + [part for path in config_files for part in ("--config", str(path))]
        try:
            with warnings.catch_warnings():
                # LightningCLI warns when `args` are given while sys.argv has its own (`lsl sweep ...`): as meant here.
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                if cli is None:
                    _ParseOnlyCLI(Classifier, NoisyLabelDataModule, subclass_mode_model=True, subclass_mode_data=True,
                                  save_config_kwargs={"overwrite": True},
                                  parser_kwargs={"description": DESCRIPTION, "exit_on_error": False}, args=args)
                else:
                    cli.parse_arguments(cli.parser, args)
        except _Parsed as parsed:
            cli = parsed.cli
        except (argparse.ArgumentError, SystemExit) as error:
            raise ConfigError(_parser_error_line(str(error))) from None

    return check


def check_fit_config(config_files: list[str]) -> None:
    """Parses ``lsl fit --config F1 --config F2 ...`` without running or instantiating anything; a key or value
    that ``lsl fit`` rejects is a ConfigError naming it."""
    fit_config_checker()(config_files)


_PARSER_NOISE = ("Parser key", "Does not validate against", "Subtypes:", "Errors:", "Given value",
                 "Problem with given class_path", "Expected a <class 'NoneType'>")


def _parser_error_line(message: str) -> str:
    """jsonargparse's nested, multi-line error as one line: the innermost reasons (``Option 'los' is not
    accepted``), each prefixed with the path of parser keys that leads to it (``model: ``)."""
    lines = [line.strip().removeprefix("- ").strip() for line in message.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_PARSER_NOISE)]
    keys = [line.split('"')[1] for line in lines if line.startswith('Parser key "') and line.count('"') >= 2]
    text = "; ".join(dict.fromkeys(reasons)) or " ".join(line for line in lines if line)
    return (".".join(keys) + ": " if keys else "") + text
