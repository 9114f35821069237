"""The refusals of the VE services: each carries a message for the user and the HTTP status that fits it."""


class ServiceError(Exception):
    """A request the panel refuses, with a message for the user."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    status_code = 400


class QuotaExceeded(ServiceError):
    status_code = 403


class ActionRefused(ServiceError):
    status_code = 409


class NotFound(ServiceError):
    """The thing named (a snapshot, a backup) is not there, for this VE."""

    status_code = 404


class Forbidden(ServiceError):
    """The user may see the VE but not do this to it (admins only)."""

    status_code = 403
