"""User-facing errors.

A :class:`RelgenError` carries one line that names the file or field at fault and how to fix
it. The command-line entry points print it without a traceback and exit with status 2.
"""

import errno


class RelgenError(Exception):
    """An error caused by the user's input (config, data, weights, run directory)."""


class DataError(RelgenError):
    """A dataset file or field is missing or malformed."""


class ConfigError(RelgenError):
    """A configuration value is invalid or inconsistent with another one."""


class WriteError(RelgenError):
    """A file could not be written (full disk, read-only folder, no permission)."""


#: errno values of a write refused by the file system (full, read-only, not permitted).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def write_error(exc: OSError, path: object, what: str) -> WriteError:
    """One line for a failed write of ``what`` to ``path``, with what to do about it."""
    import errno

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space (or choose another output_root / cache_dir), then run again with resume=latest"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "the folder is read-only for this user; choose a writable output_root / cache_dir"
    else:
        advice = "check the disk and the folder, then run again with resume=latest"
    return WriteError(f"{path}: cannot write the {what} ({reason}); {advice}")
