"""A run's files: its overrides and description before it starts, the record of how it ended (done or failed),
and what becomes of a stale run's results (accepted, or cleared to run again)."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import yaml

from lsl.errors import ConfigError

if TYPE_CHECKING:
    from lsl.sweep.schema import Run, Sweep

RUN_FILE = "sweep_run.json"
DONE_FILE = "sweep_done.json"
FAILED_FILE = "sweep_failed.json"
OVERRIDES_FILE = "overrides.yaml"
LOG_FILE = "lsl.log"


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


def write_run_files(sweep: Sweep, run: Run) -> None:
    """The run's overrides file and its description; an earlier attempt's checkpoints and logs stay."""
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / OVERRIDES_FILE).write_text(
        f"# Written by `lsl sweep --config {sweep.path}`: grid point {run.point}"
        f"{', stage ' + run.stage.name if run.stage.name else ''}.\n"
        + yaml.safe_dump(nested(run.overrides), sort_keys=False))
    description = {"sweep": sweep.name, "sweep_file": str(sweep.path.absolute()), "point": run.point,
                   "stage": run.stage.name, "labels": run.labels, "config": str(run.stage.config),
                   "teacher_run": str(run.teacher.directory.absolute()) if run.teacher else None,
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
