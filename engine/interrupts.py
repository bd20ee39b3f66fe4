"""SIGTERM and SIGINT during a run: raised at once outside TensorFlow, at the next batch inside it.

An exception raised from a signal handler lands at whatever bytecode the main thread runs next.
Inside Keras' ``fit`` or a tf.data iterator that can be anywhere in TensorFlow's own Python, half
way through handing a native resource over; once (fresh-clone CI, 2026-12-07) glibc aborted with
"free(): invalid next size" right after a SIGTERM in the first epoch, before the run was marked
interrupted. So, while a run is ``deferred()`` (its training, evaluation and explanation stages),
the handler only records the signal, and ``check()``, called at every batch boundary (each
progress update, the Keras callbacks, the explanation loops), raises ``RunInterrupted`` there,
between two batches, in auditrun's own code. A second signal raises at once, for a user who will
not wait for the batch to end.

Outside ``deferred()`` (discovery, the integrity audit: no TensorFlow) the handler raises at once,
as before. Only the main thread installs the handler (signal's rule); ``check()`` anywhere is cheap.
"""

from __future__ import annotations

import contextlib
import signal

from engine.errors import RunInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_depth = 0  # nesting of deferred() regions
_pending: int | None = None  # the signal that arrived during one, not yet acted on


def handler(signum, _frame) -> None:
    """The signal handler: defer inside ``deferred()``, unless a signal is already waiting."""
    global _pending
    if _depth and _pending is None:
        _pending = int(signum)
        return
    _pending = None
    raise RunInterrupted(signum)


def pending() -> int | None:
    """The signal waiting to be acted on at the next batch boundary, if any."""
    return _pending


def check() -> None:
    """Raise ``RunInterrupted`` for a signal that arrived since the last check."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise RunInterrupted(signum)


@contextlib.contextmanager
def deferred():
    """Signals in this region wait for ``check()``; one still waiting at its end is raised there."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    check()


class installed:
    """``handler`` on SIGTERM and SIGINT for the ``with`` block; the previous handlers after it."""

    def __enter__(self):
        global _pending
        _pending = None
        self.previous = {}
        for signum in SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: leave the defaults
                pass
        return self

    def __exit__(self, *exc):
        global _pending
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        _pending = None
        return False
