"""tqdm bars, one per stream, with totals where the source reports them."""

from __future__ import annotations

import sys

from tqdm import tqdm


class TqdmProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}

    def start(self, stream: str, total: int | None, done: int) -> None:
        if not self.enabled or stream in self.bars:
            return
        self.bars[stream] = tqdm(
            total=total, initial=done, desc=f"{stream:<13}", unit="rec", position=len(self.bars),
            file=sys.stderr, dynamic_ncols=True, leave=True,
        )

    def advance(self, stream: str, n: int = 1) -> None:
        bar = self.bars.get(stream)
        if bar is not None:
            bar.update(n)

    def set_total(self, stream: str, total: int | None) -> None:
        bar = self.bars.get(stream)
        if bar is not None and total is not None and bar.total != total:
            bar.total = total
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
