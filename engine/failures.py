"""What a stage records when an exception stopped it: the user's problem said as it is, a bug said
as a bug with its traceback kept in the run folder (every stage and workflow words them alike)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Callable

from engine.atomic import storage_problem, write_text
from engine.errors import InputError, StorageError, os_error_message
from engine.paths import slug


def _unchanged(message: str) -> str:
    return message


def failure_message(exc: BaseException, what: str, run_dir: Path,
                    redact: Callable[[str], str] = _unchanged) -> str:
    """What a per-backbone stage records when ``exc`` stopped it.

    An input or file-system error is the user's to fix and is said as it is; anything else is a
    bug in auditrun, said as such, with its traceback kept in the run folder for the bug report.
    """
    reason = storage_problem(exc, run_dir)
    if reason is not None:  # a full disk is the whole run's failure, not this stage's
        raise StorageError(getattr(exc, "filename", None) or run_dir, reason) from None
    if isinstance(exc, InputError):
        return redact(str(exc))
    if isinstance(exc, OSError):
        return redact(os_error_message(exc))
    name = f"traceback-{slug(what)}.txt"
    where = f"traceback in {name}" if save_traceback(run_dir, name, exc) else "the traceback could not be saved"
    return redact(f"internal error (a bug in auditrun) {type(exc).__name__}: {exc} ({where})")


def save_traceback(run_dir: Path, name: str, exc: BaseException) -> Path | None:
    """Keep ``exc``'s whole traceback in the run folder for the bug report; None when it cannot be
    written (a full disk must not replace the bug it was reporting)."""
    try:
        return write_text(run_dir / name, "".join(traceback.format_exception(exc)))
    except OSError:
        return None
