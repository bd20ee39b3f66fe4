"""One audit per experiment at a time: a lock file ``<output_root>/<experiment>/.lock``.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFSv3+)
and holds JSON: pid, hostname, start time, and on Linux the boot id and the process start time,
which tell a live holder from a recycled pid after a crash or a reboot. A second audit of the same
experiment gets :class:`engine.errors.InputError` (exit 2) naming the holder.

A lock whose process is gone (same host, pid not running, a zombie, a different process under a
recycled pid, or a previous boot) is stale: it is taken over with a warning. Two processes may find
the same stale lock at once; the takeover is serialised by a short-lived ``.lock.takeover`` mutex
(also O_EXCL) and removes the old file only if it still holds the bytes judged stale, so exactly one
of them wins and the other then sees a live lock. A lock held on another host cannot be checked from
here and is always treated as live; the message says which file to delete if that host is gone.

Advisory only, like every lock file: it protects auditrun from itself, not from other programs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from engine.atomic import writing
from engine.errors import InputError
from engine.results.record import Record, record

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"

#: A lock file (or takeover mutex) that stays unreadable / held this long belongs to a process that
#: died between creating and filling it: writing a few hundred bytes never takes this long.
_UNREADABLE_GRACE_S = 30.0
#: How long to wait for a just-created lock file to be filled by its creator.
_READ_WAIT_S = 1.0
#: Paths locked by this process: a second ExperimentLock on one of them must not "take over" our own
#: lock just because our pid is alive.
_HELD_HERE: set[str] = set()


@record
class LockFile(Record):
    """The lock file's JSON as :meth:`ExperimentLock._create` writes it; pid and hostname are
    required (a file without them was not written by a finished create)."""

    pid: int
    hostname: str
    started_at: str | None = "?"
    boot_id: str | None = None
    proc_start: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the process that holds it."""

    pid: int
    hostname: str
    started_at: str
    boot_id: str | None
    proc_start: str | None
    raw: bytes


def experiment_lock(experiment_dir: Path, **kwargs) -> "ExperimentLock":
    """The lock of the experiment whose run directories live in ``experiment_dir``."""
    return ExperimentLock(Path(experiment_dir) / LOCK_FILE, **kwargs)


