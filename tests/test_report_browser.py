"""The HTML report opens in headless Chromium with no console message, no failed load, no script error.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in,
fd 4 out, NUL-terminated JSON), which needs no extra Python package and sees what the DevTools
console would show: ``Runtime.consoleAPICalled``, ``Runtime.exceptionThrown`` and ``Log.entryAdded``
(failed resource loads, CSP and security errors). Grepping ``--enable-logging`` output would miss
the failed loads and cannot tell errors from logs.

The same connection injects axe-core (``axe.min.js``, bundled by the ``axe-playwright-python``
package; only the script is used, not Playwright) into the rendered report and fails on any WCAG 2.1
A/AA or best-practice violation.

Skips with the reason when Chromium is not installed (Debian package ``chromium``; ``.ci/run``
installs it), and the axe tests when ``axe-playwright-python`` is not (``pip install -e .[test]``).
"""

from __future__ import annotations

import fcntl
import importlib.util
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
SMOKE = Path(__file__).parent / "fixtures" / "smoke_run"
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


def _load(browser: _DevTools, target_id: str, url: str) -> str:
    """Attach to the tab ``target_id``, load ``url`` in it; return the session id once loaded."""
    session = browser.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]
    for method in ("Runtime.enable", "Log.enable", "Page.enable"):
        browser.send(method, session=session)
    browser.send("Page.navigate", {"url": url}, session=session)
    browser.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
    return session


def open_page(url: str, profile: Path, expression: str | None = None) -> tuple[list[dict], object]:
    """Load ``url``; return (console/log/exception events, value of ``expression`` after load)."""
    browser = _DevTools(CHROMIUM, profile)
    try:
        targets = browser.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = _load(browser, page["targetId"], url)
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


# ------------------------------------------------------------------------------------------------
# axe-core: WCAG 2.1 A/AA and best-practice rules, run in the same Chromium over the same pipe.


def _axe_script() -> Path | None:
    """``axe.min.js`` of the installed ``axe-playwright-python``, found without importing the
    package (its modules import Playwright, which these tests neither need nor use)."""
    try:
        spec = importlib.util.find_spec("axe_playwright_python")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    script = Path(list(spec.submodule_search_locations)[0]) / "axe.min.js"
    return script if script.is_file() else None


AXE_JS = _axe_script()
needs_axe = pytest.mark.skipif(
    AXE_JS is None, reason="axe-core not installed (pip install axe-playwright-python, which bundles axe.min.js)")

AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice")
#: Rules of AXE_TAGS switched off, each with the reason. Empty: every best-practice rule (landmarks,
#: heading order, one <main>, one <h1>...) applies to a report read on screen and by screen readers.
AXE_DISABLED_RULES: dict[str, str] = {}

_AXE_RUN = """(async () => {
  const result = await axe.run(document, %s);
  const nodes = list => list.map(n => ({target: n.target, html: n.html, summary: n.failureSummary}));
  const rule = r => ({id: r.id, impact: r.impact, help: r.help, helpUrl: r.helpUrl, nodes: nodes(r.nodes)});
  return {version: axe.version, violations: result.violations.map(rule), incomplete: result.incomplete.map(rule),
          passes: result.passes.map(r => r.id), inapplicable: result.inapplicable.map(r => r.id)};
})()"""


