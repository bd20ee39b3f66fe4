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


#: Exit code of an internal error (a bug in auditrun, not the user's input): sysexits' EX_SOFTWARE,
#: distinct from 0 (ok), 1 (a gate failed) and 2 (usage or input error).
INTERNAL_ERROR_EXIT = 70