class ExperimentLock:
    """Context manager holding ``path`` for the duration of one audit.

    ``with ExperimentLock(exp_dir / ".lock"): ...`` raises InputError when a live audit holds it.
    After acquiring, ``took_over`` is the stale holder replaced (None if the lock was free).
    """

    def __init__(self, path: Path, *, experiment: str | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.path = Path(path)
        self.experiment = experiment or self.path.parent.name
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._raw: bytes | None = None
        self._owner_pid: int | None = None
        self.took_over: LockHolder | None = None

    # -- public ------------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._raw is not None and self._owner_pid == os.getpid()

    def acquire(self) -> "ExperimentLock":
        key = str(self.path.resolve())
        if key in _HELD_HERE:
            raise InputError(f"experiment {self.experiment} is already being audited by this process "
                             f"(pid {os.getpid()}); lock file {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # each round either wins, raises, or removed a stale lock
            if self._create():
                _HELD_HERE.add(key)
                return self
            holder = self._read_holder()
            if holder is None:
                continue  # vanished between our create and read: try again
            if _alive(holder):
                raise InputError(self._busy_message(holder))
            self._take_over(holder)
        raise InputError(f"could not acquire lock file {self.path}: it keeps being re-created by "
                         "other processes; is another audit of this experiment starting?")

    def release(self) -> None:
        if not self.held:
            return  # never acquired, already released, or we are a forked child
        try:
            if self.path.read_bytes() == self._raw:
                self.path.unlink()
            else:
                log.warning("lock file %s no longer holds this process's lock; left in place", self.path)
        except FileNotFoundError:
            log.warning("lock file %s disappeared while this audit held it", self.path)
        finally:
            self._raw = None
            _HELD_HERE.discard(str(self.path.resolve()))

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------

    def _create(self) -> bool:
        content = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started_at": self._now().astimezone(timezone.utc).isoformat(timespec="seconds"),
            "boot_id": _boot_id(),
            "proc_start": _proc_start(os.getpid()),
            "experiment": self.experiment,
        }
        raw = (json.dumps(content, sort_keys=True) + "\n").encode("utf-8")
        with writing(self.path):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                if os.write(fd, raw) != len(raw):  # a short write: the disk is full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            os.close(fd)
        self._raw, self._owner_pid = raw, os.getpid()
        return True

    def _read_holder(self) -> LockHolder | None:
        """Parse the lock file; wait briefly while its creator is still writing it."""
        deadline = time.monotonic() + _READ_WAIT_S
        while True:
            try:
                raw = self.path.read_bytes()
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            try:
                data = LockFile.from_json(json.loads(raw))
                return LockHolder(int(data.pid), str(data.hostname), str(data.started_at), data.boot_id,
                                  data.proc_start, raw)
            except (ValueError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                if time.time() - mtime > _UNREADABLE_GRACE_S:
                    # Creator died between O_EXCL and write: no pid to check, and nobody will fill it.
                    return LockHolder(-1, socket.gethostname(), "?", None, None, raw)
                raise InputError(f"lock file {self.path} exists but is not readable yet; another audit of "
                                 f"experiment {self.experiment} may be starting. Try again, or delete the "
                                 "file if no audit is running.")
            time.sleep(0.05)

    def _take_over(self, holder: LockHolder) -> None:
        mutex = self.path.with_name(self.path.name + ".takeover")
        deadline = time.monotonic() + 5.0
        while True:
            try:
                fd = os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                try:
                    if time.time() - mutex.stat().st_mtime > _UNREADABLE_GRACE_S:
                        mutex.unlink(missing_ok=True)  # its owner died mid-takeover
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    raise InputError(f"another process is taking over the stale lock {self.path}; "
                                     f"delete {mutex} if none is") from None
                time.sleep(0.02)
        try:
            os.close(fd)
            try:
                still = self.path.read_bytes() == holder.raw
            except FileNotFoundError:
                still = False
            if still:
                self.path.unlink()
                self.took_over = holder
                who = "an unreadable lock" if holder.pid < 0 else \
                    f"pid {holder.pid} on {holder.hostname} (since {holder.started_at})"
                log.warning("taking over stale lock %s of experiment %s: %s is no longer running",
                            self.path, self.experiment, who)
        finally:
            mutex.unlink(missing_ok=True)

    def _busy_message(self, holder: LockHolder) -> str:
        here = socket.gethostname()
        where = "" if holder.hostname == here else f" on host {holder.hostname}"
        hint = ("wait for it to finish" if holder.hostname == here else
                f"it cannot be checked from {here}; if no audit runs there, delete the lock file")
        return (f"experiment {self.experiment} is already being audited by pid {holder.pid}{where} since "
                f"{holder.started_at}; lock file {self.path} ({hint})")


# ------------------------------------------------------------------------------------------------
# Process liveness


def _alive(holder: LockHolder) -> bool:
    """True unless we can tell that the holder's process is gone. Other hosts: always True."""
    if holder.pid < 0:
        return False
    if holder.hostname != socket.gethostname():
        return True
    boot = _boot_id()
    if holder.boot_id and boot and holder.boot_id != boot:
        return False  # written before a reboot
    if holder.pid == os.getpid():
        return False  # our pid, yet this process does not hold it (checked earlier): a recycled pid
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(holder.pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return False  # exited, waiting to be reaped by its parent
        if holder.proc_start is not None and start != holder.proc_start:
            return False  # the pid now belongs to another process
    return True


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat; None off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may contain spaces or ')': split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], fields[19]  # fields 3 (state) and 22 (starttime)


def _proc_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


__all__ = ["ExperimentLock", "LOCK_FILE", "LockHolder", "experiment_lock"]
