"""Summarise a py-spy `--format raw` profile (collapsed stacks) as markdown tables.

    python benchmarks/profile_summary.py benchmarks/out/profile-migrator.txt

Three views: on-CPU time by layer (each sample goes to the layer of its innermost frame), the
migrator functions with the largest inclusive share, and the hottest innermost frames.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

# (layer, path fragment) in match order: the first fragment found in the frame's file wins
LAYERS: tuple[tuple[str, str], ...] = (
    ("ledger (SQLite calls and commits)", "migrator/ledger.py"),
    ("HostClient (migrator/http.py)", "migrator/http.py"),
    ("engine (migrator/engine.py)", "migrator/engine.py"),
    ("Civica connector", "platforms/civica/"),
    ("Damstra connector", "platforms/damstra/"),
    ("mapping", "mappings/"),
    ("other migrator code", "migrator/"),
    ("aiohttp client", "aiohttp/"),
    ("yarl / multidict (URLs, headers)", "yarl/"),
    ("yarl / multidict (URLs, headers)", "multidict/"),
    ("anyio (task groups, streams, events)", "anyio/"),
    ("asyncio event loop and sockets", "asyncio/"),
    ("asyncio event loop and sockets", "selectors.py"),
    ("msgspec / orjson", "msgspec/"),
)
ANYWHERE: tuple[tuple[str, str], ...] = (
    ("the ledger (migrator/ledger.py)", "migrator/ledger.py"),
    ("HostClient.request and below (migrator/http.py)", "migrator/http.py"),
    ("SQLite commits (Ledger.commit)", "Ledger.commit"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _parse(line: str) -> tuple[list[tuple[str, str]], int] | None:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        frames.append((m.group("func"), m.group("file")) if m else (raw, ""))
    return frames, int(count)


def _layer(file: str) -> str:
    for name, frag in LAYERS:
        if frag in file:
            return name
    return "other (interpreter, stdlib)"


def _short(func: str, file: str) -> str:
    file = re.sub(r"^.*/site-packages/", "", file)
    file = re.sub(r"^.*/lib/python3\.\d+/", "", file)
    file = re.sub(r"^.*/(migrator|mappings)/", r"\1/", file)
    return f"`{func}` ({file})"


def summarize(path: str | Path, top: int = 12) -> str:
    layers: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, n = parsed
        total += n
        func, file = frames[-1]
        layers[_layer(file)] += n
        self_time[_short(func, file)] += n
        for label, frag in ANYWHERE:
            if any(frag in file or frag in func for func, file in frames):
                anywhere[label] += n
        seen = set()
        for func, file in frames:
            if "migrator/" in file or "mappings/" in file:
                key = _short(func, file)
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += n
    if not total:
        return "(the profile holds no samples)"

    def pct(n: int) -> str:
        return f"{n / total * 100:.1f}%"

    out = [f"{total:,} samples.", "", "| on-CPU time by layer (innermost frame) | share |", "|---|---:|"]
    out += [f"| {k} | {pct(v)} |" for k, v in layers.most_common()]
    out += ["", "| samples with this anywhere on the stack | share |", "|---|---:|"]
    out += [f"| {label} | {pct(anywhere[label])} |" for label, _ in ANYWHERE]
    out += ["", "| migrator function (inclusive: itself and everything it calls) | share |", "|---|---:|"]
    skip = ("`<module>`", "`main`", "`cmd_run`", "`run` (migrator/api.py)")
    shown = [(k, v) for k, v in inclusive.most_common() if not k.startswith(skip)][:top]
    out += [f"| {k} | {pct(v)} |" for k, v in shown]
    out += ["", "| hottest innermost frames (self time) | share |", "|---|---:|"]
    out += [f"| {k} | {pct(v)} |" for k, v in self_time.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
