"""The errors an agent call raises in the panel, mirroring the engine's kinds without importing it."""

from __future__ import annotations


class AgentError(Exception):
    """An operation the agent ran failed in an expected way; ``message`` says why, for the user."""

    kind = "VZError"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(AgentError):
    kind = "InvalidInput"


class NotFound(AgentError):
    kind = "NotFound"


class AlreadyExists(AgentError):
    kind = "AlreadyExists"


class StateError(AgentError):
    kind = "StateError"


class Busy(AgentError):
    kind = "Busy"


class CommandFailed(AgentError):
    kind = "CommandFailed"


class Unsupported(AgentError):
    kind = "Unsupported"


class Refused(AgentError):
    """The agent refused the request itself: an unknown operation or parameters that fail validation."""

    kind = "Refused"


class Unavailable(AgentError):
    """No agent answered for the node (down, or the request timed out)."""

    kind = "Unavailable"


class AgentBug(Exception):
    """The operation hit a bug in the agent (an unexpected exception there); ``ref`` finds it in its log."""

    def __init__(self, message: str, ref: str = ""):
        super().__init__(message)
        self.message = message
        self.ref = ref


KINDS: dict[str, type[AgentError]] = {cls.kind: cls for cls in (
    AgentError, InvalidInput, NotFound, AlreadyExists, StateError, Busy, CommandFailed, Unsupported, Refused,
    Unavailable)}


def from_reply(kind: str, message: str) -> AgentError:
    """Return the panel-side error for an error the agent reported."""
    return KINDS.get(kind, AgentError)(message)
