"""Progress per stream: tqdm bars on a terminal, plain periodic lines when stderr is a log.

A bar redraws itself with carriage returns and cursor-up escapes many times a second: right for
a person watching a terminal, ~18 KB of noise per 1,000 records in a log file. So when stderr
is not a terminal, each stream prints one line every `interval` seconds and one when it ends.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

PLAIN_INTERVAL = 10.0


class _Bars:
    """One tqdm bar per stream, with totals where the source reports them."""

    def __init__(self, out: TextIO):
        self.out = out
        self.bars: dict[str, tqdm] = {}
        self.finished: set[str] = set()

    def start(self, stream: str, total: int | None, done: int) -> None:
        if stream in self.bars or stream in self.finished:
            return
        self.bars[stream] = tqdm(
            total=total, initial=done, desc=f"{stream:<13}", unit="rec", position=len(self.bars) + len(self.finished),
            file=self.out, dynamic_ncols=True, leave=True,
        )

    def advance(self, stream: str, n: int) -> None:
        bar = self.bars.get(stream)
        if bar is not None:
            bar.update(n)

    def set_total(self, stream: str, total: int | None) -> None:
        bar = self.bars.get(stream)
        if bar is not None and total is not None and bar.total != total:
            bar.total = total
            bar.refresh()

    def finish(self, stream: str) -> None:
        bar = self.bars.pop(stream, None)
        if bar is not None:
            bar.close()
            self.finished.add(stream)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class _StreamCount:
    __slots__ = ("total", "done", "first", "started", "last_line")

    def __init__(self, total: int | None, done: int, now: float):
        self.total, self.done, self.first = total, done, done
        self.started = self.last_line = now


class _Lines:
    """`progress: users 4,000/10,000 (40%) 812 rec/s`, per stream every `interval` s and at its end."""

    def __init__(self, out: TextIO, interval: float):
        self.out, self.interval = out, interval
        self.streams: dict[str, _StreamCount] = {}
        self.finished: set[str] = set()

    def start(self, stream: str, total: int | None, done: int) -> None:
        if stream not in self.streams and stream not in self.finished:
            self.streams[stream] = _StreamCount(total, done, time.monotonic())

    def advance(self, stream: str, n: int) -> None:
        count = self.streams.get(stream)
        if count is None:
            return
        count.done += n
        now = time.monotonic()
        if now - count.last_line >= self.interval:
            count.last_line = now
            self._line(stream, count, now, "")

    def set_total(self, stream: str, total: int | None) -> None:
        count = self.streams.get(stream)
        if count is not None and total is not None:
            count.total = total

    def finish(self, stream: str) -> None:
        count = self.streams.pop(stream, None)
        if count is not None:
            self.finished.add(stream)
            self._line(stream, count, time.monotonic(), ", stream finished")

    def close(self) -> None:
        # streams that never reached finish(): the run stopped (or they were done before it began)
        for stream, count in self.streams.items():
            self._line(stream, count, time.monotonic(), "")
        self.streams.clear()

    def _line(self, stream: str, count: _StreamCount, now: float, tail: str) -> None:
        done = f"{count.done:,}"
        if count.total:
            done += f"/{count.total:,} ({min(100, count.done * 100 // count.total)}%)"
        elapsed = now - count.started
        rate = (count.done - count.first) / elapsed if elapsed > 0 else 0.0
        print(f"progress: {stream} {done} {rate:,.0f} rec/s{tail}", file=self.out, flush=True)


class ConsoleProgress:
    """The engine's `Progress` for the command line: bars on a terminal, lines in a log, nothing when quiet.

    `tty` picks the form for tests; by default it follows `out.isatty()` (stderr).
    """

    def __init__(
        self, enabled: bool = True, *, tty: bool | None = None, out: TextIO | None = None,
        interval: float = PLAIN_INTERVAL,
    ):
        self.enabled = enabled
        out = out or sys.stderr
        if tty is None:
            tty = out.isatty()
        self.view: _Bars | _Lines = _Bars(out) if tty else _Lines(out, interval)

    def start(self, stream: str, total: int | None, done: int) -> None:
        if self.enabled:
            self.view.start(stream, total, done)

    def advance(self, stream: str, n: int = 1) -> None:
        if self.enabled:
            self.view.advance(stream, n)

    def set_total(self, stream: str, total: int | None) -> None:
        if self.enabled:
            self.view.set_total(stream, total)

    def finish(self, stream: str) -> None:
        """The stream has ended: close its bar now (or print its last line), not at the end of the run."""
        if self.enabled:
            self.view.finish(stream)

    def close(self) -> None:
        if self.enabled:
            self.view.close()


TqdmProgress = ConsoleProgress  # the name `migrator run` and the demo know it by
