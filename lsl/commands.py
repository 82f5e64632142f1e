"""The ``lsl`` command: one entry point for the Trainer subcommands and lsl's own.

    lsl fit --config configs/quickstart.yaml
    lsl test --config configs/quickstart.yaml --ckpt_path logs/quickstart/version_0/checkpoints/last.ckpt
    lsl sweep --config configs/sweeps/fashion_mnist_table.yaml --parallel 2
    lsl report logs/fashion_mnist_table
    lsl estimate-t --ckpt RUN/checkpoints/last.ckpt --config RUN/config.yaml --out T.npy

LightningCLI (:mod:`lsl.cli`) parses fit, validate, test and predict; sweep, report and estimate-t have
jsonargparse parsers of their own. Nothing heavy is imported here at module level: ``import lightning``
takes most of the start-up time, and ``lsl report --help`` or ``lsl sweep`` does not need it, so each
subcommand imports what it uses once it is chosen.
"""

from __future__ import annotations

import argparse
import os
import sys

from lsl.allocator import tune_host_allocator
from lsl.errors import ConfigError, error_behind

DESCRIPTION = "lsl: label smoothing under label noise (Lukasik et al., ICML 2020), on PyTorch Lightning."

# Each subcommand's line in `lsl --help`; each has its own `lsl SUBCOMMAND --help`.
SUBCOMMANDS = {
    "fit": "train on the noisy labels, then test the last weights on the clean test set",
    "validate": "evaluate a checkpoint on the noisy validation split",
    "test": "evaluate a checkpoint on the clean test set",
    "predict": "write a checkpoint's test-set probabilities into its run",
    "sweep": "run a grid of runs from a sweep file, or write SLURM jobs for it",
    "report": "tables (Markdown, CSV) and plots from a sweep's runs",
    "estimate-t": "estimate the noise transition matrix T from a checkpoint (anchor points)",
}
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lsl`` console script and ``python -m lsl``; exits 2 on bad input."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            if not argv:
                raise argparse.ArgumentError(None, f"expected \"subcommand\" to be one of {{{','.join(SUBCOMMANDS)}}}, "
                                                   "but it was not provided.")
            top_level_parser().print_help()
            return
        tune_host_allocator()
        status = run_subcommand(argv, args)
        if status:
            sys.exit(status)
    except argparse.ArgumentError as error:  # the parser's own message, on one line, without the usage dump
        print(f"lsl: error: {parser_error_line(str(error))} (`{' '.join(['lsl', *argv[:1]])} --help` lists the "
              "options)", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader went away (`lsl sweep --dry-run | head`): no traceback; the shell's status for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as error:
        config_error = error_behind(error, _is_users_mistake)
        if config_error is None:
            raise
        print(f"lsl: error: {config_error}", file=sys.stderr)
        sys.exit(2)


def run_subcommand(argv: list[str], args: list[str] | None) -> int:
    """Run ``lsl ARGV``; its exit status. ``args`` is what :func:`main` was given (None: ``sys.argv``)."""
    name, rest = argv[0], argv[1:]
    if name == "sweep":
        from lsl.sweep.command import sweep_command

        return sweep_command(rest)
    if name == "report":
        from lsl.report.command import report_command

        report_command(rest)
        return 0
    if name == "estimate-t":
        from lsl.estimate.command import estimate_t_command

        estimate_t_command(rest)
        return 0
    from lsl.cli import CLI_OPTIONS, LSLCLI, check_config_files
    from lsl.data import NoisyLabelDataModule
    from lsl.module import Classifier

    check_config_files(argv)
    LSLCLI(Classifier, NoisyLabelDataModule, **CLI_OPTIONS, args=args)
    return 0


def top_level_parser() -> argparse.ArgumentParser:
    """The parser behind ``lsl --help``: every subcommand with its one line. Each subcommand parses its own
    arguments (LightningCLI the Trainer's, jsonargparse lsl's); this one only lists them."""
    parser = argparse.ArgumentParser(prog="lsl", description=DESCRIPTION,
                                     epilog="`lsl SUBCOMMAND --help` lists a subcommand's options.")
    subcommands = parser.add_subparsers(title="subcommands", dest="subcommand", metavar="SUBCOMMAND")
    for name, line in SUBCOMMANDS.items():
        subcommands.add_parser(name, help=line)
    return parser


def _is_users_mistake(error: BaseException) -> bool:
    """A ConfigError, or Lightning's MisconfigurationException: its word for a bad Trainer argument (an
    accelerator this machine lacks, accumulate_grad_batches 0), the user's to fix like a ConfigError."""
    if isinstance(error, ConfigError):
        return True
    if "lightning.fabric" not in sys.modules:  # not imported: the error cannot be one of its exceptions
        return False
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(error, MisconfigurationException)


_PARSER_NOISE = ("Parser key", "Does not validate against", "Subtypes:", "Errors:", "Given value",
                 "Problem with given class_path", "Expected a <class 'NoneType'>")


def parser_error_line(message: str) -> str:
    """jsonargparse's nested, multi-line error as one line: the innermost reasons (``Option 'los' is not
    accepted``), each prefixed with the path of parser keys that leads to it (``model: ``)."""
    lines = [line.strip().removeprefix("- ").strip() for line in message.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_PARSER_NOISE)]
    keys = [line.split('"')[1] for line in lines if line.startswith('Parser key "') and line.count('"') >= 2]
    text = "; ".join(dict.fromkeys(reasons)) or " ".join(line for line in lines if line)
    return (".".join(keys) + ": " if keys else "") + text
