"""A sweep's parts: its stages, its runs (a stage at a grid point) and the expansion of the grid into runs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsl.errors import ConfigError
from lsl.files import read_yaml
from lsl.sweep.fingerprint import recorded_fingerprint, run_fingerprint
from lsl.sweep.fit_sections import config_sections
from lsl.sweep.run_state import DONE_FILE, FAILED_FILE, OVERRIDES_FILE

TEACHER_KEY = "model.init_args.teacher_checkpoint"


@dataclass
class Stage:
    """One stage of a sweep: a base config, its own overrides, and the stage whose checkpoint it distils.

    A stage with a ``source`` runs nothing: its runs are those of another sweep (a single-config one, whose base
    config and overrides it takes), each the run whose fingerprint is the one this grid point gives; that sweep
    runs them, this one only distils from them."""

    name: str
    config: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    source: Sweep | None = None


@dataclass
class Run:
    """One ``lsl fit`` run: a stage at a grid point."""

    point: str
    labels: dict[str, str]
    stage: Stage
    directory: Path
    overrides: dict[str, Any]
    teacher: Run | None = None
    fingerprint: str = ""  # of what the run runs: see run_fingerprint
    sources: dict[str, str] = field(default_factory=dict)  # override key -> where the sweep file sets it

    @property
    def name(self) -> str:
        return self.point if self.stage.name == "" else f"{self.point}/{self.stage.name}"

    @property
    def borrowed(self) -> bool:
        """A run of another sweep (see ``Stage.source``): never started, written or cleared by this one."""
        return self.stage.source is not None

    @property
    def last_checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"

    @property
    def done(self) -> bool:
        return (self.directory / DONE_FILE).is_file()

    @property
    def failed(self) -> bool:
        return (self.directory / FAILED_FILE).is_file()

    @property
    def has_results(self) -> bool:
        """Done, failed, or with a checkpoint a restart would continue from (``last.ckpt``, SLURM's ``hpc_ckpt``)."""
        return (self.done or self.failed or self.last_checkpoint.is_file()
                or any(self.directory.glob("hpc_ckpt_*.ckpt")))

    @property
    def stale(self) -> bool:
        """Made with another config: its results do not belong to the sweep as it is now."""
        return self.has_results and recorded_fingerprint(self.directory) != self.fingerprint

    def fit_arguments(self) -> list[str]:
        """``lsl fit`` arguments, resuming from the run's own last.ckpt when an earlier attempt left one."""
        arguments = ["fit", "--config", str(self.stage.config), "--config", str(self.directory / OVERRIDES_FILE)]
        if self.last_checkpoint.is_file():
            arguments += ["--ckpt_path", str(self.last_checkpoint)]
        return arguments


@dataclass
class Sweep:
    """A parsed sweep file: its name, stages and grid axes (each a list of (label, value) pairs)."""

    name: str
    path: Path
    stages: list[Stage]
    axes: dict[str, list[tuple[str, Any]]]

    def runs(self, logs: Path) -> list[Run]:
        """Every run of the sweep, stage by stage within each grid point (a teacher before its student)."""
        runs = []
        short_names = _short_axis_names(list(self.axes))
        bases = {stage.name: _read_base_config(stage.config) for stage in self.stages}
        borrowable = {stage.name: {run.fingerprint: run for run in stage.source.runs(logs)}
                      for stage in self.stages if stage.source is not None}
        for values in itertools.product(*self.axes.values()):
            labels = {key: label for key, (label, _) in zip(self.axes, values)}
            point = "__".join(f"{short_names[key]}={label}" for key, label in labels.items()) or "default"
            by_stage: dict[str, Run] = {}
            for stage in self.stages:
                directory = logs / self.name / point / stage.name if stage.name else logs / self.name / point
                overrides = dict(stage.overrides)
                sources = {key: f"override {key!r}" for key in stage.overrides}
                overrides.update(self._grid_overrides(stage, zip(self.axes, values)))
                sources.update(self._grid_sources(stage))
                teacher = by_stage.get(stage.teacher) if stage.teacher else None
                # Before the keys the sweep adds, which say only where the run lives (a moved logs folder
                # keeps its fingerprints).
                fingerprint = run_fingerprint(bases[stage.name], overrides, teacher.fingerprint if teacher else None)
                if stage.source is not None:
                    run = self._borrowed_run(stage, borrowable[stage.name], fingerprint, point, labels, sources)
                    by_stage[stage.name] = run
                    runs.append(run)
                    continue
                if teacher is not None:
                    overrides[TEACHER_KEY] = str(teacher.last_checkpoint.absolute())
                overrides["trainer.logger"] = _logger(directory)
                # Everything else the Trainer writes goes here too: on SLURM, Lightning saves hpc_ckpt_*.ckpt into
                # default_root_dir at a requeue and restores whatever it finds there, so runs that shared the
                # working directory restored each other's weights.
                overrides["trainer.default_root_dir"] = str(directory)
                run = Run(point, labels, stage, directory, overrides, teacher, fingerprint, sources)
                by_stage[stage.name] = run
                runs.append(run)
        return runs

    def _borrowed_run(self, stage: Stage, borrowable: dict[str, Run], fingerprint: str, point: str,
                      labels: dict[str, str], sources: dict[str, str]) -> Run:
        """The run of ``stage.source`` that runs exactly what this grid point asks of ``stage``."""
        found = borrowable.get(fingerprint)
        if found is None:
            raise ConfigError(f"sweep {self.name}: stage {stage.name!r} takes its runs from sweep "
                              f"{stage.source.name} ({str(stage.source.path)!r}), and none of them runs what grid "
                              f"point {point} asks: give the stage only grid keys and values that sweep has")
        return Run(point, labels, stage, found.directory, found.overrides, None, fingerprint, sources)

    def _grid_overrides(self, stage: Stage, items) -> dict[str, Any]:
        overrides = {}
        for key, (_, value) in items:
            head, _, rest = key.partition(".")
            if head in self.stage_names:
                if head == stage.name:
                    overrides[rest] = value
            else:
                overrides[key] = value
        return overrides

    def _grid_sources(self, stage: Stage) -> dict[str, str]:
        sources = {}
        for key in self.axes:
            head, _, rest = key.partition(".")
            if head not in self.stage_names:
                sources[key] = f"grid key {key!r}"
            elif head == stage.name:
                sources[rest] = f"grid key {key!r}"
        return sources

    @property
    def stage_names(self) -> set[str]:
        return {stage.name for stage in self.stages if stage.name}


def _logger(directory: Path) -> dict[str, Any]:
    # save_dir/name/version is the run directory itself: no version_N, so a restarted run writes where it was.
    return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(directory.parent), "name": directory.name, "version": "",
                          "default_hp_metric": False}}


def _read_base_config(path: Path) -> Any:
    return read_yaml(path, "base config")


def _short_axis_names(keys: list[str]) -> dict[str, str]:
    """``model.init_args.loss`` -> ``loss``; stage-scoped keys keep their stage (``teacher.loss``); a clash keeps the key."""
    def short(key: str) -> str:
        parts = key.split(".")
        return parts[-1] if len(parts) == 1 or parts[0] in config_sections() else f"{parts[0]}.{parts[-1]}"

    names = {key: short(key) for key in keys}
    clashes = {name for name in names.values() if list(names.values()).count(name) > 1}
    return {key: key if name in clashes else name for key, name in names.items()}
