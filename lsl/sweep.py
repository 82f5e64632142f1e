"""Sweeps: a grid of ``lsl fit`` runs over any config keys, with optional teacher -> student stages.

    lsl sweep --config configs/sweeps/fashion_mnist_table.yaml --parallel 2   # run it here
    lsl sweep --config configs/sweeps/fashion_mnist_table.yaml --dry-run      # list the runs
    lsl sweep --config configs/sweeps/cifar10_table.yaml --slurm --gpus 1     # write SLURM array jobs

A sweep file names a base config (or one per stage) and a grid; every grid point is one run per stage::

    name: fashion_mnist_table          # runs go to logs/<name>/<point>/ (default: the file's stem)
    config: ../fashion_mnist/ce.yaml   # relative to this file
    overrides:                         # optional, for every run
      trainer.max_epochs: 40
    grid:                              # dotted config keys -> values (a list, or a mapping label -> value)
      model.init_args.loss:
        ce: {class_path: lsl.losses.CrossEntropy}
        ls0.1: {class_path: lsl.losses.LabelSmoothing, init_args: {alpha: 0.1}}
      seed_everything: [0, 1, 2]

With stages, each stage has its own base config; a grid key that starts with a stage's name applies to
that stage only, and ``teacher: <stage>`` fills ``model.init_args.teacher_checkpoint`` with that stage's
``last.ckpt`` at the same grid point::

    stages:
      teacher: {config: ../fashion_mnist/ce.yaml}
      student: {config: ../fashion_mnist/distill.yaml, teacher: teacher}
    grid:
      teacher.model.init_args.loss: {ce: {class_path: lsl.losses.CrossEntropy}, ...}
      seed_everything: [0, 1, 2]

Each run is ``lsl fit --config BASE --config <run>/overrides.yaml`` in its own directory
``logs/<name>/<point>/`` (``logs/<name>/<point>/<stage>/`` with stages), which is also its Trainer's
``default_root_dir``. ``sweep_run.json`` there says what the run is; ``sweep_done.json`` marks it finished, so a
sweep started again skips it, and a run that was interrupted resumes from its ``checkpoints/last.ckpt``.

Both record the run's **fingerprint**: a hash of its base config's content, its overrides and its teacher's
fingerprint. A run with results (done, failed, or a checkpoint to resume from) whose recorded fingerprint is
not the current one was made with another config: it is **stale**, and ``lsl sweep`` refuses to start until
``--rerun-stale`` (run it again from scratch) or ``--accept-stale`` (keep its results). Every run's config is
parsed by ``lsl fit``'s own parser before anything starts, so a misspelt key stops the sweep at once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lsl.errors import ConfigError

SWEEP_KEYS = {"name", "config", "overrides", "stages", "grid"}
STAGE_KEYS = {"config", "overrides", "teacher"}
# Top-level sections of an `lsl fit` config: a stage may not take one of these names, or its grid keys
# would be ambiguous.
CONFIG_SECTIONS = {"seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path",
                   "checkpoint", "prediction_writer", "divergence", "random_state", "views", "test_after_fit"}
RUN_FILE = "sweep_run.json"
DONE_FILE = "sweep_done.json"
FAILED_FILE = "sweep_failed.json"
OVERRIDES_FILE = "overrides.yaml"
LOG_FILE = "lsl.log"
TEACHER_KEY = "model.init_args.teacher_checkpoint"


@dataclass
class Stage:
    """One stage of a sweep: a base config, its own overrides, and the stage whose checkpoint it distils."""

    name: str
    config: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None


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
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"base config {str(path)!r} is not valid YAML: {error}") from error


def run_fingerprint(base_config: Any, overrides: dict[str, Any], teacher: str | None = None) -> str:
    """sha256 of a canonical JSON of what a run runs: its base config's parsed content (a file the config names
    by path is not followed), its overrides, and its teacher's fingerprint (a student of a changed teacher
    changed too)."""
    content = {"config": base_config, "overrides": overrides, "teacher": teacher}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_fingerprint(directory: Path) -> str | None:
    """The fingerprint a run's results were made with: from ``sweep_done.json``, else ``sweep_failed.json``, else
    ``sweep_run.json`` (written when it started); None when none records one (a run made before lsl did)."""
    for name in (DONE_FILE, FAILED_FILE, RUN_FILE):
        path = directory / name
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return record.get("fingerprint") if isinstance(record, dict) else None
    return None


def _short_axis_names(keys: list[str]) -> dict[str, str]:
    """``model.init_args.loss`` -> ``loss``; stage-scoped keys keep their stage (``teacher.loss``); a clash keeps the key."""
    def short(key: str) -> str:
        parts = key.split(".")
        return parts[-1] if len(parts) == 1 or parts[0] in CONFIG_SECTIONS else f"{parts[0]}.{parts[-1]}"

    names = {key: short(key) for key in keys}
    clashes = {name for name in names.values() if list(names.values()).count(name) > 1}
    return {key: key if name in clashes else name for key, name in names.items()}


# ------------------------------------------------------------------------------------------ the sweep file


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every mistake is a ConfigError naming the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"sweep file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file {str(path)!r} must be a mapping with 'grid' and 'config' or 'stages'")
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"sweep file {str(path)!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"sweep name {name!r} must use only letters, digits, '.', '_' and '-' (it names a folder)")
    common = _dotted_mapping(spec.get("overrides") or {}, "overrides")
    stages = _stages(spec, path.parent, common)
    axes = _axes(spec.get("grid"), {stage.name for stage in stages if stage.name})
    return Sweep(name, path, stages, axes)


def _stages(spec: dict, folder: Path, common: dict[str, Any]) -> list[Stage]:
    if ("config" in spec) == ("stages" in spec):
        raise ConfigError("a sweep file needs exactly one of 'config' (one base config) or 'stages' "
                          "(a base config per stage)")
    if "config" in spec:
        return [Stage("", _base_config(spec["config"], folder, "config"), dict(common))]
    if not isinstance(spec["stages"], dict) or not spec["stages"]:
        raise ConfigError("'stages' must map stage names to {config: ..., teacher: ...}")
    stages = []
    for name, stage_spec in spec["stages"].items():
        where = f"stages.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) or name in CONFIG_SECTIONS:
            raise ConfigError(f"stage name {name!r} must be a plain word (letters, digits, '_', '-') and not one of "
                              f"the config's sections {sorted(CONFIG_SECTIONS)}")
        if not isinstance(stage_spec, dict) or "config" not in stage_spec:
            raise ConfigError(f"{where} must be a mapping with a 'config' (its base config)")
        unknown = set(stage_spec) - STAGE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(STAGE_KEYS)}")
        teacher = stage_spec.get("teacher")
        if teacher is not None and teacher not in [stage.name for stage in stages]:
            raise ConfigError(f"{where}.teacher={teacher!r} is not an earlier stage: list the teacher's stage first")
        overrides = dict(common)
        overrides.update(_dotted_mapping(stage_spec.get("overrides") or {}, f"{where}.overrides"))
        stages.append(Stage(str(name), _base_config(stage_spec["config"], folder, f"{where}.config"), overrides, teacher))
    return stages


def _base_config(value: Any, folder: Path, where: str) -> Path:
    path = (folder / str(value)).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}={value!r}: {str(path)!r} does not exist (paths are relative to the sweep file)")
    return path


def _dotted_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must map dotted config keys (like trainer.max_epochs) to values")
    return {str(key): item for key, item in value.items()}


def _axes(grid: Any, stage_names: set[str]) -> dict[str, list[tuple[str, Any]]]:
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise ConfigError("'grid' must map dotted config keys to lists of values (or to mappings label -> value)")
    axes = {}
    for key, values in grid.items():
        key = str(key)
        if key.partition(".")[0] not in CONFIG_SECTIONS | stage_names:
            raise ConfigError(f"grid key {key!r} is neither a config key (one of {sorted(CONFIG_SECTIONS)}, dotted) "
                              f"nor scoped to a stage ({sorted(stage_names) or 'the sweep has none'})")
        if isinstance(values, dict):
            pairs = [(_safe_label(str(label), key), value) for label, value in values.items()]
        elif isinstance(values, list):
            pairs = [(_label(value), value) for value in values]
        else:
            raise ConfigError(f"grid key {key!r} needs a list of values or a mapping label -> value, got {values!r}")
        if not pairs:
            raise ConfigError(f"grid key {key!r} has no values: give at least one or remove it")
        labels = [label for label, _ in pairs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"grid key {key!r}: the values {labels} do not have distinct labels; "
                              "write them as a mapping label -> value")
        axes[key] = pairs
    return axes


def _label(value: Any) -> str:
    """A folder-safe label: ``0.2`` -> ``0.2``; ``{class_path: lsl.losses.LabelSmoothing, init_args: {alpha: 0.1}}``
    -> ``LabelSmoothing-alpha0.1``."""
    if isinstance(value, dict) and "class_path" in value:
        text = str(value["class_path"]).rsplit(".", 1)[-1]
        text += "".join(f"-{name}{item}" for name, item in (value.get("init_args") or {}).items())
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "empty"


def _safe_label(label: str, key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.+-]+", label):
        raise ConfigError(f"grid key {key!r}: label {label!r} names a folder: use letters, digits, '.', '+' and '-'")
    return label


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to a nested mapping: ``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r} goes inside {part!r}, which another override sets to {child!r}")
            node = child
        if isinstance(node.get(leaf), dict) and isinstance(value, dict):
            node[leaf] = {**node[leaf], **value}
        else:
            node[leaf] = value
    return tree


# ------------------------------------------------------------------------------------------- writing runs


def write_run_files(sweep: Sweep, run: Run) -> None:
    """The run's overrides file and its description; an earlier attempt's checkpoints and logs stay."""
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / OVERRIDES_FILE).write_text(
        f"# Written by `lsl sweep --config {sweep.path}`: grid point {run.point}"
        f"{', stage ' + run.stage.name if run.stage.name else ''}.\n"
        + yaml.safe_dump(nested(run.overrides), sort_keys=False))
    description = {"sweep": sweep.name, "sweep_file": str(sweep.path.absolute()), "point": run.point,
                   "stage": run.stage.name, "labels": run.labels, "config": str(run.stage.config),
                   "teacher_run": str(run.teacher.directory) if run.teacher else None,
                   "fingerprint": run.fingerprint}
    (run.directory / RUN_FILE).write_text(json.dumps(description, indent=2) + "\n")


def mark_done(run: Run, seconds: float) -> None:
    (run.directory / FAILED_FILE).unlink(missing_ok=True)
    (run.directory / DONE_FILE).write_text(json.dumps({"wall_s": round(seconds, 1), "fingerprint": run.fingerprint})
                                           + "\n")


def mark_failed(run: Run, exit_code: int, seconds: float) -> None:
    """Records the exit code and the run's own error line (``lsl: error: ...``), which ``lsl report`` shows."""
    lines = (run.directory / LOG_FILE).read_text(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("lsl: error:")]
    reason = errors[-1].removeprefix("lsl: error:").strip() if errors else (lines[-1] if lines else "")
    record = {"exit_code": exit_code, "wall_s": round(seconds, 1), "error": reason, "fingerprint": run.fingerprint}
    (run.directory / FAILED_FILE).write_text(json.dumps(record, indent=2) + "\n")


