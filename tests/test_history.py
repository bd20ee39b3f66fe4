"""History records, the history file, the latest pointer, tables and trends (no TensorFlow)."""

from __future__ import annotations

import csv
import io
import json
import logging

import pytest

from engine.nightly.history import (
    append_record,
    dataset_fingerprint,
    find_reusable,
    history_table,
    previous_record,
    read_history,
    read_latest,
    record_from_results,
    trend,
    write_latest,
)

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def backbone(name, macro_f1, accuracy=None, recall=None, leakage_free=None, status="ok"):
    if status != "ok":
        return {"name": name, "display_name": name, "status": status, "error": "OOM", "validation": None}
    recall = recall or {c: macro_f1 for c in CLASSES}
    test = {"n_images": 100, "accuracy": accuracy if accuracy is not None else macro_f1, "macro_f1": macro_f1,
            "per_class": {c: {"precision": 0.5, "recall": recall[c], "f1": 0.5, "support": 25} for c in CLASSES}}
    entry = {"name": name, "display_name": f"{name} (frozen)", "status": "ok", "error": None,
             "validation": {"accuracy": 0.9, "macro_f1": 0.9}, "test": test}
    if leakage_free is not None:
        entry["leakage_free"] = dict(test, macro_f1=leakage_free, accuracy=leakage_free, n_images=40)
    return entry


def results(run_id, backbones, *, status="ok", manifest="m1", fingerprint="d1", commit="abc", best=None,
            near=10):
    return {
        "schema_version": 1,
        "experiment": {"name": "baseline", "manifest_sha256": manifest, "seed": 1},
        "run": {"id": run_id, "started_at": f"2025-01-0{run_id[-1]}T02:00:00+00:00",
                "finished_at": f"2025-01-0{run_id[-1]}T03:00:00+00:00", "status": status},
        "environment": {"auditrun": "0.1.0", "git_commit": commit},
        "data": {"class_names": CLASSES, "fingerprint": fingerprint,
                 "counts": {"test": {c: 25 for c in CLASSES}}},
        "integrity": {"cross_split_near": near, "cross_split_exact": 2},
        "best_backbone": {"name": best or backbones[0]["name"]} if backbones else None,
        "backbones": backbones,
    }


def test_record_keeps_headline_metrics_and_leakage_free_twins():
    r = results("run-1", [backbone("ResNet50", 0.91, accuracy=0.93, leakage_free=0.80,
                                   recall={"glioma": 0.7, "meningioma": 0.8, "no_tumor": 1.0, "pituitary": 0.95}),
                          backbone("VGG16", None, status="failed")])
    rec = record_from_results(r)
    assert rec["run_id"] == "run-1"
    assert rec["manifest_sha256"] == "m1" and rec["dataset_fingerprint"] == "d1"
    assert rec["code_version"] == {"auditrun": "0.1.0", "git_commit": "abc"}
    assert rec["leakage_fraction"] == pytest.approx(0.1)
    res = rec["backbones"]["ResNet50"]
    assert res["test"]["accuracy"] == 0.93 and res["test"]["macro_f1"] == 0.91
    assert res["test"]["recall"]["glioma"] == 0.7
    assert res["leakage_free"]["macro_f1"] == 0.80
    assert rec["backbones"]["VGG16"] == {"display_name": "VGG16", "status": "failed", "validation_macro_f1": None,
                                         "test": None, "leakage_free": None}
    json.dumps(rec, allow_nan=False)  # storable as one JSON line


def test_record_without_leakage_free_block_has_none_twin():
    rec = record_from_results(results("run-1", [backbone("A", 0.8)]))
    assert rec["backbones"]["A"]["leakage_free"] is None


def test_append_and_read_round_trip(tmp_path):
    for i, f1 in ((1, 0.9), (2, 0.85)):
        append_record(tmp_path, record_from_results(results(f"run-{i}", [backbone("A", f1)])))
    records = read_history(tmp_path)
    assert [r["run_id"] for r in records] == ["run-1", "run-2"]
    assert records[1]["backbones"]["A"]["test"]["macro_f1"] == 0.85
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2


