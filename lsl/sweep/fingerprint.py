"""Fingerprints: what a run runs, as one hash, and the one its results were recorded with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsl.files import file_sha256, json_sha256
from lsl.sweep.run_state import DONE_FILE, FAILED_FILE, RUN_FILE, read_record


def run_fingerprint(base_config: Any, overrides: dict[str, Any], teacher: str | None = None) -> str:
    """sha256 of a canonical JSON of what a run runs: its base config's parsed content (a file the base config
    names by path is not followed), its overrides with the content of each file they name (see
    :func:`named_files`), and its teacher's fingerprint (a student of a changed teacher changed too)."""
    content = {"config": base_config, "overrides": overrides, "teacher": teacher}
    files = named_files(overrides)
    if files:  # absent when there are none: fingerprints of runs that name no file are what they always were
        content["files"] = files
    return json_sha256(content)


def named_files(value: Any) -> dict[str, str]:
    """The sha256 of each file that ``value`` (overrides, nested) names by a path that exists here, relative to
    the working directory as ``lsl fit`` reads it: a transition matrix from ``lsl estimate-t`` written again
    makes the runs that read it stale, instead of leaving results made with the old one counted as done."""
    if isinstance(value, dict):
        return {path: digest for item in value.values() for path, digest in named_files(item).items()}
    if isinstance(value, list):
        return {path: digest for item in value for path, digest in named_files(item).items()}
    if isinstance(value, str) and value and _is_file(value):
        return {value: file_sha256(value)}
    return {}


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a string no path can be: too long, a NUL in it
        return False


def recorded_fingerprint(directory: Path) -> str | None:
    """The fingerprint a run's results were made with: from ``sweep_done.json``, else ``sweep_failed.json``, else
    ``sweep_run.json`` (written when it started); None when none records one (a run made before lsl did)."""
    for name in (DONE_FILE, FAILED_FILE, RUN_FILE):
        path = directory / name
        if path.is_file():
            return read_record(path).get("fingerprint")
    return None
