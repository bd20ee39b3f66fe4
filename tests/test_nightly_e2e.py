"""Nightly audits end to end (issue 6): history and trend over two runs with a fixed clock, a failing
regression gate (exit 1, run directory complete, JUnit), the per-experiment lock between two real
processes (exit 2), and resuming a killed run without retraining its finished backbone.

Everything runs on tiny synthetic phantoms (32 px) with a tiny CNN backbone file trained for an
epoch or two, so the numbers are weak but real; the tests check what the engine does with them.
"""

from __future__ import annotations

import html as html_mod
import json
import logging
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from engine.cli import main

from conftest import assert_reads_back_unchanged, write_manifest, trains

REPO = Path(__file__).resolve().parents[1]
CLOCK_1 = datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc)
CLOCK_2 = datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc)


def tiny_backbone(path: Path, filters=(8, 16, 32)) -> Path:
    """A small CNN feature extractor saved as a .keras file (a user-supplied backbone)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = inp
    for f in filters:
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(filters[-1], 3, padding="same", activation="relu", name="last_conv")(x)
    keras.Model(inp, x, name="tiny").save(path)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Small phantom dataset (24 per class, 64 px) and two backbone files: a tiny CNN and a wider one."""
    from engine.data.synth import write_dataset

    tmp = tmp_path_factory.mktemp("nightly")
    write_dataset(tmp / "data", per_class=24, size=64, seed=5)
    tiny_backbone(tmp / "tiny.keras")
    tiny_backbone(tmp / "wide.keras", filters=(32, 64, 128))
    return tmp


def manifest_text(assets: Path, name: str, *, epochs: int = 1, learning_rate: float = 0.003, input_size: int = 32,
                  extra: str = "", backbones: str | None = None) -> str:
    backbones = backbones or f"""
[[backbones]]
name = "tiny"
file = "tiny.keras"
preprocessing = "unit"
input_size = {input_size}
train_backbone = true
"""
    return f"""
[experiment]
name = "{name}"
seed = 7
[data]
root = "{assets / 'data'}"
[training]
epochs = {epochs}
batch_size = 8
learning_rate = {learning_rate}
early_stopping_patience = 5
{backbones}
[gradcam]
enabled = false
[evaluation]
bootstrap_resamples = 200
[report]
formats = ["html"]
{extra}
"""


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Two nightly runs with a fixed clock: history and trend


@pytest.fixture(scope="module")
@trains
def two_runs(assets):
    """Run 1 (1 epoch) and run 2 (8 epochs, so the metrics can move) of one experiment at 64 px; the
    run ids come from the fixed clock."""
    from engine import manifest as manifest_mod
    from engine.nightly.history import read_history
    from engine.pipeline import run_audit

    out = assets / "out"
    outcomes = []
    for clock, epochs in ((CLOCK_1, 1), (CLOCK_2, 8)):
        path = write_manifest(assets / "nightly.toml", manifest_text(assets, "nightly", epochs=epochs, input_size=64))
        outcomes.append(run_audit(manifest_mod.load(path), output_dir=out, now=lambda c=clock: c))
    exp_dir = out / "nightly"
    return exp_dir, outcomes, read_history(exp_dir)


def test_two_runs_append_two_history_records_with_fixed_clock(two_runs):
    from engine.nightly.history import read_latest

    exp_dir, (first, second), records = two_runs
    assert first.status == "ok" and second.status == "ok"
    assert [first.run_dir.name, second.run_dir.name] == ["20260101T020000Z", "20260102T020000Z"]
    assert [r["run_id"] for r in records] == ["20260101T020000Z", "20260102T020000Z"]
    assert [r["started_at"] for r in records] == [CLOCK_1.isoformat(), CLOCK_2.isoformat()]
    assert [r["finished_at"] for r in records] == [CLOCK_1.isoformat(), CLOCK_2.isoformat()]
    assert read_latest(exp_dir) == "20260102T020000Z"
    for record, outcome in zip(records, (first, second)):
        results = _results(outcome.run_dir)
        assert record["status"] == results["run"]["status"] == "ok"
        assert record["backbones"]["tiny"]["test"]["macro_f1"] == results["backbones"][0]["test"]["macro_f1"]
        assert record["dataset_fingerprint"] == results["data"]["fingerprint"]
    # same files on disk -> same fingerprint; the epochs changed -> a different manifest hash
    assert records[0]["dataset_fingerprint"] == records[1]["dataset_fingerprint"]
    assert records[0]["manifest_sha256"] != records[1]["manifest_sha256"]


