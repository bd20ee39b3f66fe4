"""The per-experiment lock, with real second processes (no TensorFlow)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.nightly.lock import ExperimentLock, experiment_lock

REPO = Path(__file__).resolve().parents[1]

# Holds the lock until stdin closes; prints "locked" once it has it, "busy" if refused.
HOLDER = """
import sys
from engine.errors import InputError
from engine.nightly.lock import ExperimentLock
try:
    with ExperimentLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
except InputError:
    print("busy", flush=True)
"""


def _spawn(code, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def _holder(lock_path):
    proc = _spawn(HOLDER, lock_path)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _write_lock(path, **fields):
    content = {"pid": 999_999_999, "hostname": socket.gethostname(), "started_at": "2025-01-01T02:00:00+00:00",
               "boot_id": None, "proc_start": None, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_second_process_is_refused_while_first_holds(tmp_path):
    lock_path = tmp_path / "baseline" / ".lock"
    proc = _holder(lock_path)
    try:
        with pytest.raises(InputError) as info:
            ExperimentLock(lock_path).acquire()
        message = str(info.value)
        assert f"experiment baseline is already being audited by pid {proc.pid} since" in message
        assert str(lock_path) in message
        assert info.value.exit_code == 2
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not lock_path.exists()  # released on exit
    with ExperimentLock(lock_path) as lock:
        assert lock.held and lock.took_over is None
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert not lock_path.exists()


def test_lock_of_killed_process_is_taken_over(tmp_path, caplog):
    lock_path = tmp_path / "exp" / ".lock"
    proc = _holder(lock_path)
    proc.send_signal(signal.SIGKILL)  # no chance to release
    proc.wait(timeout=30)
    assert lock_path.exists()
    with caplog.at_level(logging.WARNING):
        with experiment_lock(tmp_path / "exp") as lock:
            assert lock.took_over.pid == proc.pid
            assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert "taking over stale lock" in caplog.text and str(proc.pid) in caplog.text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombie detection reads /proc")
def test_zombie_holder_counts_as_dead(tmp_path):
    lock_path = tmp_path / "exp" / ".lock"
    proc = _holder(lock_path)
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with ExperimentLock(lock_path) as lock:  # the pid still exists, but as an unreaped zombie
            assert lock.took_over.pid == proc.pid
    finally:
        proc.wait(timeout=30)


def test_stale_lock_with_dead_pid_and_recycled_pid(tmp_path):
    lock_path = tmp_path / "exp" / ".lock"
    _write_lock(lock_path)  # pid far beyond pid_max: not running
    with ExperimentLock(lock_path) as lock:
        assert lock.took_over.pid == 999_999_999
    # A live pid (our parent) whose recorded start time is not the running process's: recycled pid.
    _write_lock(lock_path, pid=os.getppid(), proc_start="1")
    if Path(f"/proc/{os.getppid()}/stat").exists():
        with ExperimentLock(lock_path) as lock:
            assert lock.took_over.pid == os.getppid()
    else:
        with pytest.raises(InputError):
            ExperimentLock(lock_path).acquire()


def test_live_pid_and_other_host_are_respected(tmp_path):
    lock_path = tmp_path / "exp" / ".lock"
    _write_lock(lock_path, pid=os.getppid())  # alive, no start time to contradict it
    with pytest.raises(InputError, match=f"pid {os.getppid()} since 2025-01-01"):
        ExperimentLock(lock_path).acquire()
    _write_lock(lock_path, hostname="some-other-host")  # dead pid, but we cannot check another host
    with pytest.raises(InputError, match="on host some-other-host .*delete the lock file"):
        ExperimentLock(lock_path).acquire()
    assert json.loads(lock_path.read_text())["hostname"] == "some-other-host"  # untouched


def test_same_process_cannot_acquire_twice(tmp_path):
    lock_path = tmp_path / ".lock"
    with ExperimentLock(lock_path):
        with pytest.raises(InputError, match="by this process"):
            ExperimentLock(lock_path).acquire()
        assert lock_path.exists()
    assert not lock_path.exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock_path = tmp_path / ".lock"
    lock = ExperimentLock(lock_path).acquire()
    _write_lock(lock_path, pid=12345)  # someone replaced it (e.g. a wrong manual takeover)
    lock.release()
    assert json.loads(lock_path.read_text())["pid"] == 12345


def test_unreadable_fresh_lock_is_busy_and_old_one_is_stale(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.nightly.lock._READ_WAIT_S", 0.05)
    lock_path = tmp_path / ".lock"
    lock_path.write_bytes(b"")  # a creator between O_EXCL and its write
    with pytest.raises(InputError, match="not readable yet"):
        ExperimentLock(lock_path).acquire()
    old = time.time() - 3600
    os.utime(lock_path, (old, old))  # ... that died long ago
    with ExperimentLock(lock_path) as lock:
        assert lock.took_over.pid == -1


RACER = """
import sys, time
from pathlib import Path
from engine.errors import InputError
from engine.nightly.lock import ExperimentLock
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
try:
    with ExperimentLock(sys.argv[1]):
        print("won", flush=True)
        time.sleep(1.0)
except InputError:
    print("lost", flush=True)
"""


def test_racing_takeover_of_one_stale_lock_has_one_winner(tmp_path):
    lock_path = tmp_path / "exp" / ".lock"
    _write_lock(lock_path)
    go = tmp_path / "go"
    racers = [_spawn(RACER, lock_path, go) for _ in range(4)]
    assert [p.stdout.readline().strip() for p in racers] == ["ready"] * 4  # all at the start line
    go.touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["lost", "lost", "lost", "won"]
    assert not lock_path.exists()
