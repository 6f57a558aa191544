"""The plan file: TOML decoded into msgspec Structs, with `${ENV}` secrets and errors that name the key.

A plan never runs anything; it only says what to move, where from, where to and how hard to push.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from migrator.http import HostLimits, is_loopback
from migrator.platforms import registry


def _endpoint(names: list[str]) -> Any:
    """The plan section for one side: the config Structs of the platforms that can serve it, as a
    union tagged by `platform` (msgspec picks the Struct by that key)."""
    configs = tuple(registry.platform(name).config for name in names)
    return configs[0] if len(configs) == 1 else Union[configs]  # noqa: UP007 (built at run time)


SOURCE_PLATFORMS = tuple(registry.sources())
TARGET_PLATFORMS = tuple(registry.targets())
SourceEndpoint = _endpoint(list(SOURCE_PLATFORMS))
TargetEndpoint = _endpoint(list(TARGET_PLATFORMS))


class PlanError(Exception):
    """A user mistake in the plan: printed as one line, exit code 2, never a traceback."""


class StreamPlan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    writers: int = 16  # records written concurrently for this stream (HTTP is capped per host)
    # a record that already existed in the target before this migration: dead-letter it as a
    # `conflict` (the default: never overwrite someone else's data), update it, or skip it
    existing: Literal["conflict", "update", "skip"] | None = None  # None: "conflict"
    # N writes in a row failing alike is a mistake in the plan, not N bad records: stop the
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
                text = file.read_text().strip()
            except OSError as exc:
                raise PlanError(f"`{path}`: cannot read secret file {file} ({exc.strerror}); check the path") from None
            if not text:
                raise PlanError(f"`{path}`: secret file {file} is empty; write the value into it")
            return text
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise PlanError(f"`{path}`: '${{{name}}}' is not a valid environment variable name")
        if name not in env:
            raise PlanError(f"`{path}`: environment variable {name} is not set; export {name}=... before running")
        # an empty value is a slip (`export KEY=` or a failed `$(cat ...)`), never a credential:
        # caught here rather than as a 401 from the host later
        if not env[name].strip():
            raise PlanError(f"`{path}`: environment variable {name} is empty; export {name}=... before running")
        return env[name]

    return _ENV.sub(substitute, value)


def _unwrap(tp: Any) -> Any:
    """`Annotated[T, Meta(...)]` → `T`."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union (`A | B`, `Optional[A]`), or the type itself."""
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, UnionType):
        return tuple(_unwrap(arg) for arg in get_args(tp))
    return (tp,)


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _type_at(root: Any, path: list[str]) -> Any | None:
    """The declared type at a path inside `root` (a Struct), or None where the path leaves the declared types."""
    tp: Any = root
    for part in path:
        step: Any = None
        for member in _members(tp):
            origin = get_origin(member)
            if origin is dict:
                step = get_args(member)[1]
            elif origin is list:
                step = get_args(member)[0]
            elif _is_struct(member):
                step = next((f.type for f in msgspec.structs.fields(member) if f.name == part), None)
            if step is not None:
                break
        if step is None:
            return None
        tp = step
    return tp


def _fields_at(root: Any, path: list[str]) -> list[str] | None:
    """The keys allowed at a path inside `root`, so an unknown-key error can list them."""
    struct = next((m for m in _members(_type_at(root, path)) if _is_struct(m)), None)
    if struct is None:
        return None
    return [f.name for f in msgspec.structs.fields(struct) if f.name != "base_dir"]


def _choices(tp: Any) -> tuple[tuple[Any, ...], bool]:
    """The Literal values a type allows, and whether it also allows something else (a number, say)."""
    values: list[Any] = []
    other = False
    for member in _members(tp):
        if get_origin(member) is Literal:
            values.extend(get_args(member))
        elif member is not type(None):
            other = True
    return tuple(values), other


_ABSENT = object()


def _value_at(raw: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        elif isinstance(raw, list) and part.isdigit() and int(part) < len(raw):
            raw = raw[int(part)]
        else:
            return _ABSENT
    return raw


_SOME_KEY = "\0"


def _name_keys(root: Any, path: list[str], raw: Any) -> list[str]:
    """Fill in the dict keys msgspec leaves out of its error path: the first key whose value does not decode."""
    named: list[str] = []
    for part in path:
        if part == _SOME_KEY:
            table, tp = _value_at(raw, named), _type_at(root, named)
            value_type = next((get_args(m)[1] for m in _members(tp) if get_origin(m) is dict), None)
            part = "<key>"
            if isinstance(table, dict) and value_type is not None:
                for key, value in table.items():
                    try:
                        msgspec.convert(value, value_type)
                    except msgspec.ValidationError:
                        part = str(key)
                        break
        named.append(part)
    return named


def _shown(value: Any, text: str) -> str:
    """The bad value as the user wrote it (from the plan), else as msgspec quoted it."""
    if value is not _ABSENT:
        return repr(value)
    m = re.match(r"Invalid enum value (.+)$", text)
    return m.group(1) if m else "this value"


def explain(err: msgspec.ValidationError, *, root: Any = None, prefix: list[str] | None = None, raw: Any = _ABSENT) -> str:
    """A msgspec error as one line that names the plan key and the fix.

    `root` is the Struct that was being decoded (the Plan unless told), `prefix` its key in the
    plan (e.g. ["mapping"]), `raw` what was decoded, so that the bad value can be quoted."""
    root = Plan if root is None else root
    text = str(err)
    inner: list[str] = []
    m = re.search(r" - at `\$(.*)`$", text)
    if m:
        where = m.group(1).replace("[...]", f".{_SOME_KEY}")  # msgspec does not name dict keys
        where = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", where).lstrip(".")
        inner = _name_keys(root, where.split(".") if where else [], raw)
        text = text[: m.start()]
    parts = [*(prefix or []), *inner]
    where = ".".join(parts)
    if m2 := re.match(r"Object contains unknown field `(.+)`", text):
        key = ".".join([*parts, m2.group(1)])
        allowed = _fields_at(root, inner)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key `{key}`: remove it or fix its spelling{hint}"
    if m2 := re.match(r"Object missing required field `(.+)`", text):
        key = ".".join([*parts, m2.group(1)])
        return f"missing key `{key}`: add it to the plan"
    if where.endswith("platform") or "Invalid value" in text and "platform" in where:
        return f"`{where}`: {text}; known sources: {', '.join(SOURCE_PLATFORMS)}; targets: {', '.join(TARGET_PLATFORMS)}"
    values, other = _choices(_type_at(root, inner)) if inner else ((), False)
    if values:
        bad = _shown(_value_at(raw, inner), text)
        if where.endswith("limits.rate"):
            return (
                f'`{where}`: {bad} is not allowed; give requests per second (a number > 0), "unlimited",'
                " or leave it out to adapt"
            )
        choices = ", ".join(str(v) for v in values)
        if other:  # a Literal beside another type: msgspec's own words say what else fits
            return f"`{where}`: {bad} is not allowed ({text}); it may also be one of: {choices}"
        return f"`{where}`: {bad} is not allowed; choose one of: {choices}"
    return f"`{where or 'plan'}`: {text}"


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
                raise PlanError(explain(exc, root=StreamPlan, prefix=["streams", stream_name], raw=body)) from None
    try:
        plan = msgspec.convert(raw, Plan)
    except msgspec.ValidationError as exc:
        raise PlanError(explain(exc, raw=raw)) from None
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


__all__ = ["Plan", "PlanError", "StreamPlan", "HostLimits", "explain", "load_plan", "parse_plan", "is_loopback"]