def test_second_run_trend_compares_with_first(two_runs):
    from engine.nightly.history import _moved

    _, (first, second), records = two_runs
    trend = _results(second.run_dir)["trend"]
    assert trend["current_run_id"] == "20260102T020000Z"
    assert trend["previous_run_id"] == "20260101T020000Z"
    assert [r["run_id"] for r in trend["runs"]] == ["20260101T020000Z", "20260102T020000Z"]
    was = records[0]["backbones"]["tiny"]["test"]
    now = records[1]["backbones"]["tiny"]["test"]
    block = trend["backbones"]["tiny"]
    assert block["previous"]["macro_f1"] == was["macro_f1"] and block["current"]["macro_f1"] == now["macro_f1"]
    assert block["delta"]["macro_f1"] == pytest.approx(now["macro_f1"] - was["macro_f1"])
    assert block["delta"]["accuracy"] == pytest.approx(now["accuracy"] - was["accuracy"])
    assert block["series"] == [was["macro_f1"], now["macro_f1"]]
    assert _moved("tiny macro-F1", was["macro_f1"], now["macro_f1"], 2) in trend["sentences"]
    assert trend["inputs_changed"] == {"manifest": True, "data": False, "code": False}
    assert "Since the previous run the manifest has changed." in trend["sentences"]
    # the first run had nothing to compare with, and says so
    first_trend = _results(first.run_dir)["trend"]
    assert first_trend["previous_run_id"] is None
    assert first_trend["sentences"][0].startswith("This is the first recorded run")


def test_second_report_shows_the_deltas(two_runs):
    _, (_, second), records = two_runs
    page = html_mod.unescape((second.run_dir / "report.html").read_text(encoding="utf-8"))
    section = page[page.index('id="gates-h"'):page.index('id="ethics-h"')]
    assert "<th scope=\"row\">Report generated</th><td>2026-01-02 02:00 UTC</td>" in page  # the run's clock
    assert "Trend against earlier runs" in section
    assert "Compared with the previous run <code>20260101T020000Z</code>" in section
    for sentence in _results(second.run_dir)["trend"]["sentences"]:
        assert f"<li>{sentence}</li>" in section
    was = records[0]["backbones"]["tiny"]["test"]["macro_f1"]
    now = records[1]["backbones"]["tiny"]["test"]["macro_f1"]
    row = section[section.index('<td>macro-F1</td>'):]
    row = row[:row.index("</tr>")]
    assert f"{now - was:+.3f}" in row
    assert f"<td class=\"num\">{was:.3f}</td><td class=\"num\">{now:.3f}</td>" in row
    # the trend plot (embedded) with its alt text stating both values
    assert f"Line chart of test macro-F1 over the last 2 runs: tiny from {was:.2f} (run 20260101T020000Z) " \
           f"to {now:.2f} (run 20260102T020000Z)" in section