def test_read_history_missing_file_is_empty(tmp_path):
    assert read_history(tmp_path / "nothing") == []


def test_torn_last_line_is_skipped_and_next_append_is_not_swallowed(tmp_path, caplog):
    append_record(tmp_path, {"run_id": "run-1", "status": "ok"})
    with open(tmp_path / "history.jsonl", "ab") as fh:
        fh.write(b'{"run_id": "run-2", "sta')  # a writer killed mid-line
    with caplog.at_level(logging.WARNING):
        assert [r["run_id"] for r in read_history(tmp_path)] == ["run-1"]
    assert "torn" in caplog.text
    append_record(tmp_path, {"run_id": "run-3", "status": "ok"})
    assert [r["run_id"] for r in read_history(tmp_path)] == ["run-1", "run-3"]


def test_rerecorded_run_keeps_its_last_record(tmp_path):
    append_record(tmp_path, {"run_id": "run-1", "status": "partial"})
    append_record(tmp_path, {"run_id": "run-2", "status": "ok"})
    append_record(tmp_path, {"run_id": "run-1", "status": "ok"})  # resumed and finished
    records = read_history(tmp_path)
    assert [(r["run_id"], r["status"]) for r in records] == [("run-2", "ok"), ("run-1", "ok")]


def test_latest_pointer(tmp_path):
    assert read_latest(tmp_path) is None
    write_latest(tmp_path, "run-1")
    write_latest(tmp_path, "run-2")
    assert read_latest(tmp_path) == "run-2"
    assert (tmp_path / "latest").read_text() == "run-2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]  # no temporary file left behind
    with pytest.raises(ValueError):
        write_latest(tmp_path, "../escape")


def test_dataset_fingerprint_is_order_and_separator_independent_and_sensitive():
    files = [("Training/glioma/a.jpg", 10, 111), ("Testing/glioma/b.jpg", 20, 222)]
    fp = dataset_fingerprint(files)
    assert fp == dataset_fingerprint(list(reversed(files)))
    assert fp == dataset_fingerprint([("Training\\glioma\\a.jpg", 10, 111), ("Testing\\glioma\\b.jpg", 20, 222)])
    assert fp != dataset_fingerprint([("Training/glioma/a.jpg", 11, 111), ("Testing/glioma/b.jpg", 20, 222)])
    assert fp != dataset_fingerprint([("Training/glioma/a.jpg", 10, 112), ("Testing/glioma/b.jpg", 20, 222)])
    assert fp != dataset_fingerprint(files[:1])
    assert len(fp) == 64


def _records(*f1s, leakage_free=None):
    return [record_from_results(results(f"run-{i}", [backbone("ResNet50", f1, leakage_free=lf)]))
            for i, (f1, lf) in enumerate(zip(f1s, leakage_free or [None] * len(f1s)), start=1)]


def test_trend_fell_rose_unchanged_sentences():
    recs = _records(0.91, 0.86)
    t = trend(recs, "run-2")
    assert t["previous_run_id"] == "run-1"
    assert "ResNet50 macro-F1 fell from 0.91 to 0.86." in t["sentences"]
    assert t["backbones"]["ResNet50"]["delta"]["macro_f1"] == pytest.approx(-0.05)
    assert "rose from 0.86 to 0.91" in " ".join(trend(_records(0.86, 0.91), "run-2")["sentences"])
    assert "ResNet50 macro-F1 unchanged at 0.91." in trend(_records(0.912, 0.908), "run-2")["sentences"]


