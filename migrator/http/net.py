"""The one loopback check of the project: where plain ``http://`` is allowed."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` (any case, trailing dot) and loopback IP literals (``127.0.0.0/8``,
    ``[::1]``, IPv4-mapped ``::ffff:127.x``). Names that merely start with "localhost"
    (``localhost.evil.com``, ``localhostx``) are not: DNS decides where those go."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # Python 3.11 does not see ::ffff:127.0.0.1 as loopback
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
