"""Errors that carry the process exit code the CLI should return.

0 ok, 1 audit gate failed, 2 usage / manifest / input error (DEVELOPERS.md contract).
"""


class AuditrunError(Exception):
    """Base class: a failure we can explain to the user in one message."""

    exit_code = 2


class InputError(AuditrunError):
    """Bad manifest, missing file, unreadable data: the user must fix an input."""

    exit_code = 2


class GateFailed(AuditrunError):
    """The audit ran to the end but at least one gate FAILED."""

    exit_code = 1


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived during a run.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` inside a stage (one
    failed backbone must not sink the others) can swallow it and carry on training.
    """

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        self.exit_code = 128 + self.signum  # the shell's convention for "killed by signal N"
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


class StorageError(BaseException):
    """The output's file system refused a write: full (ENOSPC), over quota (EDQUOT) or read-only
    (EROFS). Raised by engine.atomic, naming the file it was writing.

    A BaseException, like RunInterrupted: a full disk is no one backbone's failure, and the
    per-stage ``except Exception`` that keeps one broken backbone from sinking the others must not
    record it as one (it did, and the run ended as a failed gate, exit 1). The run is marked
    ``failed`` and the CLI exits 2.
    """

    exit_code = 2

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot write {self.path!r}: {reason}; free space there (or choose another output "
                         "folder) and run again; what was written before is kept")


#: Exit code of an internal error (a bug in auditrun, not the user's input): sysexits' EX_SOFTWARE,
#: distinct from 0 (ok), 1 (a gate failed) and 2 (usage or input error).
INTERNAL_ERROR_EXIT = 70


def os_error_message(exc: OSError) -> str:
    """One line naming the path and the reason, e.g. for a read-only output folder."""
    reason = exc.strerror or type(exc).__name__
    if exc.filename is None:
        return f"file system error: {reason}"
    where = repr(str(exc.filename))
    if exc.filename2 is not None:
        where += f" -> {str(exc.filename2)!r}"
    return f"cannot use {where}: {reason} (check that the folder exists and is writable)"