def accept_stale(run: Run) -> None:
    """Keep a stale run's results: its records take the current fingerprint."""
    for name in (DONE_FILE, FAILED_FILE, RUN_FILE):
        path = run.directory / name
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except ValueError:
                record = None
            record = record if isinstance(record, dict) else {}
            record["fingerprint"] = run.fingerprint
            path.write_text(json.dumps(record, indent=2) + "\n")


def clear_results(run: Run) -> None:
    """Remove everything a stale run wrote (checkpoints, event files, markers, log), so it runs from scratch.
    The folder is the run's own: the sweep made it for this run alone."""
    shutil.rmtree(run.directory, ignore_errors=False)


def check_configs(sweep: Sweep, runs: list[Run]) -> None:
    """Parse the runs' ``lsl fit --config BASE --config overrides.yaml`` with ``lsl fit``'s own parser (nothing is
    instantiated, nothing written beside a temporary folder): a misspelt key or a bad value is a ConfigError
    naming the key in the sweep file, before any run starts. Every combination of the non-seed grid values is
    parsed, and every seed value that is not an integer (a parse takes up to half a second; runs that differ
    only in an integer seed parse alike)."""
    from lsl.cli import fit_config_checker  # imports Lightning: a few seconds, once per sweep

    check = fit_config_checker()
    with tempfile.TemporaryDirectory(prefix="lsl-sweep-check-") as folder:
        def parse(run: Run, overrides: dict[str, Any], name: str) -> None:
            path = Path(folder) / name
            path.write_text(yaml.safe_dump(nested(overrides), sort_keys=False))
            check([str(run.stage.config), str(path)])

        for index, run in enumerate(_covering_runs(runs)):
            try:
                parse(run, run.overrides, f"{index}.yaml")
            except ConfigError as error:
                raise ConfigError(_blame(sweep, run, error, parse)) from None


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


