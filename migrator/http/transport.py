"""One attempt on the wire: an answer, or a :class:`TransportFailure` value saying whether the
request may have reached the server (the retry policy decides what to do with it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import orjson
from yarl import URL

from migrator.http.errors import HttpError, ProtocolError
from migrator.http.redact import excerpt

if TYPE_CHECKING:
    from migrator.http.client import HostClient

__all__ = ["Response", "TransportFailure", "send"]


class TransportFailure(msgspec.Struct, frozen=True):
    """An attempt that ended without a status."""

    reason: str
    surely_not_sent: bool  # could not even connect: resending cannot duplicate anything


class Response:
    """A final answer whose status the caller accepted."""

    __slots__ = ("status", "headers", "body", "method", "path", "_client", "_params")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # case-insensitive names
        self.body = body
        self.method = ""  # for error messages only
        self.path = ""
        self._client: HostClient | None = None  # to redact secrets and query values in messages
        self._params: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            client = self._client
            redact = client.excerpt_redactor(self.path, self._params) if client is not None else _no_redact
            path = client.show_path(self.path, self._params) if client is not None else self.path
            raise ProtocolError(
                f"{self.method} {path}: HTTP {self.status} body is not valid JSON ({exc})",
                status=self.status,
                method=self.method,
                path=path,
                body_excerpt=excerpt(self.body, redact),
            ) from None


def _no_redact(text: str) -> str:
    return text


def _connect_failure(exc: aiohttp.ClientError) -> str:
    """What a failed connect means to a person: the usual slips get their plain names."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timed out"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not found"
    if isinstance(getattr(exc, "os_error", None), ConnectionRefusedError):
        return "connection refused"
    return f"cannot connect ({type(exc).__name__})"


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    params: Mapping[str, Any] | None,
    data: bytes | None,
    headers: Mapping[str, str] | None,
    client: HostClient,
) -> Response | TransportFailure:
    """One attempt. Transport failures come back as values so the retry policy sits in one place."""
    try:
        async with session.request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            allow_redirects=False,
        ) as resp:
            return Response(resp.status, resp.headers, await resp.read())
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        # A TLS failure will not fix itself; never retry, never downgrade.
        raise HttpError(
            f"{method} {client.show_path(url.path, None)}: TLS error: {type(exc).__name__}",
            status=None,
            method=method,
            path=client.show_path(url.path, None),
        ) from None
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return TransportFailure(_connect_failure(exc), surely_not_sent=True)
    except TimeoutError:
        return TransportFailure(f"timed out after {client.limits.timeout:g}s", surely_not_sent=False)
    except aiohttp.ClientPayloadError as exc:
        return TransportFailure(f"truncated body ({type(exc).__name__})", surely_not_sent=False)
    except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
        return TransportFailure(f"connection lost ({type(exc).__name__})", surely_not_sent=False)
