"""What lsl tells a user about their input: the one error type, and the one way to warn."""

from __future__ import annotations

import os
import sys
from typing import Callable


class ConfigError(ValueError):
    """A bad value in a config, a file or a dataset, with a message that names the value and the fix.

    A subclass of ``ValueError`` so library users can catch either; ``lsl`` prints only the message
    (no traceback) and exits with status 2.
    """


def warn(message: str) -> None:
    """Print ``lsl: warning: <message>`` on stderr, once per job (rank 0 under DDP): for a result that is not
    what it seems (a collapsed model, a resume that trained nothing), which must not hide among library warnings."""
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":
        print(f"lsl: warning: {message}", file=sys.stderr, flush=True)


def error_behind(error: BaseException | None, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first error in ``error``'s chain of causes and contexts that is ``wanted``: jsonargparse wraps the
    errors raised while it instantiates classes, and torch.save raises a RuntimeError over a failed write."""
    seen = set()
    while error is not None and id(error) not in seen:
        if wanted(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
