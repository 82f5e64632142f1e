"""What ``lsl fit`` accepts at the top level of its config: the sections a sweep's grid keys start with."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import yaml


@functools.cache
def config_sections() -> frozenset[str]:
    """The top-level keys of ``lsl fit --print_config`` (``trainer``, ``model``, ``data``, ``seed_everything``,
    ``checkpoint``, ...), read from the very parser ``lsl fit`` uses, so a section added to or removed from the
    CLI is known here without a second list. Builds that parser once per process (it imports Lightning): a grid
    key or a stage name cannot be judged without it."""
    from lsl.cli import CLI_OPTIONS, LSLCLI
    from lsl.data import NoisyLabelDataModule
    from lsl.module import Classifier

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        # LightningCLI warns when `args` are given while sys.argv has its own (`lsl sweep ...`): as meant here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            LSLCLI(Classifier, NoisyLabelDataModule, **CLI_OPTIONS, args=["fit", "--print_config"])
        except SystemExit:
            pass  # --print_config exits once it printed
    return frozenset(yaml.safe_load(printed.getvalue()))
