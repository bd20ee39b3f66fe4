"""Typed results: BackboneResult is the one serializer of a backbone's entry in results.json."""

from __future__ import annotations

from engine.results import OPTIONAL_BLOCKS, BackboneResult, WeightsInfo


def _result(**kw) -> BackboneResult:
    return BackboneResult(name="b", display_name="B", architecture="file", source="file", file="b.keras",
                          input_size=64, weights=WeightsInfo("imagenet", "file", ""), **kw)


def test_unmeasured_blocks_are_absent_and_measured_ones_serialised():
    d = _result().to_dict()
    assert not set(OPTIONAL_BLOCKS) & set(d)
    assert d["input_size"] == [64, 64] and d["weights"] == {"requested": "imagenet", "used": "file", "note": ""}
    d = _result(calibration={"ece_before": 0.1}, gradcam={"error": "x"}).to_dict()
    assert d["calibration"] == {"ece_before": 0.1} and d["gradcam"] == {"error": "x"}
    assert "uncertainty" not in d and "leakage_free" not in d


def test_round_trip_keeps_every_key_including_unknown_ones():
    original = _result(leakage_free={"accuracy": 0.5}, uncertainty={"test": {}}).to_dict()
    original["from_a_newer_writer"] = {"kept": True}
    again = BackboneResult.from_dict(original)
    assert again.leakage_free.accuracy == 0.5 and again.input_size == 64
    assert again.extra == {"from_a_newer_writer": {"kept": True}}
    assert again.to_dict() == original


# ------------------------------------------------------------------------------ the typed tree (issue 27)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from conftest import assert_reads_back_unchanged  # noqa: E402
from engine.results import Integrity, Metrics, Record, RunResults, as_run_results, optional, record  # noqa: E402

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*/results.json"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.parent.name for p in FIXTURES])
def test_every_fixture_reads_into_the_typed_tree_and_back_unchanged(path):
    typed = assert_reads_back_unchanged(json.loads(path.read_text()))
    b = typed.backbones[0]
    assert isinstance(b.test, Metrics) and isinstance(b.test.accuracy, float)
    assert isinstance(typed.integrity, Integrity)
    assert typed.class_names == typed.data.class_names and typed.class_names


def test_nested_blocks_are_typed_and_absent_keys_read_as_defaults():
    typed = RunResults.from_json({"schema_version": 1, "experiment": {"name": "e", "seed": 1},
                                  "run": {"id": "r", "status": "ok", "started_at": "t"}, "environment": {},
                                  "backbones": [{"name": "b", "status": "ok", "input_size": [32, 32],
                                                 "test": {"accuracy": 0.5, "per_class": {"a": {"f1": 0.25}}},
                                                 "gradcam": {"items": [{"files": {"overlay": "o.png"}}]}}],
                                  "best_backbone": None, "timings": {}})
    b = typed.backbones[0]
    assert b.input_size == 32 and b.test.per_class["a"].f1 == 0.25 and b.test.per_class["a"].recall is None
    assert b.gradcam.items[0].files == {"overlay": "o.png"} and b.gradcam.pointing_game is None
    assert b.calibration is None and b.subgroups is None and typed.gates is None
    assert typed.display_names() == {"b": "b"} and typed.finished() == [b]


def test_a_block_a_stage_sets_later_is_written_and_an_unset_one_stays_absent():
    typed = RunResults.from_json({"schema_version": 1, "backbones": [{"name": "b"}]})
    assert typed.to_json() == {"schema_version": 1, "backbones": [{"name": "b"}]}
    typed.backbones[0].display_name = "B"
    typed.backbones[0].calibration = {"ece_before": 0.1}  # a stage's own dict serialises as it is
    assert typed.to_json()["backbones"] == [{"name": "b", "display_name": "B", "calibration": {"ece_before": 0.1}}]


def test_unknown_keys_are_kept_at_every_level_after_the_declared_ones():
    doc = {"schema_version": 1, "newer": 1,
           "backbones": [{"name": "b", "test": {"accuracy": 0.5, "brier": 0.2}, "newer_block": {"x": [1]}}]}
    typed = RunResults.from_json(doc)
    assert typed.extra == {"newer": 1} and typed.backbones[0].test.extra == {"brier": 0.2}
    assert typed.to_json() == doc and list(typed.to_json()) == ["schema_version", "backbones", "newer"]


def test_a_value_of_another_shape_than_declared_is_kept_as_it_is():
    # an older run's cross_split_near was the list of near pairs, not their number
    block = Integrity.from_json({"cross_split_near": [{"distance": 3}], "within_split": {"train": "odd"}})
    assert block.cross_split_near == [{"distance": 3}] and block.within_split == {"train": "odd"}
    assert block.to_json() == {"cross_split_near": [{"distance": 3}], "within_split": {"train": "odd"}}


def test_optional_fields_are_omitted_while_none_and_others_written_as_null():
    @record
    class Block(Record):
        always: int | None = None
        measured: int | None = optional()

    assert Block().to_json() == {"always": None}
    assert Block(measured=3).to_json() == {"always": None, "measured": 3}
    assert Block.from_json({"measured": None}).to_json() == {}  # a null it read stays omitted


def test_a_reader_accepts_the_tree_or_a_results_dict():
    typed = RunResults.from_json({"schema_version": 1})
    assert as_run_results(typed) is typed
    assert as_run_results({"schema_version": 1, "backbones": [{"name": "b"}]}).backbones[0].name == "b"
    with pytest.raises(TypeError, match="RunResults: expected a JSON object"):
        RunResults.from_json([])

def test_legacy_shapes_the_report_reads_round_trip_and_normalise():
    """Older results.json: the bootstrap block flat under ``uncertainty``, bounds named low/high,
    recall intervals under ``recall``; a calibration that was not fitted says why."""
    from engine.results import BackboneResult

    flat = {"n_resamples": 200, "confidence": 0.9,
            "accuracy": {"value": 0.8, "low": 0.7, "high": 0.9},
            "recall": {"glioma": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}}
    entry = {"name": "m", "uncertainty": flat,
             "calibration": {"ece_before": 0.1, "reliability_before": [{"count": 1}, {"count": 2}],
                             "not_fitted": "9 validation images"}}
    b = BackboneResult.from_json(entry)
    assert b.to_json() == entry
    test, free = b.uncertainty.blocks()
    assert free is None and test.n_resamples == 200 and test.confidence == 0.9
    assert (test.accuracy.lower, test.accuracy.upper) == (0.7, 0.9)
    assert test.recall_interval("glioma").upper == 0.6 and test.recall_interval("meningioma") is None
    assert b.calibration.not_fitted == "9 validation images" and b.calibration.bins == 2
