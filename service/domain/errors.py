"""What can go wrong with a request, in the application's terms; ``api/`` maps each kind to HTTP once.

Every error carries a stable machine-readable ``code`` (the ``type`` of the JSON error body) and a
message for people. ``retry_after`` (seconds) is set where waiting helps.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class; subclasses say which kind of failure it is (see ``api.errors.STATUS``)."""

    def __init__(self, code: str, message: str, retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after, self.param = code, message, retry_after, param


class InvalidInput(DomainError):
    """The request is well-formed JSON but asks for something this server cannot do (4xx)."""


class NotFound(DomainError):
    """A named thing (profile, job, model) does not exist."""


class Conflict(DomainError):
    """The request contradicts the stored state (e.g. a profile compiled for another model)."""


class TooLarge(DomainError):
    """Prompt, examples or body exceed what the model or server takes."""


class Overloaded(DomainError):
    """Back-pressure: queues are full or a rate limit is spent; retry after ``retry_after``."""


class Unavailable(DomainError):
    """A component is loading, failed or shutting down."""


class Timeout(DomainError):
    """The work did not finish within the server's deadline."""


class ClientGone(DomainError):
    """The client closed the connection; the work was cancelled."""
