"""Fault injection for the simulators: spec parsing and the per-request dice roll.

A spec such as ``"500=0.05,drop=0.01,truncate=0.01,slow=0.02,slow_delay=2s,latency=50ms,after=0.5,seed=7"``
describes what can go wrong; ``FaultInjector`` turns it into one decision per request.

Outcomes (mutually exclusive, one roll per request): an injected status (500/502/503/504), ``drop``
(the socket is closed without an answer), ``truncate`` (half a body, then the socket is closed),
``slow`` (the answer is held back ``slow_delay`` seconds, meant to outlast the client's timeout) and
``badjson`` (the request is served, but the answer's body is cut in half behind correct framing: a
complete-looking response whose JSON does not parse, as a misbehaving proxy or gateway produces).
On write routes ``after`` is the share of those faults that strike *after* the write was applied;
for ``slow`` that means the write is applied at once and only the answer is late, while a ``before``
slow write is applied after the delay -- unless the client has hung up by then, as a gateway drops
an abandoned request (the client cannot tell the two apart: that is the point).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

# Statuses a spec may inject; anything else is a typo we want to catch early.
FAULT_STATUSES: tuple[int, ...] = (500, 502, 503, 504)
VALID_KEYS: tuple[str, ...] = (
    *(str(s) for s in FAULT_STATUSES), "drop", "truncate", "badjson", "slow", "slow_delay", "latency", "after", "seed",
)
DEFAULT_SLOW_DELAY = 3.0

Phase = Literal["before", "after"]
# A fault outcome is an HTTP status to answer, or a broken-connection kind.
Outcome = int | Literal["drop", "truncate", "badjson", "slow"]


def _prob(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"fault spec: {key}={raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fault spec: {key}={raw!r} must be a probability in [0, 1]")
    return value


def _duration(key: str, raw: str) -> float:
    text = raw.strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    try:
        value = float(text) * scale
    except ValueError:
        raise ValueError(f"fault spec: {key}={raw!r} is not a duration (e.g. 50ms, 0.2s)") from None
    if value < 0:
        raise ValueError(f"fault spec: {key}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class FaultSpec:
    """Parsed fault configuration. Probabilities are per request and mutually exclusive."""

    statuses: dict[int, float] = field(default_factory=dict)
    drop: float = 0.0
    truncate: float = 0.0
    badjson: float = 0.0  # share of answers served complete-looking but with a cut JSON body
    slow: float = 0.0  # share of requests whose answer is held back slow_delay seconds
    slow_delay: float = DEFAULT_SLOW_DELAY
    latency: float = 0.0  # seconds added to every request
    after: float = 0.0  # share of write-route faults that strike after the write is applied
    seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        statuses: dict[int, float] = {}
        values: dict[str, float] = {}
        seed: int | None = None
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key, raw = key.strip().lower(), raw.strip()
            if not sep or key not in VALID_KEYS:
                raise ValueError(f"fault spec: unknown key {key!r} in {part!r}; valid keys: {', '.join(VALID_KEYS)}")
            if key == "seed":
                try:
                    seed = int(raw)
                except ValueError:
                    raise ValueError(f"fault spec: seed={raw!r} is not an integer") from None
            elif key in ("latency", "slow_delay"):
                values[key] = _duration(key, raw)
            elif key.isdigit():
                statuses[int(key)] = _prob(key, raw)
            else:
                values[key] = _prob(key, raw)
        spec = cls(
            statuses=statuses,
            drop=values.get("drop", 0.0),
            truncate=values.get("truncate", 0.0),
            badjson=values.get("badjson", 0.0),
            slow=values.get("slow", 0.0),
            slow_delay=values.get("slow_delay", DEFAULT_SLOW_DELAY),
            latency=values.get("latency", 0.0),
            after=values.get("after", 0.0),
            seed=seed,
        )
        if spec.total() > 1.0 + 1e-9:
            raise ValueError(f"fault spec: fault probabilities add up to {spec.total():g} > 1")
        return spec

    @classmethod
    def coerce(cls, value: str | FaultSpec | None) -> FaultSpec:
        if value is None:
            return cls()
        return value if isinstance(value, FaultSpec) else cls.parse(value)

    def total(self) -> float:
        return sum(self.statuses.values()) + self.drop + self.truncate + self.badjson + self.slow


class FaultInjector:
    """Rolls one die per request; seeded so a run's fault sequence is reproducible."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self._table: list[tuple[float, Outcome]] = []
        edge = 0.0
        for status, p in sorted(spec.statuses.items()):
            edge += p
            self._table.append((edge, status))
        for kind in ("drop", "truncate", "badjson", "slow"):
            edge += getattr(spec, kind)
            self._table.append((edge, kind))  # type: ignore[arg-type]

    def roll(self, is_write: bool) -> tuple[Outcome, Phase] | None:
        if self.spec.total() <= 0.0:
            return None
        x = self._rng.random()
        for edge, outcome in self._table:
            if x < edge:
                after = is_write and self._rng.random() < self.spec.after
                return outcome, "after" if after else "before"
        return None


def drop_connection(request: web.Request) -> web.Response:
    """Close the socket without a response; aiohttp swallows the failed write that follows."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=499)  # never reaches the wire


async def truncated_response(request: web.Request, body: bytes, content_type: str) -> web.StreamResponse:
    """Promise more bytes than we send, then hang up, so the client gets a payload error."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    resp.content_length = len(body) + 64
    await resp.prepare(request)
    await resp.write(body[: max(0, len(body) // 2)])
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp


def garbled_response(resp: web.StreamResponse) -> web.StreamResponse:
    """The same status and headers, half the body, honestly framed: the client reads it all, then fails to parse."""
    if not isinstance(resp, web.Response):
        return resp
    body = resp.body if isinstance(resp.body, bytes) else b""
    cut = body[: len(body) // 2] if len(body) > 1 else b"{"
    headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
    return web.Response(body=cut, status=resp.status, headers=headers)
