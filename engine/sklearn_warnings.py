"""scikit-learn's warnings, held back where the engine calls scikit-learn.

On small data scikit-learn warns about cases the engine already handles (a class absent from a
subset, a confusion matrix of one label, a fold the logistic fit did not converge on). Printed raw
they land between the progress lines as multi-line tracebacks that say nothing about the audit.
Each stage wraps only its own scikit-learn calls in ``hold_back()`` and decides what a warning means
for its figures: dropped, or kept as a note in results.json and a ``warning:`` line. A process-wide
``warnings.filterwarnings`` would also hide them from everything else that imports the engine
(tests, notebooks), so there is none.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import PurePath
from typing import Iterator

__all__ = ["hold_back"]


def _from_sklearn(w: warnings.WarningMessage) -> bool:
    # sklearn's own categories (UndefinedMetricWarning, ConvergenceWarning, ...) or a plain
    # UserWarning raised from inside the sklearn package
    return w.category.__module__.startswith("sklearn") or "sklearn" in PurePath(w.filename or "").parts


@contextlib.contextmanager
def hold_back() -> Iterator[list[str]]:
    """Catch the warnings scikit-learn raises inside the block; yield the list their messages land in.

    The list is filled when the block ends: each distinct message once, as ``"Category: message"``,
    in the order first seen. Warnings from anything other than scikit-learn are re-issued unchanged,
    so the caller's filters still decide about them. Not thread-safe (``warnings.catch_warnings`` is
    not); the stages that use it run on the main thread.
    """
    messages: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        for w in caught:
            if _from_sklearn(w):
                text = f"{w.category.__name__}: {str(w.message).strip()}"
                if text not in messages:
                    messages.append(text)
            else:  # outside catch_warnings again: the caller's filters apply
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
