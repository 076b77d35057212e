"""A progress line for long evaluations: rows done, rate and, where the total is known, percent and ETA."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts rows and shows a status line on `stream` at most every `interval` seconds.

    On a terminal the line is rewritten in place; in a log (not a TTY) each
    status is a line of its own, at most every 10 * interval seconds.

        progress = Progress("imagenet2012", total=50_000)
        progress.update(256)   # after each batch
        progress.close()       # the final line, with the total time
    """

    def __init__(self, name: str, total: int | None = None, stream: TextIO = sys.stderr, interval: float = 2.0):
        self.name, self.total, self.stream, self.interval = name, total, stream, interval
        self.done = 0
        self._start = self._shown = time.perf_counter()
        self._terminal = hasattr(stream, "isatty") and stream.isatty()
        if not self._terminal:
            self.interval *= 10

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if now - self._shown >= self.interval:
            self._shown = now
            self.stream.write(("\r" if self._terminal else "") + self.line(now - self._start) + ("" if self._terminal else "\n"))
            self.stream.flush()

    def close(self, done: int | None = None) -> None:
        """Writes the final line; `done` corrects the count where updates were estimates."""
        self.done = self.done if done is None else done
        self.stream.write(("\r" if self._terminal else "") + self.line(time.perf_counter() - self._start, final=True) + "\n")
        self.stream.flush()

    def line(self, elapsed: float, final: bool = False) -> str:
        """e.g. "imagenet2012: 12,800/50,000 images (25.6%), 310 images/s, ETA 2m00s"."""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total else "")
        text = f"{self.name}: {count} images"
        if self.total and not final:
            text += f" ({100 * self.done / self.total:.1f}%)"
        text += f", {rate:,.0f} images/s"
        if final:
            return text + f", {_duration(elapsed)}"
        if self.total and rate > 0:
            text += f", ETA {_duration(max(self.total - self.done, 0) / rate)}"
        return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
