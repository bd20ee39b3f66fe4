"""docs/tracking-compare.png: MLflow's run comparison of two audits, photographed in headless Chromium.

    .venv/bin/python benchmarks/mlflow_compare_screenshot.py sqlite:///reports/mlflow.db lite0 docs/tracking-compare.png

Starts ``mlflow ui`` on the store, opens the compare view of the experiment's two newest audit
runs, turns on "Show diff only" for params and metrics, scrolls to them and saves the screenshot. Uses the report browser test's DevTools client.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_report_browser import _DevTools, _chromium, _load  # noqa: E402


def main(uri: str, experiment: str, out: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
            if "mlflow.parentRunId" not in r.data.tags][:2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri, "--host",
                           "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        ids = json.dumps([r.info.run_id for r in reversed(runs)])
        url = f"http://127.0.0.1:{port}/#/compare-runs?runs={ids}&experiments={json.dumps([exp.experiment_id])}"
        with tempfile.TemporaryDirectory() as profile:
            browser = _DevTools(_chromium(), Path(profile), timeout=120)
            try:
                page = next(t for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
                session = _load(browser, page["targetId"], "about:blank")
                browser.send("Emulation.setDeviceMetricsOverride", {"width": 1100, "height": 700,
                                                                    "deviceScaleFactor": 1, "mobile": False},
                             session=session)
                _load(browser, page["targetId"], url)
                browser.wait(lambda m: False, seconds=8)

                def js(expression: str):
                    return browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                        session=session).get("result", {}).get("value")

                # the assistant panel hidden, the page scrolled to the params and metrics that differ
                js("document.querySelectorAll('[role=switch]').forEach(s => s.click()); 1")
                browser.wait(lambda m: False, seconds=2)
                js("""(() => { const leaf = text => document.evaluate(`//*[text()[normalize-space()='${text}']]`, document, null,
                          XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue;
                      const panel = leaf('MLflow Assistant');
                      if (panel) { let p = panel; while (p.parentElement && p.parentElement.offsetWidth < 420) p = p.parentElement;
                                   p.style.display = 'none'; }
                      const h = leaf('Parameters'); if (h) h.scrollIntoView({block: 'start'}); })()""")
                browser.wait(lambda m: False, seconds=3)
                shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
                out.write_bytes(base64.b64decode(shot["data"]))
            finally:
                browser.close()
    finally:
        ui.terminate()
        ui.wait(20)
    print(f"{out}: runs {', '.join(r.info.run_name for r in runs)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
