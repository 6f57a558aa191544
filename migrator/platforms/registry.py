"""The platforms this build knows, found by looking: each `migrator/platforms/<name>/__init__.py`
declares one `PLATFORM` (a :class:`Platform`), and nothing outside that folder names it.

The plan's `[source]` / `[target]` sections, `migrator platforms`, `migrator sim`, `migrator demo`
and the mapping lookup all read this registry, so adding a platform is adding its folder.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec

from migrator.connectors import SourceStream, TargetStream
from migrator.http import HostClient, RequestStats


class SourceSide:
    """What a source platform opens for a run: its client and its streams by name."""

    def __init__(self, client: HostClient, streams: dict[str, SourceStream]):
        self.client, self.streams = client, streams


class TargetSide:
    """What a target platform opens for a run: its client, its streams by name, and the checks it can make."""

    client: HostClient
    streams: dict[str, TargetStream]

    async def prepare(self, stats: RequestStats) -> None:
        """Read what the target defines before anything is written (e.g. its profile fields)."""

    async def check_references(
        self, wanted: set[tuple[str, str]], stats: RequestStats
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """Dry run: (kind, value) → (verdict, note) for values the records need to exist in the target."""
        return {}


@dataclass(frozen=True)
class DemoSide:
    """How `migrator demo` runs this platform on one side: its simulator and the plan section for it."""

    simulator: Callable[..., Any]  # (records, credential, seed=…) → a simulator serving that many users
    plan_section: Callable[[str, str, str], str]  # (side, url, env var holding the credential) → its TOML tables
    credential: str  # the demo credential the simulator accepts
    expected_dead: str = ""  # why the demo data leads to dead letters, if it does
    # target side: the simulator's own account of what was written, for the crash matrix:
    # {"written_twice": records the target holds twice, "calls": {stream: write calls received}}
    audit: Callable[[Any], dict[str, Any]] | None = None


@dataclass(frozen=True)
class SimOption:
    """A `migrator sim` option only this platform's simulator takes (a keyword of its constructor)."""

    flag: str  # "--status-delay"
    keyword: str  # "status_delay"
    help: str
    type: Callable[[str], Any] | None = float
    default: Any = None
    flag_means_false: bool = False  # a bare flag whose presence sets the keyword to False


@dataclass(frozen=True)
class SimulatorInfo:
    """How `migrator sim` serves this platform: its options, its credential, and what it tells people."""

    credential_keyword: str  # the constructor keyword `--key` sets
    options: tuple[SimOption, ...] = ()
    banner: Callable[[Any, str], list[str]] = lambda sim, url: []  # (simulator, url) → lines printed at start
    credentials_help: str = ""  # its lines under "credentials" in `migrator sim --help`
    data_help: str = ""  # its lines under "--data FILE.jsonl" there


@dataclass(frozen=True)
class Platform:
    """One LMS, as every part of migrator sees it."""

    name: str
    title: str
    config: type[msgspec.Struct]  # its plan section (source and target alike), tagged by `platform`
    streams: dict[str, str]  # stream → the canonical record it carries
    open_source: Callable[[Any, list[str]], SourceSide] | None = None
    open_target: Callable[[Any, list[str]], TargetSide] | None = None
    simulator: Callable[..., Any] | None = None  # keyword options → a simulator (migrator sim)
    sim: SimulatorInfo | None = None
    demo: dict[str, DemoSide] = field(default_factory=dict)  # "source" / "target" → how the demo runs it

    @property
    def directions(self) -> list[str]:
        return [side for side, opener in (("source", self.open_source), ("target", self.open_target)) if opener]


@cache
def platforms() -> dict[str, Platform]:
    import migrator.platforms as package

    found: dict[str, Platform] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        platform = getattr(module, "PLATFORM", None)
        if isinstance(platform, Platform):
            found[platform.name] = platform
    return found


def sources() -> list[str]:
    return [name for name, p in platforms().items() if p.open_source]


def targets() -> list[str]:
    return [name for name, p in platforms().items() if p.open_target]


def platform(name: str) -> Platform:
    return platforms()[name]


def open_source(cfg: Any, secrets: list[str]) -> SourceSide:
    opener = platform(cfg.platform).open_source
    assert opener is not None, cfg.platform  # the plan only accepts source platforms here
    return opener(cfg, secrets)


def open_target(cfg: Any, secrets: list[str]) -> TargetSide:
    opener = platform(cfg.platform).open_target
    assert opener is not None, cfg.platform
    return opener(cfg, secrets)


__all__ = [
    "DemoSide", "Platform", "SimOption", "SimulatorInfo", "SourceSide", "TargetSide", "open_source", "open_target", "platform", "platforms",
    "sources", "targets",
]  # fmt: skip
