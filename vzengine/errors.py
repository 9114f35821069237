"""Errors the engine raises: each carries one user-facing line in ``message``."""

from __future__ import annotations

from collections.abc import Sequence


class VZError(Exception):
    """An expected failure, explained in one line for the user.

    ``permanent`` is False when trying again later may succeed (a busy lock, say).
    """

    permanent = True
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(VZError):
    """A parameter the user gave is malformed or out of range."""

    exit_code = 2


class NotFound(VZError):
    """The VE, template or snapshot asked for does not exist."""

    exit_code = 3


class AlreadyExists(VZError):
    """The VE (or other object) to create is already there."""

    exit_code = 4


class StateError(VZError):
    """The operation does not fit the VE's current state (start a running VE, say)."""

    exit_code = 5


class Busy(VZError):
    """Another operation holds the VE's lock."""

    permanent = False
    exit_code = 6


class CommandFailed(VZError):
    """An external tool failed; the message names the command and its output."""

    exit_code = 7

    def __init__(self, message: str, cmd: Sequence[str] | None = None, returncode: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.cmd = cmd
        self.returncode = returncode
        self.output = output


class Unsupported(VZError):
    """The host or the VE's storage cannot do what was asked."""

    exit_code = 8
