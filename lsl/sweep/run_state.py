"""A run's files: its overrides and description before it starts, the record of how it ended (done or failed),
and what becomes of a stale run's results (accepted, or cleared to run again)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
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
CONFIG_FILE = "config.yaml"  # the resolved config Lightning saves in a run's folder
# A student's copy of its teacher's resolved config, so that its record reads alone wherever it is copied (an
# archive of the student's folder, a report made elsewhere): the teacher's folder is only named by path.
TEACHER_CONFIG_FILE = "teacher_config.yaml"


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
    """The run's overrides file and its description; an earlier attempt's checkpoints and logs stay. The
    description carries the time of the earlier attempts this one resumes (see :func:`_earlier_attempts_s`). A
    student whose teacher has finished gets a copy of the teacher's config (``TEACHER_CONFIG_FILE``); one whose
    teacher runs later, as in a SLURM chain, gets it from its job script when it starts."""
    earlier = _earlier_attempts_s(run)
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / OVERRIDES_FILE).write_text(
        f"# Written by `lsl sweep --config {sweep.path}`: grid point {run.point}"
        f"{', stage ' + run.stage.name if run.stage.name else ''}.\n"
        + yaml.safe_dump(nested(run.overrides), sort_keys=False))
    description = {"sweep": sweep.name, "sweep_file": str(sweep.path.absolute()), "point": run.point,
                   "stage": run.stage.name, "labels": run.labels, "config": str(run.stage.config),
                   "teacher_run": str(run.teacher.directory.absolute()) if run.teacher else None,
                   "fingerprint": run.fingerprint, "started_at": round(time.time(), 1),
                   "earlier_attempts_s": earlier}
    (run.directory / RUN_FILE).write_text(json.dumps(description, indent=2) + "\n")
    if run.teacher is not None and (run.teacher.directory / CONFIG_FILE).is_file():
        shutil.copyfile(run.teacher.directory / CONFIG_FILE, run.directory / TEACHER_CONFIG_FILE)


def _earlier_attempts_s(run: Run) -> float:
    """Seconds the attempts before this one spent on the work it resumes: the last attempt's, from its start to
    its last checkpoint (the work after that is lost and done again), plus what that attempt had carried. An
    attempt can be killed without a word (a reboot, SIGKILL), so this is read from the files it left. 0 for a
    run that starts from scratch."""
    record = read_record(run.directory / RUN_FILE)
    if record.get("fingerprint") != run.fingerprint or not run.last_checkpoint.is_file():
        return 0.0
    earlier = float(record.get("earlier_attempts_s", 0.0))
    started = record.get("started_at")
    if isinstance(started, (int, float)):
        earlier += max(0.0, run.last_checkpoint.stat().st_mtime - started)
    return round(earlier, 1)


def read_record(path: Path) -> dict[str, Any]:
    """A run's JSON record (``sweep_run.json``, ``sweep_done.json``, ...) as a dict; {} when it is missing,
    damaged or not a mapping."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def mark_done(run: Run, seconds: float) -> None:
    """``wall_s``: the run's time over all its attempts (``attempt_s``: the last one's)."""
    earlier = float(read_record(run.directory / RUN_FILE).get("earlier_attempts_s", 0.0))
    (run.directory / FAILED_FILE).unlink(missing_ok=True)
    (run.directory / DONE_FILE).write_text(json.dumps({"wall_s": round(seconds + earlier, 1),
                                                       "attempt_s": round(seconds, 1),
                                                       "fingerprint": run.fingerprint}) + "\n")


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
            record = read_record(path)
            record["fingerprint"] = run.fingerprint
            path.write_text(json.dumps(record, indent=2) + "\n")


def clear_results(run: Run) -> None:
    """Remove everything a stale run wrote (checkpoints, event files, markers, log), so it runs from scratch.
    The folder is the run's own: the sweep made it for this run alone."""
    shutil.rmtree(run.directory, ignore_errors=False)
