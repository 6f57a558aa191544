"""Which connector serves which platform name in a plan."""

from __future__ import annotations

from typing import Any

from migrator.connectors import SourceStream, TargetStream
from migrator.http import HostClient


class SourceSide:
    def __init__(self, client: HostClient, streams: dict[str, SourceStream]):
        self.client, self.streams = client, streams


def open_source(cfg: Any, secrets: list[str]) -> SourceSide:
    if cfg.platform == "damstra":
        from migrator.platforms.damstra.source import STREAMS, open_client

        client = open_client(cfg, secrets)
        return SourceSide(client, {name: cls(client, cfg) for name, cls in STREAMS.items()})
    raise ValueError(f"unknown source platform {cfg.platform}")


def open_target(cfg: Any, secrets: list[str]) -> Any:
    """A target side: `.client`, `.streams: dict[str, TargetStream]`, `async prepare(stats)`."""
    if cfg.platform == "civica":
        from migrator.platforms.civica.target import Civica

        return Civica(cfg, secrets)
    raise ValueError(f"unknown target platform {cfg.platform}")


__all__ = ["open_source", "open_target", "SourceSide", "TargetStream"]
