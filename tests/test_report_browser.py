"""The HTML report opens in headless Chromium with no console message, no failed load, no script error.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in,
fd 4 out, NUL-terminated JSON), which needs no extra Python package and sees what the DevTools
console would show: ``Runtime.consoleAPICalled``, ``Runtime.exceptionThrown`` and ``Log.entryAdded``
(failed resource loads, CSP and security errors). Grepping ``--enable-logging`` output would miss
the failed loads and cannot tell errors from logs.

Skips with the reason when Chromium is not installed (Debian package ``chromium``; ``.ci/run``
installs it).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"
NOW = datetime(2025, 3, 1, 6, 0, tzinfo=timezone.utc)
PROBLEM_EVENTS = ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")


def _chromium() -> str | None:
    for candidate in (os.environ.get("AUDITRUN_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install chromium, or set AUDITRUN_CHROMIUM)")


def _high_fd(fd: int) -> int:
    """Duplicate ``fd`` above 9 (close-on-exec) and close the original, so that the child's
    dup2 onto 3 and 4 never hits the same number (a no-op dup2 would keep close-on-exec)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class _DevTools:
    """A headless Chromium and a minimal DevTools-protocol client over the debugging pipe."""

    def __init__(self, chromium: str, profile: Path, timeout: float = 60.0):
        to_child_r, self._to_child = (_high_fd(fd) for fd in os.pipe())
        self._from_child, from_child_w = (_high_fd(fd) for fd in os.pipe())

        def child_fds() -> None:
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            # Not close_fds: it runs after preexec_fn and would close 3 and 4 again. Our other pipe
            # ends are close-on-exec, so the browser inherits nothing else.
            preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self._buffer = b""
        self._id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        wanted = self._id
        reply = self.wait(lambda m: m.get("id") == wanted)
        if "error" in reply:
            raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait(self, predicate, seconds: float | None = None) -> dict | None:
        """Read messages (keeping every event) until one matches; None when ``seconds`` pass."""
        stop = min(self.deadline, time.monotonic() + seconds) if seconds is not None else self.deadline
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if predicate(message):
                    return message
            left = stop - time.monotonic()
            if left <= 0:
                if seconds is not None:
                    return None
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 0.25))
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe (did it start?)")
                self._buffer += chunk

    def close(self) -> None:
        try:
            os.write(self._to_child, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass


def open_page(url: str, profile: Path, expression: str | None = None) -> tuple[list[dict], object]:
    """Load ``url``; return (console/log/exception events, value of ``expression`` after load)."""
    browser = _DevTools(CHROMIUM, profile)
    try:
        targets = browser.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = browser.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            browser.send(method, session=session)
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait(lambda m: m.get("method") == "Page.loadEventFired")
        browser.wait(lambda m: False, seconds=0.5)  # late messages (image decode errors) arrive after load
        value = None
        if expression:
            result = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                  session=session)
            value = result.get("result", {}).get("value")
        problems = [e for e in browser.events if e.get("method") in PROBLEM_EVENTS]
        return problems, value
    finally:
        browser.close()


def _describe(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Log.entryAdded":
            out.append(f"{p['entry'].get('level')}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif e["method"] == "Runtime.consoleAPICalled":
            out.append(f"console.{p.get('type')}: " + " ".join(str(a.get("value")) for a in p.get("args", [])))
        else:
            out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
    return out


def test_probe_sees_console_errors_and_failed_loads(tmp_path):
    """Control: the probe must be able to fail, or a clean report would prove nothing."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html lang="en"><head><title>t</title></head><body>'
                    '<img src="missing.png" alt="missing"><script>console.error("boom"); undefinedName();</script>'
                    "</body></html>", encoding="utf-8")
    events, _ = open_page(page.as_uri(), tmp_path / "profile")
    text = "\n".join(_describe(events))
    assert "boom" in text
    assert "ERR_FILE_NOT_FOUND" in text
    assert any(e["method"] == "Runtime.exceptionThrown" for e in events)


def test_report_opens_in_chromium_without_console_errors(tmp_path):
    from engine.report import render_report

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    html = render_report(run, formats=("html",), now=NOW)["html"]
    # Move the HTML away from the run directory: it must not need any file beside it.
    alone = tmp_path / "mailed" / "report.html"
    alone.parent.mkdir()
    shutil.copy(html, alone)
    expression = ("JSON.stringify({title: document.title, lang: document.documentElement.lang, "
                  "images: document.images.length, "
                  "broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length})")
    events, value = open_page(alone.as_uri(), tmp_path / "profile", expression)
    assert events == [], "console problems:\n" + "\n".join(_describe(events))
    state = json.loads(value)
    assert state["lang"] == "en"
    assert state["title"] == "Audit report: sartaj-baseline"
    assert state["images"] > 10
    assert state["broken"] == 0, "some embedded images did not decode"