class AxeBrowser:
    """One headless Chromium that loads pages, each in a fresh tab, and runs axe-core on them."""

    def __init__(self, profile: Path, timeout: float = 120.0):
        self.browser = _DevTools(CHROMIUM, profile, timeout=timeout)
        self.source = AXE_JS.read_text(encoding="utf-8")

    def evaluate(self, session: str, expression: str) -> object:
        reply = self.browser.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                       "returnByValue": True}, session=session)
        if "exceptionDetails" in reply:
            raise RuntimeError("script failed in the page: " + json.dumps(reply["exceptionDetails"])[:1000])
        return reply.get("result", {}).get("value")

    def check(self, url: str) -> dict:
        """axe-core's results for ``url``: {version, violations, incomplete, passes, inapplicable};
        each violation/incomplete rule {id, impact, help, helpUrl, nodes: [{target, html, summary}]}."""
        target = self.browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        try:
            session = _load(self.browser, target, url)
            self.evaluate(session, self.source + "\n;void 0")
            options = {"runOnly": {"type": "tag", "values": list(AXE_TAGS)},
                       "rules": {rule: {"enabled": False} for rule in AXE_DISABLED_RULES}}
            return self.evaluate(session, _AXE_RUN % json.dumps(options))
        finally:
            self.browser.send("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        self.browser.close()


def describe_violations(rules: list[dict], shown: int = 3) -> str:
    """One paragraph per rule: id, impact, help, how many nodes, and the first ``shown`` of them."""
    lines = []
    for rule in rules:
        nodes = rule["nodes"]
        lines.append(f"{rule['id']} [{rule['impact']}] {rule['help']}: {len(nodes)} node(s), {rule['helpUrl']}")
        for node in nodes[:shown]:
            target = " ".join(json.dumps(t) if not isinstance(t, str) else t for t in node["target"])
            lines.append(f"    {target}\n        {node['html'][:240]}")
        if len(nodes) > shown:
            lines.append(f"    ... and {len(nodes) - shown} more")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def axe_browser(tmp_path_factory):
    """One Chromium for every axe test of the module (a launch costs seconds)."""
    if AXE_JS is None:
        pytest.skip("axe-core not installed (pip install axe-playwright-python, which bundles axe.min.js)")
    browser = AxeBrowser(tmp_path_factory.mktemp("axe-profile"))
    yield browser
    browser.close()


@needs_axe
def test_axe_probe_reports_known_violations(tmp_path, axe_browser):
    """Control: a page with an unlabelled image, faint text, a broken table header reference and no
    ``lang`` must fail, or a clean report would prove nothing."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>bad</title></head><body><main><h1>Bad page</h1>'
        '<img id="unlabelled" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
        '<p id="faint" style="color:#eee;background:#fff">hard to read</p>'
        '<table><tr><th id="h">Metric</th></tr><tr><td headers="nowhere">1</td></tr></table>'
        "</main></body></html>", encoding="utf-8")
    result = axe_browser.check(page.as_uri())
    found = {rule["id"] for rule in result["violations"]}
    assert {"image-alt", "color-contrast", "html-has-lang", "td-headers-attr"} <= found, found
    message = describe_violations(result["violations"])
    assert "#unlabelled" in message and "#faint" in message and "hard to read" in message
    assert result["passes"], "axe ran no passing rule at all"


@needs_axe
@pytest.mark.parametrize("fixture", [SMOKE, FIXTURE], ids=["smoke_run", "run_fixture"])
def test_report_has_no_axe_violations(fixture, tmp_path, axe_browser):
    from engine.report import render_report

    from engine.manifest import run_settings

    run = tmp_path / "run"
    shutil.copytree(fixture, run)
    # with the run's settings: the Model facts page and both reporting checklists are checked too
    settings = run_settings(run)
    settings.report.checklists = ["claim-2024", "tripod-ai"]
    html = render_report(run, formats=("html",), now=NOW, settings=settings)["html"]
    assert 'id="checklist-tripod-ai"' in html.read_text(encoding="utf-8")
    result = axe_browser.check(html.as_uri())
    # axe really ran on the report: rules passed (a blank page or a failed injection passes none)
    assert len(result["passes"]) > 10, f"axe {result['version']} passed only {result['passes']}"
    assert result["violations"] == [], (
        f"axe-core {result['version']} ({', '.join(AXE_TAGS)}) finds accessibility violations in "
        f"{fixture.name}'s report:\n" + describe_violations(result["violations"]))
