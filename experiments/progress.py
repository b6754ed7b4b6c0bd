"""Progress on stderr for anything that takes more than a moment.

On a terminal: a tqdm bar that disappears when done. Elsewhere (a log file,
CI, a pipe): plain lines, one when a stage starts and then one every
``interval_s`` seconds, so that a long run in a batch job still shows that
it is alive and how far it got -- and nothing is printed for work that
finishes quickly.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(n)`` as work is done, ``close()`` at the end."""

    def __init__(self, total: int, desc: str, unit: str, *, initial: int = 0,
                 stream: TextIO | None = None, interval_s: float = 10.0, enabled: bool = True):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.enabled = enabled
        self._bar = None
        self._start = self._last = time.monotonic()
        if not enabled:
            return
        if _is_tty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=self.stream,
                             leave=False, mininterval=0.5)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        share = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"pagesim: {self.desc}: {self.n:,}/{self.total:,} {self.unit}{share}, "
              f"{now - self._start:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and time.monotonic() - self._start >= self.interval_s:
            self._line(time.monotonic())     # a long stage ends with its final count
        self.enabled = False


def stage(text: str, stream: TextIO | None = None) -> None:
    """One line naming a preparation step that may take a while."""
    print(f"pagesim: {text}", file=stream if stream is not None else sys.stderr, flush=True)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
