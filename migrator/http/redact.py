"""The one redactor of the project, and the rules for what a message may show of a request.

:class:`Redactor` replaces known secrets (and their URL-encoded forms) with ``***``; the HTTP
client, the ledger and the login-token flow all use it. Query values are shown in messages (a
cursor or a filter helps to understand an error) except under credential-like keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

__all__ = [
    "REDACTED",
    "Redactor",
    "credential_values",
    "excerpt",
    "excerpt_redactor",
    "names_a_credential",
    "show_path",
]

REDACTED = "***"
EXCERPT_CHARS = 300
# Header names whose values are never credentials; everything else a caller sets is treated as secret.
PUBLIC_HEADERS = frozenset(
    {"accept", "accept-encoding", "accept-language", "content-type", "user-agent", "connection"}
)
# Query keys whose values are credentials whatever their value: matched anywhere in the lowercased
# name (X-Amz-Signature, accessToken, apikey) or, for short words that hide inside ordinary
# names (`key` in "keyword", `auth` in "author"), as one word of the name (sig, api_key, authCode).
_CREDENTIAL_KEY_PARTS = (
    "token", "secret", "passw", "signature", "credential", "apikey", "authoriz", "oauth", "session",
    "cookie", "jwt", "private",
)  # fmt: skip
_CREDENTIAL_KEY_WORDS = frozenset(
    {"key", "sig", "code", "auth", "pwd", "pass", "pin", "otp", "hmac", "nonce"}
)
_MIN_ECHO_REDACTED = 4  # characters a credential-named query value needs to be hunted in error bodies
_KEY_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


class Redactor:
    """Replaces every known secret (and its URL-encoded forms) with ``***``.

    Secrets learned later (a login token) are added with :meth:`add`; nothing is ever forgotten,
    since an old token may still be echoed by a server.
    """

    __slots__ = ("_needles",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._needles: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        needles = set(self._needles)
        for s in secrets:
            if s:
                needles.update({s, quote(s, safe=""), quote_plus(s)})
        # Longest first so a secret containing another is replaced whole.
        self._needles = sorted(needles, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text

    def __repr__(self) -> str:
        return f"<Redactor {len(self._needles)} needles>"


def excerpt(body: bytes, redact: Callable[[str], str]) -> str:
    # Redact before truncating: a cut could otherwise leave a secret's prefix unrecognised.
    return redact(body[: EXCERPT_CHARS * 4].decode("utf-8", "replace"))[:EXCERPT_CHARS]


def names_a_credential(key: str) -> bool:
    lowered = key.lower()
    if any(part in lowered for part in _CREDENTIAL_KEY_PARTS):
        return True
    return any(word.lower() in _CREDENTIAL_KEY_WORDS for word in _KEY_WORDS.findall(key))


def credential_values(path: str, params: Mapping[str, Any] | None) -> list[str]:
    """Values a request sends under credential-like query keys, decoded. Shorter ones are left
    out: redacting every "1" of an error body would hide the body, not a secret."""
    values = []
    for part in path.partition("?")[2].split("&"):
        key, has_value, value = part.partition("=")
        if has_value and names_a_credential(unquote_plus(key)):
            values.append(unquote_plus(value))
    values += [str(v) for k, v in (params or {}).items() if names_a_credential(str(k))]
    return [v for v in values if len(v) >= _MIN_ECHO_REDACTED]


def show_path(path: str, params: Mapping[str, Any] | None, redact: Callable[[str], str]) -> str:
    """Path for messages: query values are shown except under credential-like keys (token,
    signature, api_key, ...); every known secret is redacted wherever it appears."""
    path, _, query = path.partition("?")
    pairs: list[str] = []
    for part in query.split("&"):
        if part:
            key, has_value, _value = part.partition("=")
            # the path's own query arrives encoded: judge the key by its decoded name
            hide = has_value and names_a_credential(unquote_plus(key))
            pairs.append(f"{key}={REDACTED}" if hide else part)
    for key, value in (params or {}).items():
        pairs.append(f"{key}={REDACTED if names_a_credential(str(key)) else value}")
    return redact(f"{path}?{'&'.join(pairs)}" if pairs else path)


def excerpt_redactor(redact: Redactor, path: str, params: Mapping[str, Any] | None) -> Callable[[str], str]:
    """``redact`` plus the values this request sent under credential names (unknown to it): a
    careless server may echo them into its error body. Built only for a message."""
    sent = credential_values(path, params)
    if not sent:
        return redact
    also = Redactor(sent)
    return lambda text: also(redact(text))
