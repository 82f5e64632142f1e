"""Downloads through torchvision, whose failure becomes one line that says how to put the files in place by hand."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from lsl.errors import ConfigError


def fetch(download: Callable[[], object], what: str, root: Path, by_hand: str) -> None:
    """Run a torchvision download into ``root``; a failure (no network, a proxy, a bad mirror) becomes one line
    that says how to put the files in place by hand, and a ``root`` the failed download created is removed."""
    existed = root.exists()
    try:
        download()
    except Exception as error:  # urllib, http and checksum errors have no common base below Exception
        if not existed:
            shutil.rmtree(root, ignore_errors=True)  # only what this failed download wrote
        raise ConfigError(f"could not download {what} ({type(error).__name__}: {str(error)[:150]}): with no "
                          f"network, {by_hand}") from error