# ------------------------------------------------------------------------------------------- running here


class LocalRunner:
    """Runs a sweep's pending runs, ``parallel`` at a time, each ``lsl fit`` in a child process.

    Each child gets ``cpu_count // parallel`` threads (OMP_NUM_THREADS) unless the environment sets it, so
    parallel runs do not fight over cores. A student waits for its teacher; a failed teacher fails it. Runs
    that failed before (``sweep_failed.json``: a diverged loss fails the same way again) are not retried unless
    ``retry_failed``. ``lsl_command`` is how a child starts ``lsl`` (tests put a stand-in there).
    """

    def __init__(self, sweep: Sweep, runs: list[Run], parallel: int, out=None, poll_s: float = 0.5,
                 retry_failed: bool = False, lsl_command: list[str] | None = None) -> None:
        self.sweep = sweep
        self.lsl_command = lsl_command or [sys.executable, "-m", "lsl"]
        self.runs = runs
        self.parallel = parallel
        self.out = out or sys.stdout
        self.poll_s = poll_s
        self.failed: list[Run] = [run for run in runs if run.failed and not run.done and not retry_failed]
        self.blocked = [run for run in runs if not run.done and run.teacher in self.failed]
        self.pending = [run for run in runs if not run.done and run not in self.failed + self.blocked]
        self.failed += self.blocked
        self.finished = sum(run.done for run in runs)
        self.running: dict[str, tuple[Run, subprocess.Popen, float, Any]] = {}
        self.durations: list[float] = []

    def run(self) -> int:
        """Run everything pending; returns the number of failed runs. On Ctrl-C or SIGTERM the running runs are
        stopped (each resumes from its last.ckpt next time) and KeyboardInterrupt propagates."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self) -> int:
        self._say(f"{len(self.runs)} runs, {self.finished} already done, {len(self.pending)} to run, "
                  f"{self.parallel} at a time"
                  + (f"; {len(self.failed) - len(self.blocked)} failed before, not retried (--retry-failed)"
                     if self.failed else "")
                  + (f"; {len(self.blocked)} wait on a failed teacher" if self.blocked else ""))
        try:
            while self.pending or self.running:
                self._start_ready()
                self._collect_finished()
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._stop_all()
            raise
        self._say(f"sweep {self.sweep.name}: {self.finished} done, {len(self.failed)} failed"
                  + "".join(f"\n  failed: {run.name} (log: {run.directory / LOG_FILE})" for run in self.failed))
        return len(self.failed)

    def _start_ready(self) -> None:
        for run in list(self.pending):
            if len(self.running) >= self.parallel:
                return
            if run.teacher is not None and run.teacher in self.failed:
                self.pending.remove(run)
                self.failed.append(run)
                self._say(f"skipped {run.name}: its teacher {run.teacher.name} failed")
            elif run.teacher is None or run.teacher.done:
                self.pending.remove(run)
                self._start(run)

    def _start(self, run: Run) -> None:
        write_run_files(self.sweep, run)
        log = open(run.directory / LOG_FILE, "a")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))
        command = [*self.lsl_command, *run.fit_arguments()]
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.running[run.name] = (run, process, time.monotonic(), log)
        resumed = " (resuming from its last.ckpt)" if "--ckpt_path" in command else ""
        self._say(f"started {run.name}{resumed}")

    def _collect_finished(self) -> None:
        for name, (run, process, started, log) in list(self.running.items()):
            if process.poll() is None:
                continue
            del self.running[name]
            log.close()
            seconds = time.monotonic() - started
            if process.returncode == 0:
                mark_done(run, seconds)
                self.durations.append(seconds)
                self.finished += 1
                self._say(f"finished {run.name} in {_duration(seconds)}")
            else:
                mark_failed(run, process.returncode, seconds)
                self.failed.append(run)
                self._say(f"FAILED {run.name} (exit {process.returncode}); log: {run.directory / LOG_FILE}")

    def _stop_all(self) -> None:
        for run, process, _, log in self.running.values():
            process.kill()
            process.wait()
            log.close()
        self._say(f"interrupted: {len(self.running)} running runs stopped; run the same command to resume")

    def _say(self, message: str) -> None:
        print(f"[{self._progress()}] {message}", file=self.out, flush=True)

    def _progress(self) -> str:
        left = len(self.pending) + len(self.running)
        text = f"{self.finished}/{len(self.runs)} done, {len(self.running)} running, {len(self.failed)} failed"
        if self.durations and left:
            estimate = sum(self.durations) / len(self.durations) * left / self.parallel
            text += f", ~{_duration(estimate)} left"
        return text


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


# ------------------------------------------------------------------------------------------------ SLURM


@dataclass
class SlurmOptions:
    """What each SLURM array task asks for: ``gpus`` per task (one node, one process per GPU, DDP when > 1)."""

    gpus: int = 1
    cpus_per_gpu: int = 4
    time: str = "04:00:00"
    partition: str | None = None
    max_concurrent: int | None = None


def write_slurm(sweep: Sweep, runs: list[Run], options: SlurmOptions, folder: Path) -> Path:
    """One array job script per stage (task i = grid point i) and ``submit.sh``, which chains the stages with
    ``--dependency=aftercorr`` (task i of a student starts when task i of its teacher succeeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    for run in runs:
        write_run_files(sweep, run)
    scripts = {}
    for stage in sweep.stages:
        stage_runs = [run for run in runs if run.stage is stage]
        script = folder / f"{stage.name or 'runs'}.sbatch"
        script.write_text(_sbatch(sweep, stage, stage_runs, options, folder))
        script.chmod(0o755)
        scripts[stage.name] = script
    submit = folder / "submit.sh"
    lines = ["#!/usr/bin/env bash", f"# Submits sweep {sweep.name}: {len(runs)} runs.", "set -euo pipefail",
             f"cd {shlex.quote(str(Path.cwd()))}"]
    for stage in sweep.stages:
        variable = _job_variable(stage)
        dependency = f"--dependency=aftercorr:${{{_job_variable(_stage(sweep, stage.teacher))}}} " if stage.teacher else ""
        lines.append(f"{variable}=$(sbatch --parsable {dependency}{shlex.quote(str(scripts[stage.name]))})")
        lines.append(f'echo "{stage.name or "runs"}: job ${{{variable}}}"')
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit


def _stage(sweep: Sweep, name: str) -> Stage:
    return next(stage for stage in sweep.stages if stage.name == name)


def _job_variable(stage: Stage) -> str:
    return f"job_{(stage.name or 'runs').replace('-', '_')}"


def _sbatch(sweep: Sweep, stage: Stage, runs: list[Run], options: SlurmOptions, folder: Path) -> str:
    array = f"0-{len(runs) - 1}" + (f"%{options.max_concurrent}" if options.max_concurrent else "")
    job = f"{sweep.name}-{stage.name}" if stage.name else sweep.name
    header = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={job}",
        f"#SBATCH --array={array}",
        "#SBATCH --nodes=1",
        f"#SBATCH --ntasks-per-node={options.gpus}",  # Lightning's SLURM support: one task per GPU
        f"#SBATCH --gres=gpu:{options.gpus}",
        f"#SBATCH --cpus-per-task={options.cpus_per_gpu}",
        f"#SBATCH --time={options.time}",
        f"#SBATCH --output={folder}/{job}-%a.out",
        "#SBATCH --signal=SIGUSR1@120",  # Lightning saves and requeues before the time limit
        "#SBATCH --requeue",
    ]
    if options.partition:
        header.append(f"#SBATCH --partition={options.partition}")
    trainer = ["--trainer.accelerator=gpu", f"--trainer.devices={options.gpus}", "--trainer.num_nodes=1"]
    if options.gpus > 1:
        trainer.append("--trainer.strategy=ddp")
    directories = "\n".join(f"  {shlex.quote(str(run.directory))}" for run in runs)
    fingerprints = "\n".join(f"  {run.fingerprint}" for run in runs)
    return "\n".join(header) + f"""
set -euo pipefail
cd {shlex.quote(str(Path.cwd()))}
runs=(
{directories}
)
fingerprints=(
{fingerprints}
)
run="${{runs[$SLURM_ARRAY_TASK_ID]}}"
if [ -f "$run/{DONE_FILE}" ]; then
  echo "$run finished earlier; nothing to do"
  exit 0
fi
resume=()
if [ -f "$run/checkpoints/last.ckpt" ]; then
  resume=(--ckpt_path "$run/checkpoints/last.ckpt")
fi
SECONDS=0
srun lsl fit --config {shlex.quote(str(stage.config))} --config "$run/{OVERRIDES_FILE}" {' '.join(trainer)} "${{resume[@]}}"
echo "{{\\"wall_s\\": $SECONDS, \\"slurm_job\\": \\"$SLURM_ARRAY_JOB_ID\\", \\"fingerprint\\": \\"${{fingerprints[$SLURM_ARRAY_TASK_ID]}}\\"}}" > "$run/{DONE_FILE}"
"""


