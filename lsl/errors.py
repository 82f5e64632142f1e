"""The one error type lsl raises for bad input: the CLI prints its message and exits non-zero."""


class ConfigError(ValueError):
    """A bad value in a config, a file or a dataset, with a message that names the value and the fix.

    A subclass of ``ValueError`` so library users can catch either; ``lsl`` prints only the message
    (no traceback) and exits with status 2.
    """
