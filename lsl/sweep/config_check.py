"""The check before any run: every run's config parsed by ``lsl fit``'s own parser, a rejected key blamed on the
line of the sweep file that sets it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from lsl.errors import ConfigError
from lsl.sweep.run_state import nested
from lsl.sweep.schema import TEACHER_KEY, Run, Sweep

# The arguments of lsl's classes that name a file the run reads at start (a transition matrix, CIFAR-N labels, a
# teacher checkpoint): a grid point naming a missing one would fail as soon as it starts.
FILE_ARGUMENTS = frozenset({"path", "transition", "teacher_checkpoint"})


def check_configs(sweep: Sweep, runs: list[Run]) -> list[Any]:
    """Parse the runs' ``lsl fit --config BASE --config overrides.yaml`` with ``lsl fit``'s own parser (nothing is
    instantiated, nothing written beside a temporary folder): a misspelt key or a bad value is a ConfigError
    naming the key in the sweep file, before any run starts. Every combination of the non-seed grid values is
    parsed, and every seed value that is not an integer (each parse costs real time; runs that differ
    only in an integer seed parse alike). Returns the parsed ``fit`` configs of the runs it parsed."""
    # Imports Lightning: here, once the options are parsed, not at module level (`lsl sweep --help` needs none).
    from lsl.cli import fit_config_checker

    check = fit_config_checker()
    with tempfile.TemporaryDirectory(prefix="lsl-sweep-check-") as folder:
        def parse(run: Run, overrides: dict[str, Any], name: str) -> Any:
            path = Path(folder) / name
            path.write_text(yaml.safe_dump(nested(overrides), sort_keys=False))
            return check([str(run.stage.config), str(path)])

        parsed = []
        for index, run in enumerate(_covering_runs(runs)):
            try:
                parsed.append(parse(run, run.overrides, f"{index}.yaml"))
            except ConfigError as error:
                raise ConfigError(_blame(sweep, run, error, parse)) from None
    return parsed


def check_named_files(sweep: Sweep, runs: list[Run]) -> None:
    """Refuse, before any run starts, a run still to do whose overrides name a file that is not there (relative
    paths from the working directory, as its ``lsl fit`` reads them): it would fail at start and be recorded as
    failed, which the next ``lsl sweep`` does not retry. A student's teacher checkpoint, which the sweep fills in
    and its teacher writes, is not checked here."""
    for run in runs:
        if run.done and not run.stale:
            continue
        for key, value in run.overrides.items():
            for name, path in _named_paths(key, value):
                if name == TEACHER_KEY and run.teacher is not None:
                    continue
                if not Path(path).is_file():
                    source = run.sources.get(key, f"override {key!r}")
                    raise ConfigError(f"sweep {sweep.name}: {name}={path!r} (from {source}, run {run.name}) is not a "
                                      f"file here: make it first (the sweep file's comments may say how) or fix the path")


def _named_paths(key: str, value: Any):
    """(dotted key, path) for each string of ``value`` at an argument in FILE_ARGUMENTS, nested dicts included."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _named_paths(f"{key}.{name}", item)
    elif isinstance(value, str) and value and key.rsplit(".", 1)[-1] in FILE_ARGUMENTS:
        yield key, value


def _covering_runs(runs: list[Run]) -> list[Run]:
    """One run per stage and combination of non-seed grid values, plus runs until each seed value is in one."""
    def seed(key: str) -> bool:
        return "seed" in key.rsplit(".", 1)[-1]

    chosen: dict[tuple, Run] = {}
    for run in runs:
        combination = (run.stage.name,) + tuple((key, label) for key, label in run.labels.items() if not seed(key))
        chosen.setdefault(combination, run)
    covered = {(run.stage.name, key, label) for run in chosen.values() for key, label in run.labels.items()}
    for run in runs:
        # An integer seed parses like any other: only a seed of another type needs a parse of its own.
        values = {(run.stage.name, key, label) for key, label in run.labels.items()
                  if not (seed(key) and isinstance(run.overrides.get(key), int))}
        if not values <= covered:
            chosen[(id(run),)] = run
            covered |= values
    picked = {id(run) for run in chosen.values()}
    return [run for run in runs if id(run) in picked]


def _blame(sweep: Sweep, run: Run, error: ConfigError, parse) -> str:
    """Which key of the sweep file makes ``lsl fit`` reject the run: the one whose removal makes the config parse
    (a value valid only beside another key, an alpha beside the loss that takes it, is not blamed), else the
    first that fails alone on the base config."""
    try:
        parse(run, {}, "base.yaml")
    except ConfigError as base_error:
        return f"sweep {sweep.name}: `lsl fit` rejects the base config {str(run.stage.config)!r}: {base_error}"

    def blamed(source: str, reason: ConfigError) -> str:
        return (f"sweep {sweep.name}: {source} is not accepted by `lsl fit` (run {run.name}): {reason}; "
                "fix the key or its value in the sweep file")

    for key, source in run.sources.items():
        try:
            parse(run, {other: value for other, value in run.overrides.items() if other != key}, "without.yaml")
        except ConfigError:
            continue
        return blamed(source, error)
    for key, source in run.sources.items():
        try:
            parse(run, {key: run.overrides[key]}, "alone.yaml")
        except ConfigError as key_error:
            return blamed(source, key_error)
    return f"sweep {sweep.name}: `lsl fit` rejects the config of run {run.name}: {error}"
