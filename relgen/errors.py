"""User-facing errors.

A :class:`RelgenError` carries one line that names the file or field at fault and how to fix
it. The command-line entry points print it without a traceback and exit with status 2.
"""


class RelgenError(Exception):
    """An error caused by the user's input (config, data, weights, run directory)."""


class DataError(RelgenError):
    """A dataset file or field is missing or malformed."""


class ConfigError(RelgenError):
    """A configuration value is invalid or inconsistent with another one."""
