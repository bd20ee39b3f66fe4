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