def test_history_command_lists_both_runs_as_csv(two_runs):
    import io

    exp_dir, _, records = two_runs
    result = CliRunner().invoke(main, ["history", str(exp_dir), "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table["run_id"]) == ["20260101T020000Z", "20260102T020000Z"]
    assert list(table["backbone"]) == ["tiny", "tiny"]
    assert list(table["macro_f1"]) == pytest.approx([r["backbones"]["tiny"]["test"]["macro_f1"] for r in records])
    assert list(table["status"]) == ["ok", "ok"]


# ------------------------------------------------------------------------------------------------
# A failing gate: exit 1, FAIL on stderr, run directory complete, JUnit XML


@pytest.fixture(scope="module")
@trains
def gated_run(assets):
    # A learning rate of 1e-6 leaves the CNN at its random start: macro-F1 far below the 0.99 minimum.
    path = write_manifest(assets / "gated.toml", manifest_text(assets, "gated", learning_rate=1e-6, extra="""
[gates]
min_macro_f1 = 0.99
min_accuracy = 0.0
"""))
    junit = assets / "gates.xml"
    result = CliRunner().invoke(main, [str(path), "--output-dir", str(assets / "out"), "--run-id", "g1",
                                       "--junit", str(junit), "--quiet"])
    return assets / "out" / "gated" / "g1", result, junit


def test_gate_above_achieved_macro_f1_exits_1_with_fail_on_stderr(gated_run):
    run_dir, result, _ = gated_run
    assert result.exit_code == 1, result.output
    results = _results(run_dir)
    achieved = results["backbones"][0]["test"]["macro_f1"]
    assert achieved < 0.99
    gate = next(g for g in results["gates"]["gates"] if g["name"] == "min_macro_f1")
    assert gate["status"] == "FAIL" and gate["value"] == achieved and gate["threshold"] == 0.99
    # min_accuracy and the built-in all_backbones_finished pass
    assert results["gates"]["summary"] == {"PASS": 2, "WARN": 0, "FAIL": 1, "status": "FAIL"}
    assert "FAIL min_macro_f1[tiny]" in result.stderr
    assert "audit gate FAILED" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)  # stdout: the run directory only


def test_failed_gate_leaves_run_directory_complete(gated_run):
    from engine.nightly.history import read_history, read_latest

    run_dir, _, _ = gated_run
    results = _results(run_dir)
    assert results["run"]["status"] == "ok" and results["run"]["finished_at"]
    entry = results["backbones"][0]
    assert (run_dir / entry["artifacts"]["model"]).is_file()
    predictions = pd.read_csv(run_dir / entry["artifacts"]["predictions"])
    assert len(predictions) == sum(results["data"]["counts"]["test"].values())
    assert (run_dir / "manifest.toml").is_file()
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "min_macro_f1" in page and "status-FAIL" in page
    records = read_history(run_dir.parent)
    assert [r["run_id"] for r in records] == ["g1"]
    assert records[0]["gates"]["FAIL"] == 1
    assert read_latest(run_dir.parent) == "g1"


def test_junit_lists_each_gate_with_one_failure(gated_run):
    _, _, junit = gated_run
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert sorted(c.get("name") for c in cases) == ["all_backbones_finished", "min_accuracy[tiny]",
                                                    "min_macro_f1[tiny]"]
    failures = root.findall(".//failure")
    assert len(failures) == 1
    assert "below the minimum 0.990" in failures[0].get("message")
    assert root.find("testsuite").get("failures") == "1"


# ------------------------------------------------------------------------------------------------
# Two processes: the lock refuses a second audit; a killed audit resumes without retraining


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                TF_CPP_MIN_LOG_LEVEL="2")


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:  # a file, not a pipe: a full pipe would stall the audit
        return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=_env(),
                                stdout=fh, stderr=subprocess.STDOUT)


