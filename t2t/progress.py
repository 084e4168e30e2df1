"""Progress of a long tool (evaluation sweeps, token labelling, export checks): done / total, a rate and an ETA.

On a terminal the line is redrawn in place (at most a few times a second); when the stream is not a
terminal (a log file, a pipe, a batch job) a plain line is written every `every_seconds` (or every
`every_updates` updates) and at the end, through `logger` when one is given, so logs stay readable.
Counting is host-side only (batch sizes), never a device sync.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import IO, Optional

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """H:MM:SS, or '?' for an unknown (infinite or NaN) duration."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """`update(n)` after each piece of work; `close()` (or the end of a `with` block) writes the last line."""

    def __init__(self, total: Optional[int], what: str, *, unit: str = "images", stream: Optional[IO[str]] = None,
                 enabled: bool = True, every_seconds: float = 30.0, every_updates: Optional[int] = None,
                 redraw_seconds: float = 0.2, logger: Optional[logging.Logger] = None, clock=time.monotonic) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = redraw_seconds if self.tty else every_seconds
        self.every_updates = None if self.tty else every_updates
        self.logger = logger
        self.clock = clock
        self.done = 0
        self.updates = 0
        self.start = clock()
        self._last_write = self.start
        self._width = 0  # of the line on the terminal, to blank what a shorter line leaves
        self._closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self) -> str:
        """'what: done/total unit (pct), rate unit/s, eta H:MM:SS' (no total: no percentage, no ETA)."""
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            return (f"{self.what}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%), "
                    f"{rate:.1f} {self.unit}/s, eta {format_duration(eta)}")
        return f"{self.what}: {self.done} {self.unit}, {rate:.1f} {self.unit}/s, {format_duration(elapsed)} elapsed"

    def update(self, n: int = 1) -> None:
        self.done += n
        self.updates += 1
        now = self.clock()
        due = self.updates % self.every_updates == 0 if self.every_updates else now - self._last_write >= self.every
        if self.enabled and due:
            self._write(final=False)
            self._last_write = now

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and (self.done or self.tty):
            self._write(final=True)

    def _write(self, final: bool) -> None:
        text = self.line()
        if self.tty:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        elif self.logger is not None:
            self.logger.info("%s", text)
            return
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
