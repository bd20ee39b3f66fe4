"""Failures cannot pass as success (issue 15): a backbone whose training or explanation breaks FAILs the
built-in all_backbones_finished gate (exit 1), and the run is still complete, report included."""

from __future__ import annotations

import json

import pytest

from test_hardening import assets, invoke, manifest  # noqa: F401 - assets is a fixture


def _planted(*_args, **_kwargs):
    raise ZeroDivisionError("planted bug")


def test_a_bug_in_training_exits_1_with_the_report_written(assets, tmp_path, monkeypatch):  # noqa: F811
    import engine.training.train

    monkeypatch.setattr(engine.training.train, "train_head", _planted)
    result = invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "out", "--run-id", "r1")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    assert "FAIL all_backbones_finished" in result.stderr and "planted bug" in result.stderr
    run = tmp_path / "out" / "hard" / "r1"
    results = json.loads((run / "results.json").read_text())
    (entry,) = results["backbones"]
    assert entry["status"] == "failed" and entry["error"].startswith("internal error (a bug in auditrun)")
    assert results["run"]["status"] == "failed"
    assert "ZeroDivisionError" in (run / "traceback-train-tiny.txt").read_text()
    assert "planted bug" in (run / "report.html").read_text()


@pytest.mark.slow
def test_a_bug_in_gradcam_exits_1_with_the_report_and_metrics_kept(assets, tmp_path, monkeypatch):  # noqa: F811
    import engine.explain.gallery

    monkeypatch.setattr(engine.explain.gallery, "explain_backbone", _planted)
    result = invoke(manifest(assets, tmp_path, gradcam=True), "--output-dir", tmp_path / "out", "--run-id", "r1")
    assert result.exit_code == 1, result.output
    assert "FAIL all_backbones_finished" in result.stderr and "explanations failed" in result.stderr
    run = tmp_path / "out" / "hard" / "r1"
    (entry,) = json.loads((run / "results.json").read_text())["backbones"]
    assert entry["status"] == "ok" and entry["test"]["accuracy"] is not None
    assert "planted bug" in entry["gradcam"]["error"]
    page = (run / "report.html").read_text()
    assert "the Grad-CAM stage failed" in page and "planted bug" in page
