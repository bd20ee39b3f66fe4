"""Shapes of results.json blocks that older runs wrote: the report still reads them, now through the
typed blocks of engine.results (issue 27)."""

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

from engine.report.model import build_report
from engine.results import RunResults

SMOKE = json.loads((Path(__file__).parent / "fixtures" / "smoke_run" / "results.json").read_text(encoding="utf-8"))
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _report(results):
    assert RunResults.from_json(results).to_json() == results  # the legacy shape survives a round trip
    return build_report(copy.deepcopy(results), now=NOW)


def test_flat_trend_form_gives_deltas_and_series():
    results = copy.deepcopy(SMOKE)
    name = results["backbones"][0]["name"]
    results["trend"] = {"previous_run_id": "r0", "sentences": ["s"],
                        "deltas": {name: {"accuracy": {"previous": 0.5, "current": 0.6}, "macro_f1": 3},
                                   "gone": {"macro_f1": {"previous": 0.5, "current": 0.4, "delta": -0.1}}},
                        "series": {"gone": [{"run_id": "r0", "macro_f1": 0.5}, {"run_id": "r1"}]}}
    trend = _report(results).trend
    shown = results["backbones"][0].get("display_name") or name
    assert [(d.backbone, d.metric, d.delta) for d in trend.deltas] == [(shown, "accuracy", "+0.100"),
                                                                        ("gone", "macro-F1", "-0.100")]
    assert trend.series == {"gone": [("r0", 0.5), ("r1", None)]}
    assert trend.previous_run_id == "r0" and trend.sentences == ["s"]


def test_label_conflicts_named_by_paths_and_a_list_near_count():
    results = copy.deepcopy(SMOKE)
    integrity = results["integrity"]
    integrity["label_conflicts"] = [{"paths": ["a", "b"], "classes": ["x", "y"]}, ["c", "d"],
                                    {"files": [{"path": "p", "split": "t"}, {"split": "t"}]}]
    integrity["cross_split_near"] = [1, 2, 3]
    view = _report(results).integrity
    assert view.conflicts == ["classes x, y; files a, b", "c, d", "files p, {'split': 't'}"]
    assert ("Test images with a near duplicate in training (exact copies included)", "3") in view.rows


def test_external_pointing_game_as_a_bare_rate():
    results = copy.deepcopy(SMOKE)
    name = results["backbones"][0]["name"]
    results["external"] = [{"data": "ext", "backbones": [
        {"name": name, "pointing_game": 0.4},
        {"name": "other", "pointing_game": {"hits": 2, "total": 3, "rate": 0.667}}]}]
    (view,) = _report(results).external
    assert [r.pointing_game for r in view.rows] == ["0.40", "2 of 3 (0.67)"]
    assert view.rows[1].display_name == "other"