def test_trend_series_over_last_n_and_leakage_free_sentence():
    recs = _records(0.5, 0.6, 0.7, 0.8, leakage_free=[0.4, 0.5, 0.6, 0.55])
    t = trend(recs, "run-4", last_n=3)
    assert [r["run_id"] for r in t["runs"]] == ["run-2", "run-3", "run-4"]
    assert t["backbones"]["ResNet50"]["series"] == [0.6, 0.7, 0.8]
    assert t["backbones"]["ResNet50"]["leakage_free_series"] == [0.5, 0.6, 0.55]
    assert "ResNet50 leakage-free macro-F1 fell from 0.60 to 0.55." in t["sentences"]


def test_trend_first_run_and_failed_previous_run_skipped():
    t = trend(_records(0.9), "run-1")
    assert t["previous_run_id"] is None and t["backbones"]["ResNet50"]["delta"]["macro_f1"] is None
    assert "first recorded run" in t["sentences"][0]
    recs = _records(0.9, 0.8)
    recs.insert(1, record_from_results(results("run-9", [backbone("ResNet50", None, status="failed")],
                                               status="failed")))
    assert trend(recs, "run-2")["previous_run_id"] == "run-1"


def test_trend_failed_new_and_removed_backbones_and_input_changes():
    prev = record_from_results(results("run-1", [backbone("A", 0.9), backbone("B", 0.8)]))
    cur = record_from_results(results("run-2", [backbone("A", None, status="failed"), backbone("C", 0.7)],
                                      status="partial", best="C", fingerprint="d2"))
    t = trend([prev, cur], "run-2")
    text = " ".join(t["sentences"])
    assert "A failed in this run; its previous macro-F1 was 0.90." in text
    assert "B was not part of this run" in text
    assert "C has no previous result to compare with; macro-F1 is 0.70." in text
    assert "the data has changed" in text
    assert t["inputs_changed"] == {"manifest": False, "data": True, "code": False}
    assert t["backbones"]["A"]["series"] == [0.9, None]


def test_trend_requires_current_run():
    with pytest.raises(ValueError):
        trend(_records(0.9), "run-7")


def test_previous_record_and_find_reusable():
    recs = _records(0.9, 0.8, 0.7)
    assert previous_record(recs, "run-3")["run_id"] == "run-2"
    assert previous_record(recs, "new-run")["run_id"] == "run-3"  # gates run before the append
    assert previous_record(recs, "run-1") is None
    current = {"manifest_sha256": "m1", "dataset_fingerprint": "d1",
               "code_version": {"auditrun": "0.1.0", "git_commit": "abc"}}
    assert find_reusable(recs, current)["run_id"] == "run-3"
    assert find_reusable(recs, dict(current, dataset_fingerprint="d2")) is None
    assert find_reusable(recs, dict(current, code_version={"auditrun": "0.1.0", "git_commit": "def"})) is None
    assert find_reusable(recs, dict(current, dataset_fingerprint=None)) is None


def test_history_table_formats():
    recs = [record_from_results(results("run-1", [backbone("A", 0.9, leakage_free=0.7), backbone("B", 0.8)],
                                        best="B"))]
    recs[0]["gates"] = {"PASS": 3, "WARN": 0, "FAIL": 1, "status": "FAIL"}
    rows = list(csv.DictReader(io.StringIO(history_table(recs, "csv"))))
    assert [(r["run_id"], r["backbone"], r["best"]) for r in rows] == [("run-1", "A", "False"), ("run-1", "B", "True")]
    assert float(rows[0]["macro_f1"]) == 0.9 and float(rows[0]["lf_macro_f1"]) == 0.7 and rows[1]["lf_macro_f1"] == ""
    assert float(rows[0]["recall_glioma"]) == 0.9
    assert rows[0]["gates"] == "1 FAIL 3 PASS"
    table = history_table(recs, "table")
    assert "run-1" in table and "0.900" in table and "0.700" in table and "best" in table
    assert json.loads(history_table(recs, "json")) == recs
    assert "no runs" in history_table([], "table")
    with pytest.raises(ValueError):
        history_table(recs, "xml")
