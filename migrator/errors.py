"""Failure kinds the engine tells apart, with no knowledge of where they came from.

The engine dead-letters a record whose request failed (:class:`RequestFailed`, filed under its
``error_class``) and lets a :class:`RunStopped` end the run, since every record would fail alike.
Transports (``migrator.http``) raise subclasses of these; the engine never imports them.
"""

from __future__ import annotations

__all__ = ["RequestFailed", "RunStopped"]


class RunStopped(Exception):
    """The run cannot go on (credentials refused, host unreachable): nothing is dead-lettered for it."""


class RequestFailed(Exception):
    """A request made for one record failed for good; the record is dead-lettered.

    ``error_class`` names the kind of failure in the dead-letter store (``transport_error``,
    ``target_rejected``, ``server_error``, ...); ``status`` is the HTTP status, if any.
    """

    error_class: str = "request_failed"
    status: int | None = None
