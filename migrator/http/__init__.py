"""Everything that talks to an LMS API goes through a :class:`HostClient`; it knows about status
codes, rate limits, retries and auth, and nothing about records or mappings.

One module per concern: ``limits`` (the plan's HostLimits), ``stats`` (RequestStats), ``redact``
(the project's one redactor), ``net`` (the loopback check), ``rate`` (fixed and adaptive rate,
host pauses), ``retry`` (the retry policy), ``auth`` (header, Basic, login token), ``errors``,
``transport`` (one attempt) and ``client`` (the HostClient pipeline).
"""

from migrator.http.auth import BasicAuth, HeaderAuth, LoginToken
from migrator.http.client import HostClient, Rejection, Validator
from migrator.http.errors import AmbiguousOutcome, AuthError, HostUnreachable, HttpError, ProtocolError
from migrator.http.limits import HostLimits
from migrator.http.net import is_loopback
from migrator.http.redact import Redactor
from migrator.http.retry import parse_retry_after
from migrator.http.stats import RequestStats
from migrator.http.transport import Response

__all__ = [
    "AmbiguousOutcome",
    "AuthError",
    "BasicAuth",
    "HeaderAuth",
    "HostClient",
    "HostLimits",
    "HostUnreachable",
    "HttpError",
    "LoginToken",
    "ProtocolError",
    "Redactor",
    "Rejection",
    "RequestStats",
    "Response",
    "Validator",
    "is_loopback",
    "parse_retry_after",
]
