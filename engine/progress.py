"""Progress a person can wait on: images/s and an ETA for long passes over images.

A terminal gets one line rewritten in place (``\\r``); a log file or CI console gets a full line at
most every ``interval`` seconds (10 by default, ``AUDITRUN_PROGRESS_INTERVAL`` overrides), so logs
stay short. ``--quiet`` silences it: the run's echo carries ``quiet = True`` and :func:`silent`
reads it. No TensorFlow import here (the training epochs' Keras callback lives in training/train.py).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from engine import interrupts

DEFAULT_INTERVAL_S = 10.0


def silent(echo) -> bool:
    """True when progress must not print: no echo, or an echo marked quiet (cli ``--quiet``)."""
    return echo is None or bool(getattr(echo, "quiet", False))


def _interval() -> float:
    raw = os.environ.get("AUDITRUN_PROGRESS_INTERVAL")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:  # a malformed override must not stop a run; the default is safe
        return DEFAULT_INTERVAL_S


def _duration(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Fed ``update(n_done)`` with a running count of ``total`` images; ``close()`` when finished."""

    def __init__(self, label: str, total: int, *, quiet: bool = False, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float | None = None, unit: str = "images"):
        self.label, self.total, self.quiet, self.unit = label, max(0, int(total)), quiet, unit
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.interval = _interval() if interval is None else interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = self.last = clock()
        self.done, self.width = 0, 0

    @classmethod
    def for_echo(cls, echo, label: str, total: int, **kw) -> "Progress":
        return cls(label, total, quiet=silent(echo), **kw)

    def line(self) -> str:
        elapsed = max(self.clock() - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        return f"  {self.label}: {self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s, ETA {eta}"

    def update(self, done: int) -> None:
        interrupts.check()  # a batch boundary: where a deferred SIGTERM/SIGINT is acted on
        self.done = min(int(done), self.total) if self.total else int(done)
        if self.quiet:
            return
        now = self.clock()
        if self.tty:
            text = self.line()
            self.stream.write("\r" + text.ljust(self.width))
            self.width = max(self.width, len(text))
            self.stream.flush()
        elif now - self.last >= self.interval and self.done < self.total:
            # the finished pass is reported by its caller's own line; only the waiting shows here
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        """Clears a terminal line so the next message starts at column 0."""
        if self.tty and not self.quiet and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False



class counted:
    """``with counted(echo, label) as progress:`` gives a ``progress(done, total)`` callback (the
    integrity audit's) that drives one Progress line, made at the first call once the total is known."""

    def __init__(self, echo, label: str):
        self.echo, self.label, self.line = echo, label, None

    def __call__(self, done: int, total: int) -> None:
        if self.line is None:
            self.line = Progress.for_echo(self.echo, self.label, total)
        self.line.update(done)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.line is not None:
            self.line.close()
        return False


class Timer:
    """Prints one line per finished step with its wall time."""

    def __init__(self, echo, label: str, sink: dict | None = None, key: str | None = None):
        self.echo, self.label, self.sink, self.key = echo, label, sink, key

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.elapsed = time.perf_counter() - self.t0
        if self.sink is not None and self.key:
            self.sink[self.key] = round(self.elapsed, 2)
        if exc_type is None:
            self.echo(f"done: {self.label} ({self.elapsed:.1f}s)")
        return False
