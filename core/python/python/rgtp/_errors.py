"""The exceptions of rgtp: one class per exit-code family of rgtp-pull / rgtp-expose."""

from __future__ import annotations

from typing import Dict, Type

__all__ = [
    "RgtpError",
    "InternalError",
    "UsageError",
    "FileError",
    "DiskFull",
    "Unreachable",
    "KeyMismatch",
    "NotFound",
    "Corrupt",
    "CorruptState",
    "BindError",
    "BadKey",
    "TooLarge",
    "Gone",
    "KeyDirError",
    "ProtocolError",
    "Cancelled",
    "error_for",
]


class RgtpError(Exception):
    """Base of every rgtp error. ``exit_code`` is the code ``rgtp-pull`` /
    ``rgtp-expose`` exit with for the same failure; ``str(e)`` is their message."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InternalError(RgtpError):
    """An internal or unexpected I/O error, e.g. a socket error (exit code 1)."""

    exit_code = 1


class UsageError(RgtpError, ValueError):
    """Bad input: a malformed URL, name, key or address (exit code 2)."""

    exit_code = 2


class FileError(RgtpError):
    """A local file is missing or unreadable, or the output cannot be written (3)."""

    exit_code = 3


class DiskFull(RgtpError):
    """The disk filled; the message says what was saved for a resume (4)."""

    exit_code = 4


class Unreachable(RgtpError):
    """The exposer's host does not resolve, never answered, or went quiet (5)."""

    exit_code = 5


class KeyMismatch(RgtpError):
    """The exposer's key is not the one pinned or remembered (6)."""

    exit_code = 6


class NotFound(RgtpError):
    """The exposer has no file of that name (7)."""

    exit_code = 7


class Corrupt(RgtpError):
    """The content does not match its root, or a bad outboard (8)."""

    exit_code = 8


class CorruptState(RgtpError):
    """The resume state (``OUT.rgtp-state``) is damaged (9)."""

    exit_code = 9


class BindError(RgtpError):
    """The UDP port cannot be bound (10)."""

    exit_code = 10


class BadKey(RgtpError):
    """A key file exists but cannot be used (11)."""

    exit_code = 11


class TooLarge(RgtpError):
    """The exposer offers more than this host can track (12)."""

    exit_code = 12


class Gone(RgtpError):
    """The exposer withdrew the file: it changed or broke while exposed (13)."""

    exit_code = 13


class KeyDirError(RgtpError):
    """The key's directory cannot be created (15)."""

    exit_code = 15


class ProtocolError(RgtpError):
    """The exposer broke the protocol, e.g. chose a chunk cipher that was not
    offered (16)."""

    exit_code = 16


class Cancelled(RgtpError):
    """The pull was cancelled (a CancelToken, or asyncio cancellation); its
    progress is saved and the same pull resumes it (130)."""

    exit_code = 130


_BY_CODE: Dict[int, Type[RgtpError]] = {
    c.exit_code: c
    for c in (
        InternalError,
        UsageError,
        FileError,
        DiskFull,
        Unreachable,
        KeyMismatch,
        NotFound,
        Corrupt,
        CorruptState,
        BindError,
        BadKey,
        TooLarge,
        Gone,
        KeyDirError,
        ProtocolError,
        Cancelled,
    )
}


def error_for(code: int, message: str) -> RgtpError:
    """The exception for an exit code (the native module raises through this)."""
    cls = _BY_CODE.get(code, RgtpError)
    return cls(message, code)
