"""The plan file: TOML decoded into msgspec Structs, with `${ENV}` secrets and errors that name the key.

A plan never runs anything; it only says what to move, where from, where to and how hard to push.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from migrator.http import HostLimits
from migrator.platforms.civica.config import CivicaTarget
from migrator.platforms.damstra.config import DamstraSource

SourceEndpoint = DamstraSource
TargetEndpoint = CivicaTarget
SOURCE_PLATFORMS = ("damstra",)
TARGET_PLATFORMS = ("civica",)


class PlanError(Exception):
    """A user mistake in the plan: printed as one line, exit code 2, never a traceback."""


class StreamPlan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    writers: int = 16  # records written concurrently for this stream (HTTP is capped per host)
    # a record that already existed in the target before this migration: dead-letter it as a
    # `conflict` (the default: never overwrite someone else's data), update it, or skip it
    existing: Literal["conflict", "update", "skip"] = "conflict"
    # the first N writes all failing alike is a mistake in the plan, not N bad records: stop the
    # stream (the rest stays pending for --resume); 0 never stops
    stop_after_same_failure: Annotated[int, msgspec.Meta(ge=0)] = 20


class Plan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    source: SourceEndpoint
    target: TargetEndpoint
    ledger: str = "migrator-ledger.sqlite"
    streams: dict[str, StreamPlan] = {}
    mapping: dict[str, Any] = {}
    # where the plan was read from; relative ledger paths are resolved against it
    base_dir: str = "."

    @property
    def ledger_path(self) -> Path:
        path = Path(self.ledger)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def secrets(self) -> list[str]:
        return [s for s in (*self.source.secret_values(), *self.target.secret_values()) if s]


_ENV = re.compile(r"\$\{([^}]*)\}")


def _expand(value: Any, path: str, env: dict[str, str]) -> Any:
    """Replace `${VAR}` (environment) and `${file:PATH}` (a file the user names) in every string."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else k, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name.startswith("file:"):
            file = Path(name[5:]).expanduser()
            try:
                return file.read_text().strip()
            except OSError as exc:
                raise PlanError(f"{path}: cannot read secret file {file} ({exc.strerror}); check the path") from None
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise PlanError(f"{path}: '${{{name}}}' is not a valid environment variable name")
        if name not in env:
            raise PlanError(f"{path}: environment variable {name} is not set; export {name}=... before running")
        return env[name]

    return _ENV.sub(substitute, value)


def _fields_at(path: list[str]) -> list[str] | None:
    """The keys allowed at a dotted plan path, so an unknown-key error can list them."""
    tp: Any = Plan
    for part in path:
        if get_origin(tp) is dict:
            tp = get_args(tp)[1]
            continue
        if get_origin(tp) is Union or isinstance(tp, type(SourceEndpoint | None)):
            tp = next((a for a in get_args(tp) if isinstance(a, type) and issubclass(a, msgspec.Struct)), None)
        if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
            return None
        hints = {f.name: f.type for f in msgspec.structs.fields(tp)}
        if part not in hints:
            return None
        tp = hints[part]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [f.name for f in msgspec.structs.fields(tp) if f.name != "base_dir"]
    return None


def _stream_fields() -> list[str]:
    return [f.name for f in msgspec.structs.fields(StreamPlan)]


def _explain(err: msgspec.ValidationError, prefix: list[str] | None = None) -> str:
    text = str(err)
    where = ""
    m = re.search(r" - at `\$(.*)`$", text)
    if m:
        where = m.group(1).lstrip(".")
        where = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", where).lstrip(".")
        text = text[: m.start()]
    parts = (prefix or []) + (where.split(".") if where else [])
    where = ".".join(parts)
    if m2 := re.match(r"Object contains unknown field `(.+)`", text):
        key = ".".join([*parts, m2.group(1)])
        allowed = _stream_fields() if prefix else _fields_at(parts)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key `{key}`: remove it or fix its spelling{hint}"
    if m2 := re.match(r"Object missing required field `(.+)`", text):
        key = ".".join([*parts, m2.group(1)])
        return f"missing key `{key}`: add it to the plan"
    if where.endswith("limits.rate"):
        return f'`{where}`: {text}; give requests per second (a number > 0), "unlimited", or leave it out to adapt'
    if where.endswith("platform") or "Invalid value" in text and "platform" in where:
        return f"`{where}`: {text}; known sources: {', '.join(SOURCE_PLATFORMS)}; targets: {', '.join(TARGET_PLATFORMS)}"
    return f"`{where or 'plan'}`: {text}"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PlanError(f"`{key}`: '{url}' is not an http(s) URL; write it as https://host/path")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise PlanError(
            f"`{key}`: plain http:// is refused for {parts.hostname}; use https:// (http is allowed only for loopback)"
        )


def parse_plan(text: str, *, base_dir: str = ".", env: dict[str, str] | None = None, name: str = "plan") -> Plan:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{name} is not valid TOML: {exc}") from None
    raw = _expand(raw, "", dict(os.environ) if env is None else env)
    if "base_dir" in raw:
        raise PlanError("unknown key `base_dir`: remove it or fix its spelling")
    raw["base_dir"] = base_dir
    for side, known in (("source", SOURCE_PLATFORMS), ("target", TARGET_PLATFORMS)):
        section = raw.get(side)
        if isinstance(section, dict) and section.get("platform") not in known:
            got = section.get("platform")
            what = f"'{got}' is not a known {side} platform" if got else "missing key"
            raise PlanError(f"`{side}.platform`: {what}; choose one of: {', '.join(known)}")
    streams = raw.get("streams")
    if isinstance(streams, dict):
        # msgspec cannot name a dict key in its error path, so each stream is checked on its own
        for stream_name, body in streams.items():
            try:
                msgspec.convert(body, StreamPlan)
            except msgspec.ValidationError as exc:
                raise PlanError(_explain(exc, prefix=["streams", stream_name])) from None
    try:
        plan = msgspec.convert(raw, Plan)
    except msgspec.ValidationError as exc:
        raise PlanError(_explain(exc)) from None
    check_url(plan.source.base_url, "source.base_url")
    check_url(plan.target.base_url, "target.base_url")
    for name_, stream in plan.streams.items():
        if stream.writers < 1:
            raise PlanError(f"`streams.{name_}.writers` must be at least 1 (got {stream.writers})")
    return plan


def load_plan(path: str | Path, env: dict[str, str] | None = None) -> Plan:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise PlanError(f"cannot read plan {file}: {exc.strerror}") from None
    return parse_plan(text, base_dir=str(file.resolve().parent), env=env, name=str(file))


__all__ = ["Plan", "PlanError", "StreamPlan", "HostLimits", "load_plan", "parse_plan", "is_loopback"]