# ------------------------------------------------------------------------------------------ the command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsl sweep", description="Run a grid of `lsl fit` runs here, or write SLURM array jobs for it.")
    parser.add_argument("--config", "-c", required=True, type=Path, help="the sweep file (see configs/sweeps/)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time on this machine (default 1)")
    parser.add_argument("--logs", type=Path, default=Path("logs"), help="where runs go: <logs>/<sweep>/<point>/")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="runs made with a different config (the sweep file or a base config changed since): "
                             "delete their results and run them again from scratch")
    parser.add_argument("--accept-stale", action="store_true",
                        help="runs made with a different config: keep their results as this sweep's")
    parser.add_argument("--slurm", action="store_true", help="write SLURM array job scripts instead of running")
    parser.add_argument("--gpus", type=int, default=1, help="--slurm: GPUs per run (DDP when more than 1)")
    parser.add_argument("--cpus-per-gpu", type=int, default=4, help="--slurm: CPU cores per GPU")
    parser.add_argument("--time", default="04:00:00", help="--slurm: time limit of each run")
    parser.add_argument("--partition", default=None, help="--slurm: the partition")
    parser.add_argument("--max-concurrent", type=int, default=None, help="--slurm: array tasks running at once")
    return parser


def sweep_command(argv: list[str], out=None) -> int:
    """``lsl sweep``: returns the exit status: 0, 1 when a run failed, 130 when interrupted. Every mistake (a bad
    sweep file, a key ``lsl fit`` rejects, stale runs) is a ConfigError before anything starts or is written."""
    out = out or sys.stdout
    options = _parser().parse_args(argv)
    if options.parallel < 1:
        raise ConfigError(f"--parallel {options.parallel}: give 1 or more runs at a time")
    if options.gpus < 1:
        raise ConfigError(f"--gpus {options.gpus}: each SLURM run needs at least 1 GPU")
    if options.rerun_stale and options.accept_stale:
        raise ConfigError("--rerun-stale and --accept-stale: pass one (run stale runs again, or keep their results)")
    sweep = load_sweep(options.config)
    runs = sweep.runs(options.logs)
    check_configs(sweep, runs)
    if options.dry_run:
        _list_runs(sweep, runs, out)
        return 0
    stale = [run for run in runs if run.stale]
    if stale and not (options.rerun_stale or options.accept_stale):
        raise ConfigError(f"sweep {sweep.name}: {len(stale)} run(s) were made with a different config (the sweep file "
                          f"or a base config changed): e.g. {stale[0].name}; pass --rerun-stale to run them again "
                          "from scratch, or --accept-stale to keep their results")
    for run in stale:
        if options.rerun_stale:
            clear_results(run)
        else:
            accept_stale(run)
    if stale:
        print(f"sweep {sweep.name}: {len(stale)} stale run(s) "
              + ("deleted, to run again" if options.rerun_stale else "kept as they are (--accept-stale)"),
              file=out, flush=True)
    if options.slurm:
        slurm = SlurmOptions(options.gpus, options.cpus_per_gpu, options.time, options.partition, options.max_concurrent)
        submit = write_slurm(sweep, runs, slurm, options.logs / sweep.name / "slurm")
        print(f"wrote {len(sweep.stages)} array job script(s) for {len(runs)} runs; submit with: bash {submit}", file=out)
        return 0
    try:
        failed = LocalRunner(sweep, runs, options.parallel, out, retry_failed=options.retry_failed).run()
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


def _list_runs(sweep: Sweep, runs: list[Run], out) -> None:
    """One line per run, each flushed: ``lsl sweep --dry-run | head`` stops the listing at the first line."""
    stale = {id(run) for run in runs if run.stale}  # each `stale` reads the run's records: once per run
    done = sum(run.done for run in runs if id(run) not in stale)
    print(f"sweep {sweep.name}: {len(runs)} runs ({done} done"
          + (f", {len(stale)} stale: --rerun-stale or --accept-stale" if stale else "") + "), "
          f"{len(runs) // max(len(sweep.stages), 1)} grid points x {len(sweep.stages)} stage(s)", file=out, flush=True)
    for run in runs:
        state = ("stale" if id(run) in stale else "done" if run.done else "failed" if run.failed
                 else "resume" if run.last_checkpoint.is_file() else "todo")
        after = f"  (after {run.teacher.name})" if run.teacher else ""
        print(f"  {state:6s} {run.name}{after}", file=out, flush=True)
        print(f"         lsl {shlex.join(run.fit_arguments())}", file=out, flush=True)
