"""Why a request failed for good. Each error's ``str()`` carries only the method, the path (query
values under credential names hidden, known secrets redacted) and a redacted body excerpt."""

from __future__ import annotations

from migrator.errors import RequestFailed, RunStopped

__all__ = ["AmbiguousOutcome", "AuthError", "HostUnreachable", "HttpError", "ProtocolError"]


class HttpError(RequestFailed):
    """The request failed for good: a non-retryable status, or retries ran out."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        method: str,
        path: str,
        body_excerpt: str = "",
        host: str = "",
        error_class: str | None = None,
    ) -> None:
        super().__init__(message)
        self.host = host  # the HostClient's name, so the caller can say which side failed
        self.status = status
        self.method = method
        self.path = path
        self.body_excerpt = body_excerpt
        self.error_class = error_class or _error_class(status)


def _error_class(status: int | None) -> str:
    """The dead-letter class of a failed request, from its last status."""
    if status is None:
        return "transport_error"
    if 400 <= status < 500:
        return "target_rejected"
    return "server_error"


class AuthError(HttpError, RunStopped):
    """401/403, or a login refused: the credential is wrong or lacks rights. Stops the run;
    retrying cannot help."""


class HostUnreachable(HttpError, RunStopped):
    """No connection could be made to the host until the retry budget ran out. Stops the run:
    every record would fail the same way, so none is dead-lettered for it.

    ``str()`` is one line naming the base URL, what failed, how many attempts and for how long;
    ``base_url`` and ``tried`` hold the parts for callers that phrase their own line.
    """

    def __init__(
        self, *, base_url: str, tried: str, reached: bool, method: str, path: str, host: str
    ) -> None:
        self.base_url = base_url
        self.tried = tried
        self.reached = reached  # the host did answer earlier in this run: down, not misnamed
        super().__init__(
            f"cannot reach {base_url}: {tried}; {self.advice('its base_url')}",
            status=None,
            method=method,
            path=path,
            host=host,
        )

    def advice(self, setting: str) -> str:
        """What to check, naming the plan setting (e.g. "`target.base_url`") that holds the URL."""
        if self.reached:
            return "it answered earlier in this run: check that the server is up"
        return f"check the host and port in {setting} and that the server is up"


class AmbiguousOutcome(HttpError):
    """A non-idempotent request may or may not have been applied; look it up before resending."""


class ProtocolError(HttpError):
    """The server answered, but not in the shape the API promises (e.g. invalid JSON)."""
