"""history.jsonl records as a typed HistoryRecord (issue 27): every record the writer produces reads
back into the typed record and writes out unchanged, and the nightly readers take either form."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engine.nightly.gates import GatesConfig, evaluate_gates
from engine.nightly.history import (append_record, find_reusable, history_table, leakage_counts, previous_record,
                                    read_history, record_from_results, trend)
from engine.results import HistoryRecord, RunResults, as_history_record
from test_history import CLASSES, backbone, results

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "results.json").read_text(encoding="utf-8"))


def _writer_records() -> list[dict]:
    """Records of every shape record_from_results writes: failed and finished backbones, with and
    without leakage-free twins and gates, an empty run, and the shipped fixture runs."""
    gated = results("run-3", [backbone("A", 0.8)])
    gated["gates"] = {"summary": {"PASS": 2, "WARN": 0, "FAIL": 1, "status": "FAIL"}, "gates": []}
    no_test = results("run-4", [backbone("A", 0.7)])
    del no_test["data"]["counts"]
    return [record_from_results(r) for r in (
        results("run-1", [backbone("A", 0.91, leakage_free=0.8), backbone("B", None, status="failed")]),
        results("run-2", [], status="failed"),
        gated,
        no_test,
        _fixture("run_fixture"),
        _fixture("smoke_run"),
    )]


@pytest.mark.parametrize("index", range(6))
def test_every_written_record_round_trips(index):
    record = _writer_records()[index]
    typed = HistoryRecord.from_json(record)
    assert typed.to_json() == record
    assert json.dumps(typed.to_json(), sort_keys=True) == json.dumps(record, sort_keys=True)


def test_record_from_typed_results_equals_record_from_dict():
    data = _fixture("run_fixture")
    assert record_from_results(RunResults.from_json(copy.deepcopy(data))) == record_from_results(data)
    assert leakage_counts(RunResults.from_json(data)) == leakage_counts(data)


def test_unknown_keys_of_a_newer_writer_survive():
    record = dict(record_from_results(results("run-1", [backbone("A", 0.9)])), comment="from 2027")
    record["backbones"]["A"]["test"]["top5"] = 0.99
    assert HistoryRecord.from_json(record).to_json() == record


def test_readers_take_typed_records_and_dicts_alike(tmp_path):
    dicts = [record_from_results(results(f"run-{i}", [backbone("A", 0.9 - i / 100)])) for i in (1, 2)]
    typed = [HistoryRecord.from_json(r) for r in dicts]
    assert trend(typed, "run-2") == trend(dicts, "run-2")
    assert history_table(typed, "csv") == history_table(dicts, "csv")
    assert history_table(typed, "json") == history_table(dicts, "json")
    assert previous_record(typed, "run-2") is typed[0] and previous_record(dicts, "run-2") is dicts[0]
    assert find_reusable(typed, dicts[1]) is typed[1]
    for record in typed:
        append_record(tmp_path, record)
    assert read_history(tmp_path) == dicts
    assert as_history_record(typed[0]) is typed[0]


def test_gates_take_typed_results_and_history():
    previous = record_from_results(results("run-1", [backbone("A", 0.9)]))
    now = results("run-2", [backbone("A", 0.8)])
    config = GatesConfig(min_macro_f1=0.5, max_macro_f1_drop=0.05, max_leakage_fraction=0.2,
                         min_recall={c: 0.5 for c in CLASSES})
    assert (evaluate_gates(RunResults.from_json(now), config, HistoryRecord.from_json(previous))
            == evaluate_gates(now, config, previous))
