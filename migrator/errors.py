"""Failure kinds the engine tells apart, with no knowledge of where they came from.

The engine dead-letters a record whose request failed (:class:`RequestFailed`, filed under its
``error_class``) and lets a :class:`RunStopped` end the run, since every record would fail alike.
Transports (``migrator.http``) raise subclasses of these; the engine never imports them.
A connector or mapping raises :class:`RecordError` for a record it cannot carry and :class:`Skip`
for one it leaves behind on purpose.
"""

from __future__ import annotations

__all__ = ["RecordError", "RequestFailed", "RunStopped", "Skip"]


class RunStopped(Exception):
    """The run cannot go on (credentials refused, host unreachable): nothing is dead-lettered for it."""


class RequestFailed(Exception):
    """A request made for one record failed for good; the record is dead-lettered.

    ``error_class`` names the kind of failure in the dead-letter store (``transport_error``,
    ``target_rejected``, ``server_error``, ...); ``status`` is the HTTP status, if any.
    """

    error_class: str = "request_failed"
    status: int | None = None


class RecordError(Exception):
    """A single record cannot be carried; it goes to the dead-letter store, the run goes on."""

    def __init__(self, error_class: str, message: str, status: int | None = None):
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.status = status


class Skip(Exception):
    """This record is deliberately left behind (recorded as skipped, with the reason): by the mapping,
    or by a target whose record already exists (then `target_id` names it, so children can attach)."""

    def __init__(self, reason: str, target_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.target_id = target_id
