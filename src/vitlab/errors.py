"""Errors a user can fix, raised where a bad input meets the library (a recipe, a flag, a file, a folder).

The ``vitlab`` command prints a :class:`UserError` as one ``error:`` line and exits with code 2; every other
exception is a fault of the library and keeps its traceback. The message names the key, flag or file at fault and
what was expected. The subclasses stay ``ValueError`` (or ``OSError``) so that code catching those still works.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix; ``str(error)`` is one line naming the key, flag or file and what was expected."""


class ConfigError(UserError, ValueError):
    """A configuration problem (recipe key, ``--set`` override, command-line flag); the message names the key."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, unreadable, not a vitlab checkpoint, or does not fit the model it is loaded into;
    the message names the file."""


class DataError(UserError, ValueError):
    """A data set's files or settings are wrong (missing folder, unreadable image, classes that do not fit the
    model); the message names the file or ``data.*`` key."""


class OutputError(UserError, OSError):
    """A file or folder cannot be written (permission, read-only file system, disk full, file too large); any file
    that was there before is left as it was."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept (the command exits with 1)."""


_REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
            errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large (a file-size limit was reached)", errno.ENOTDIR: "a path component is a file"}


def os_reason(exc: OSError) -> str:
    """A short reason for a file-system error: ``"permission denied"``, ``"no space left on the device"``, ..."""
    return _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def is_environment_error(exc: BaseException) -> bool:
    """An ``OSError`` the user fixes outside vitlab (permission, read-only file system, disk full or quota, a
    file-size limit) that names its file: the command line reports it as a user error wherever it was raised."""
    return isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS and exc.filename is not None


_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextmanager
def writing(path: str | Path, what: str = "output", kept: str | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a one-line :class:`OutputError` naming it.

    ``what`` names the thing written (``"checkpoint"``, ``"run folder"``); ``kept`` adds what is still safe, e.g.
    ``"the previous last.ckpt is intact"``.
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        tail = f"; {kept}" if kept else ""
        raise OutputError(f"{what} {path}: cannot be written ({os_reason(exc)}){tail}") from exc
