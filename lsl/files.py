"""Files a reader never sees half-written, and the checksums that identify them.

The one copy of each mechanism, used by the noise-label artifacts, the checkpoints, the teacher-logit cache
and ``lsl estimate-t``:

- :func:`write_atomically` writes one or more files, each via a temporary file in its own folder that is
  flushed, fsynced and renamed over the final name. A reader (or a kill at any moment) sees the previous
  complete file or the new complete one, never a torn one; a failure leaves no temporary file behind.
- :func:`read_yaml` reads a config, sweep or options file; a file that is not YAML is one ConfigError line.
- :func:`file_sha256`, :func:`array_sha256` and :func:`json_sha256` are the checksums and fingerprints
  recorded in sidecars, checkpoints and sweep runs, and the key of the teacher-logit cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from lsl.errors import ConfigError

Writer = Callable[[BinaryIO], Any]


def read_yaml(path: str | Path, what: str) -> Any:
    """The content of the YAML file ``path`` (None when it is empty).

    Raises:
        ConfigError: the file is not YAML (or not text), named as ``what`` (``"sweep file"``), with the parser's
            reason on the same line.
    """
    try:
        return yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {' '.join(str(error).split())}") from error


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (a checkpoint, a config), read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_sha256(array: np.ndarray, dtype: str) -> str:
    """sha256 of ``array`` as contiguous ``dtype`` bytes (e.g. ``"<i8"``): the same on every platform."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=dtype).tobytes()).hexdigest()


def json_sha256(content: Any) -> str:
    """sha256 of ``content`` as canonical JSON: sorted keys, no spaces, ASCII, and ``str()`` of any value JSON
    cannot hold (a path). Equal content gives an equal digest whatever the order it was built in."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_atomically(files: Sequence[tuple[str | Path, Writer]]) -> None:
    """Write each ``(path, write)`` in ``files``: ``write(binary_file)`` fills a temporary beside ``path``.

    Every temporary is written and fsynced before the first rename, and the renames happen in the order
    given: list a sidecar before the file it describes, and a reader that finds the file finds its sidecar.
    The files get mode ``0666 & ~umask``, as ``open(path, "w")`` would give (``tempfile`` makes them
    private): artifacts are shared, and another user's run must be able to read them.

    Raises:
        OSError: the folder cannot be written, the disk is full, ...; no temporary file is left behind, and
            a file that was already at a path is intact unless its own rename happened.
    """
    temporaries: list[tuple[str, Path]] = []
    try:
        for path, write in files:
            path = Path(path)
            temporaries.append((new_temporary_file(path.parent, f".{path.name}.", write), path))
        for temporary, path in temporaries:
            os.replace(temporary, path)
    finally:
        for temporary, _ in temporaries:
            if os.path.exists(temporary):
                os.unlink(temporary)


def new_temporary_file(directory: str | Path, prefix: str, write: Writer) -> str:
    """Create a new uniquely named ``{prefix}XXXXXXXX.tmp`` in ``directory``, fill it with ``write(file)``,
    fsync it and return its path (to be ``os.replace``d onto the final name); deleted again if writing fails.

    The fsync matters: without it a node crash right after the rename can leave an empty file under the
    final name.
    """
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}.tmp")
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 64 random bits
        raise FileExistsError(f"no free temporary name in {directory}")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return path
