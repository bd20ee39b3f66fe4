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