def _lock_content(lock: Path) -> dict | None:
    """The lock file's JSON once its creator has written it (it is created empty, then filled)."""
    try:
        return json.loads(lock.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the audit exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _first_backbone_ok(run_dir: Path) -> bool:
    try:
        entries = _results(run_dir)["backbones"]  # written atomically: never half a file
    except FileNotFoundError:
        return False
    return any(e["name"] == "fast" and e["status"] == "ok" for e in entries)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
@trains
def interrupted(assets):
    """Start an audit of two backbones in a subprocess; while it holds the lock start a second one;
    SIGKILL the first right after its fast backbone is saved; then resume it in this process."""
    path = write_manifest(assets / "resume.toml", manifest_text(assets, "resumable", backbones="""
[[backbones]]
name = "fast"
file = "tiny.keras"
preprocessing = "unit"
input_size = 32
train_backbone = true

[[backbones]]
name = "slow"
file = "wide.keras"
preprocessing = "unit"
input_size = 96
train_backbone = true
"""))
    out = assets / "out"
    exp_dir, run_dir = out / "resumable", out / "resumable" / "r1"
    lock = exp_dir / ".lock"
    state: dict = {"run_dir": run_dir, "lock": lock}
    first = _spawn([str(path), "--output-dir", str(out), "--run-id", "r1"], assets / "first.log")
    try:
        state["lock_holder"] = _wait_for(lambda: _lock_content(lock), first, assets / "first.log",
                                         "the lock file appeared")
        second = subprocess.run([sys.executable, "-m", "engine.cli", str(path), "--output-dir", str(out),
                                 "--run-id", "r2"], cwd=REPO, env=_env(), capture_output=True, text=True,
                                timeout=120)
        state["second"] = second
        state["second_while_first_alive"] = first.poll() is None
        _wait_for(lambda: _first_backbone_ok(run_dir), first, assets / "first.log", "the first backbone finished")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    state["first_pid"], state["first_rc"] = first.pid, first.returncode
    killed = _results(run_dir)
    state["killed_results"] = killed
    fast = next(e for e in killed["backbones"] if e["name"] == "fast")
    model = run_dir / fast["artifacts"]["model"]
    state["fast_model"] = (model, model.read_bytes(), model.stat().st_mtime_ns)
    state["lock_before_resume"] = json.loads(lock.read_text()) if lock.is_file() else None
    state["history_before_resume"] = (exp_dir / "history.jsonl").is_file()

    handler = _Records()
    logging.getLogger("engine.nightly.lock").addHandler(handler)
    try:
        state["resume"] = CliRunner().invoke(main, [str(path), "--resume", str(run_dir)])
    finally:
        logging.getLogger("engine.nightly.lock").removeHandler(handler)
    state["lock_warnings"] = handler.messages
    return state


def test_second_audit_of_same_experiment_exits_2_naming_the_lock(interrupted):
    second = interrupted["second"]
    assert interrupted["second_while_first_alive"]
    assert interrupted["lock_holder"]["pid"] == interrupted["first_pid"]
    assert second.returncode == 2, second.stderr
    assert "already being audited" in second.stderr
    assert str(interrupted["lock"]) in second.stderr
    assert f"pid {interrupted['lock_holder']['pid']}" in second.stderr
    assert not (interrupted["run_dir"].parent / "r2").exists()  # refused before touching anything


def test_killed_run_left_first_backbone_only_and_a_stale_lock(interrupted):
    assert interrupted["first_rc"] == -signal.SIGKILL
    killed = interrupted["killed_results"]
    assert killed["run"]["status"] == "running"
    assert [e["name"] for e in killed["backbones"]] == ["fast"], "the slow backbone finished before the kill"
    assert interrupted["lock_before_resume"] == interrupted["lock_holder"]  # nobody removed it
    assert not interrupted["history_before_resume"]  # an unfinished run is not recorded


def test_resume_takes_over_stale_lock_and_does_not_retrain_finished_backbone(interrupted):
    from engine.nightly.history import read_history

    result, run_dir = interrupted["resume"], interrupted["run_dir"]
    assert result.exit_code == 0, result.output
    assert "backbone fast: finished in the interrupted run; not retrained" in result.stderr
    assert "backbone slow: loading" in result.stderr and "backbone fast: loading" not in result.stderr
    assert any("taking over stale lock" in m and str(interrupted["lock_holder"]["pid"]) in m
               for m in interrupted["lock_warnings"])
    assert not interrupted["lock"].exists()  # released after the resumed run

    model, data, mtime = interrupted["fast_model"]
    assert model.read_bytes() == data and model.stat().st_mtime_ns == mtime

    results = _results(run_dir)
    assert results["run"]["status"] == "ok" and results["run"]["resumed"] is True
    by_name = {e["name"]: e for e in results["backbones"]}
    assert list(by_name) == ["fast", "slow"]
    assert by_name["slow"]["status"] == "ok" and (run_dir / by_name["slow"]["artifacts"]["model"]).is_file()
    before = next(e for e in interrupted["killed_results"]["backbones"] if e["name"] == "fast")
    for key, value in before.items():  # the finished entry (history, metrics, timings) is kept as it was
        assert by_name["fast"][key] == value, key
    assert results["run"]["started_at"] == interrupted["killed_results"]["run"]["started_at"]
    # wall time counts the interrupted part too, not only the resumed one
    spent_before = interrupted["killed_results"]["run"]["active_s"]
    assert spent_before >= by_name["fast"]["timings"]["total_s"] * 0.9
    assert results["run"]["active_s_before_resume"] == spent_before
    assert results["run"]["wall_time_s"] >= spent_before + by_name["slow"]["timings"]["total_s"] * 0.9
    records = read_history(run_dir.parent)
    assert [r["run_id"] for r in records] == ["r1"] and records[0]["status"] == "ok"
    assert set(records[0]["backbones"]) == {"fast", "slow"}
    assert (run_dir / "report.html").is_file()


def test_a_second_runs_trend_and_gates_read_into_the_typed_tree_unchanged(two_runs):
    _, (first, second), _ = two_runs
    typed = assert_reads_back_unchanged(json.loads((second.run_dir / "results.json").read_text()))
    assert typed.trend.previous_run_id == first.run_dir.name and typed.gates.gates
