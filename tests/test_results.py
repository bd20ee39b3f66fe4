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
