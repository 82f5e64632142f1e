"""Fingerprints: what a run runs, as one hash, and the one its results were recorded with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lsl.files import json_sha256
from lsl.sweep.run_state import DONE_FILE, FAILED_FILE, RUN_FILE


def run_fingerprint(base_config: Any, overrides: dict[str, Any], teacher: str | None = None) -> str:
    """sha256 of a canonical JSON of what a run runs: its base config's parsed content (a file the config names
    by path is not followed), its overrides, and its teacher's fingerprint (a student of a changed teacher
    changed too)."""
    content = {"config": base_config, "overrides": overrides, "teacher": teacher}
    return json_sha256(content)


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
