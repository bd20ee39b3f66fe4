"""Performance by subgroup, the largest gap and its gate (engine.evaluation.subgroups, issue 17)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError
from engine.evaluation.metrics import classification_metrics
from engine.evaluation.subgroups import (
    age_band,
    age_band_labels,
    subgroup_gap,
    subgroup_metrics,
    subgroup_results,
)
from engine.evaluation.uncertainty import metrics_from_confusion, resampled_confusion_matrices
from engine.nightly.gates import GatesConfig, evaluate_gates

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
TUMOUR = ["glioma", "meningioma", "pituitary"]
ENTRY_KEYS = {"group", "n", "accuracy", "macro_f1", "recall", "ci"}


def predictions(n: int, accuracy: float, seed: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n images, classes balanced, exactly round(n * accuracy) predicted right (the rest one class off)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes)
    y_pred = y.copy()
    wrong = rng.permutation(n)[: n - round(n * accuracy)]
    y_pred[wrong] = (y[wrong] + 1 + rng.integers(0, classes - 1, size=wrong.size)) % classes
    return y, y_pred


def groups_of(*parts: tuple[str, int]) -> np.ndarray:
    return np.array([name for name, n in parts for _ in range(n)], dtype=object)


def planted(n: int = 120, seed: int = 0):
    """Site "good" at 90 % accuracy, site "poor" at 30 %."""
    yg, pg = predictions(n, 0.9, seed)
    yb, pb = predictions(n, 0.3, seed + 1)
    return np.concatenate([yg, yb]), np.concatenate([pg, pb]), groups_of(("good", n), ("poor", n))


def gated(block: dict | None, threshold: float = 0.1, **config) -> list:
    entry = {"name": "ResNet50", "status": "ok", "test": {"accuracy": 0.6, "macro_f1": 0.6}}
    if block is not None:
        entry["subgroup_gap"] = block
    results = {"run": {"id": "r"}, "best_backbone": {"name": "ResNet50"}, "backbones": [entry]}
    return [g for g in evaluate_gates(results, GatesConfig(all_backbones_finished=False, max_subgroup_gap=threshold,
                                                           **config), None) if g.name == "max_subgroup_gap"]


# ------------------------------------------------------------------------------------------------
# The gap and its gate


def test_a_planted_gap_has_an_interval_excluding_zero_and_trips_the_gate():
    y, yp, site = planted()
    block = subgroup_gap(y, yp, {"site": site}, CLASSES, n_resamples=500, seed=3)
    gap = block["attributes"]["site"]
    assert (gap["higher"]["group"], gap["lower"]["group"]) == ("good", "poor")
    assert gap["gap"] == pytest.approx(gap["higher"]["macro_f1"] - gap["lower"]["macro_f1"], abs=2e-6)
    assert gap["gap"] > 0.5
    assert 0 < gap["ci_low"] <= gap["gap"] <= gap["ci_high"]
    assert block["largest"]["attribute"] == "site" and block["largest"]["gap"] == gap["gap"]
    (gate,) = gated(block, threshold=0.1)
    assert gate.status == "FAIL" and gate.value == gap["gap"] and gate.threshold == 0.1
    assert "good" in gate.message and "poor" in gate.message and "site" in gate.message
    assert f"{gap['ci_low']:.3f}" in gate.message
    (warned,) = gated(block, threshold=0.1, warn_only=["max_subgroup_gap"])
    assert warned.status == "WARN" and "(warn only)" in warned.message
    (passed,) = gated(block, threshold=0.9)
    assert passed.status == "PASS"


def test_identical_groups_give_an_interval_including_zero_and_pass():
    y, yp = predictions(100, 0.7, seed=5)
    site = groups_of(("A", 100), ("B", 100))
    block = subgroup_gap(np.concatenate([y, y]), np.concatenate([yp, yp]), {"site": site}, CLASSES,
                         n_resamples=500, seed=3)
    gap = block["attributes"]["site"]
    assert gap["gap"] == 0.0
    assert gap["ci_low"] < 0 < gap["ci_high"]  # the two groups' resamples differ: a real interval
    assert {gap["higher"]["group"], gap["lower"]["group"]} == {"A", "B"}
    (gate,) = gated(block, threshold=0.05)
    assert gate.status == "PASS" and gate.value == 0.0


def test_the_gap_interval_is_the_paired_difference_of_the_two_groups_stratified_resamples():
    y, yp, site = planted(n=60)
    n_res, seed = 200, 11
    gap = subgroup_gap(y, yp, {"site": site}, CLASSES, n_resamples=n_res, seed=seed)["attributes"]["site"]
    boots = {}
    for name in ("good", "poor"):
        rows = site == name
        rng = np.random.default_rng([seed, zlib.crc32(b"site"), zlib.crc32(name.encode())])
        cms = resampled_confusion_matrices(y[rows], yp[rows], 4, n_res, rng)
        assert (cms.sum(axis=(1, 2)) == rows.sum()).all()  # every resample keeps the group's size
        boots[name] = metrics_from_confusion(cms, sorted(set(y[rows].tolist())))["macro_f1"]
    diff = boots["good"] - boots["poor"]
    diff = diff[~np.isnan(diff)]
    assert gap["n_resamples_defined"] == diff.size
    assert gap["ci_low"] == pytest.approx(np.percentile(diff, 2.5), abs=1e-6)
    assert gap["ci_high"] == pytest.approx(np.percentile(diff, 97.5), abs=1e-6)


def test_a_groups_interval_does_not_depend_on_the_other_groups():
    y, yp, site = planted(n=60)
    yc, pc = predictions(60, 0.5, seed=9)
    with_c = subgroup_metrics(np.concatenate([y, yc]), np.concatenate([yp, pc]),
                              {"site": np.concatenate([site, groups_of(("third", 60))])}, CLASSES,
                              n_resamples=200, seed=4)
    without = subgroup_metrics(y, yp, {"site": site}, CLASSES, n_resamples=200, seed=4)
    good = [e for e in with_c["site"] if e["group"] == "good"]
    assert good == [e for e in without["site"] if e["group"] == "good"]


def test_gate_without_subgroup_results_warns_not_evaluated():
    (gate,) = gated(None, threshold=0.1)
    assert gate.status == "WARN" and gate.value is None and "not evaluated" in gate.message
    # a block whose attributes each have fewer than two large-enough groups
    y, yp = predictions(40, 0.8, seed=1)
    block = subgroup_gap(y, yp, {"site": groups_of(("A", 30), ("B", 10))}, CLASSES, n_resamples=50, seed=0)
    assert block["largest"] is None and "fewer than two groups" in block["attributes"]["site"]["note"]
    (gate,) = gated(block, threshold=0.1)
    assert gate.status == "WARN" and "not evaluated" in gate.message


def test_gate_of_a_failed_backbone_fails_and_the_threshold_is_checked():
    results = {"best_backbone": {"name": "A"}, "backbones": [
        {"name": "A", "status": "ok", "test": {}, "subgroup_gap": {"largest": {"gap": 0.01}}},
        {"name": "B", "status": "failed", "error": "OOM"}]}
    gates = evaluate_gates(results, GatesConfig(all_backbones_finished=False, max_subgroup_gap=0.1,
                                                applies_to="all"), None)
    assert [(g.label, g.status) for g in gates] == [("max_subgroup_gap[A]", "PASS"), ("max_subgroup_gap[B]", "FAIL")]
    with pytest.raises(InputError, match="max_subgroup_gap"):
        GatesConfig(max_subgroup_gap=1.5)
    assert GatesConfig(warn_only=["max_subgroup_gap"]).is_warn_only("max_subgroup_gap")
    assert not [g for g in evaluate_gates(results, GatesConfig(), None) if g.name == "max_subgroup_gap"]


# ------------------------------------------------------------------------------------------------
# Per-group metrics


def test_per_group_metrics_equal_the_engines_metrics_on_that_groups_rows():
    y, yp, site = planted(n=80)
    # a third site without any no_tumor image: its macro-F1 averages the three classes it has
    yt3, pt3 = predictions(45, 0.6, seed=7, classes=3)
    yt3 = np.where(yt3 == 2, 3, yt3)
    pt3 = np.where(pt3 == 2, 3, pt3)
    pt3[:5] = 2  # and predicts no_tumor now and then
    y, yp = np.concatenate([y, yt3]), np.concatenate([yp, pt3])
    site = np.concatenate([site, groups_of(("third", 45))])
    out = subgroup_metrics(y, yp, {"site": site}, CLASSES, n_resamples=50, seed=0)
    assert [e["group"] for e in out["site"]] == ["good", "poor", "third"]
    for entry in out["site"]:
        rows = site == entry["group"]
        ref = classification_metrics(y[rows], np.eye(4)[yp[rows]], CLASSES)
        assert entry["n"] == rows.sum()
        assert entry["accuracy"] == pytest.approx(ref.accuracy, abs=1e-6)
        assert entry["macro_f1"] == pytest.approx(ref.macro_f1, abs=1e-6)
        for cls in TUMOUR:
            assert entry["recall"][cls] == pytest.approx(ref.recall[CLASSES.index(cls)], abs=1e-6)
    third = out["site"][2]
    ref = classification_metrics(yt3, np.eye(4)[pt3], CLASSES)
    assert ref.macro_labels == [0, 1, 3] and third["macro_f1"] == pytest.approx(ref.macro_f1, abs=1e-6)


def test_small_groups_are_pooled_into_other_and_listed():
    y, yp = predictions(100, 0.7, seed=2)
    site = groups_of(("big", 50), ("mid", 25), ("tiny", 12), ("wee", 8), ("one", 5))
    out = subgroup_metrics(y, yp, {"site": site}, CLASSES, min_n=20, n_resamples=50, seed=0)
    entries = {e["group"]: e for e in out["site"]}
    assert list(entries) == ["big", "mid", "other"]
    other = entries["other"]
    assert other["n"] == 25 and other["pooled"] == ["one", "tiny", "wee"]
    assert "pooled" not in entries["big"] and sum(e["n"] for e in entries.values()) == 100
    rows = np.isin(site, ["tiny", "wee", "one"])
    assert other["macro_f1"] == pytest.approx(classification_metrics(y[rows], np.eye(4)[yp[rows]],
                                                                     CLASSES).macro_f1, abs=1e-6)
    # a pool that stays below min_n is listed but not compared in the gap
    site = groups_of(("big", 70), ("tiny", 12), ("wee", 8), ("one", 10))
    out = subgroup_results(y, yp, {"site": site}, CLASSES, min_n=40, n_resamples=50, seed=0)
    assert [(e["group"], e["n"]) for e in out["subgroups"]["site"]] == [("big", 70), ("other", 30)]
    gap = out["subgroup_gap"]["attributes"]["site"]
    assert gap["groups_compared"] == ["big"] and gap["gap"] is None
    # nothing small: no "other"
    plain = subgroup_metrics(y, yp, {"site": groups_of(("a", 50), ("b", 50))}, CLASSES, n_resamples=20)
    assert [e["group"] for e in plain["site"]] == ["a", "b"]


def test_missing_values_are_the_unknown_group():
    y, yp = predictions(60, 0.7, seed=2)
    sex = np.array(["F"] * 20 + ["M"] * 20 + [None] * 10 + [""] * 5 + [float("nan")] * 5, dtype=object)
    out = subgroup_metrics(y, yp, {"sex": sex}, CLASSES, min_n=5, n_resamples=20)
    assert [(e["group"], e["n"]) for e in out["sex"]] == [("F", 20), ("M", 20), ("unknown", 20)]


def test_results_are_deterministic_for_a_seed_and_change_with_it():
    y, yp, site = planted(n=60)
    sex = np.tile(["F", "M"], 60)
    args = (y, yp, {"site": site, "sex": sex}, CLASSES)
    a = subgroup_results(*args, n_resamples=200, seed=7)
    assert a == subgroup_results(*args, n_resamples=200, seed=7)
    b = subgroup_results(*args, n_resamples=200, seed=8)
    assert a["subgroups"]["site"][0]["ci"] != b["subgroups"]["site"][0]["ci"]
    assert a["subgroups"]["site"][0]["macro_f1"] == b["subgroups"]["site"][0]["macro_f1"]
    # the two entry points give the same numbers as the combined one
    assert a["subgroups"] == subgroup_metrics(*args, n_resamples=200, seed=7)
    assert a["subgroup_gap"] == subgroup_gap(*args, n_resamples=200, seed=7)


def test_results_have_the_contract_shape_and_are_json():
    y, yp = predictions(100, 0.7, seed=2)
    groups = {"site": groups_of(("a", 50), ("b", 40), ("c", 10)), "age_band": [age_band(a) for a in
                                                                              np.tile([25, 45, 70, None], 25)]}
    out = subgroup_results(y, yp, groups, CLASSES, n_resamples=50, seed=0)
    json.dumps(out, allow_nan=False)
    subgroups = out["subgroups"]
    assert list(subgroups) == ["site", "age_band"]
    for attribute, entries in subgroups.items():
        for e in entries:
            assert set(e) == ENTRY_KEYS | ({"pooled"} if e["group"] == "other" else set())
            assert isinstance(e["group"], str) and isinstance(e["n"], int)
            assert list(e["recall"]) == TUMOUR
            assert set(e["ci"]) == {"accuracy", "macro_f1", "recall"}
            assert e["ci"]["accuracy"]["low"] <= e["accuracy"] <= e["ci"]["accuracy"]["high"]
            assert {"low", "high", "n_resamples_defined"} <= set(e["ci"]["macro_f1"])
            assert list(e["ci"]["recall"]) == TUMOUR
    assert [e["group"] for e in subgroups["age_band"]] == ["40-59", "60+", "<40", "unknown"]
    gap = out["subgroup_gap"]
    assert set(gap) == {"metric", "method", "n_resamples", "confidence", "seed", "min_n", "attributes", "largest"}
    assert gap["metric"] == "macro_f1" and set(gap["attributes"]) == {"site", "age_band"}
    for entry in gap["attributes"].values():
        assert {"gap", "ci_low", "ci_high", "n_resamples_defined", "higher", "lower", "groups_compared"} <= set(entry)


def test_recall_classes_and_no_bootstrap():
    y, yp = predictions(40, 0.7, seed=2)
    out = subgroup_metrics(y, yp, {"site": groups_of(("a", 40))}, CLASSES, n_resamples=0,
                           recall_classes=CLASSES)
    (entry,) = out["site"]
    assert list(entry["recall"]) == CLASSES
    assert entry["ci"]["accuracy"] == {"low": None, "high": None}
    with pytest.raises(ValueError, match="not among the classes"):
        subgroup_metrics(y, yp, {"site": groups_of(("a", 40))}, CLASSES, recall_classes=["edema"])
    with pytest.raises(ValueError, match="has 3 values for 40 images"):
        subgroup_metrics(y, yp, {"site": ["a", "b", "c"]}, CLASSES)


# ------------------------------------------------------------------------------------------------
# Age bands and the manifest section


def test_age_bands():
    assert age_band_labels() == ["<40", "40-59", "60+"]
    assert [age_band(a) for a in (0, 39, 39.9, 40, "59", 60, 199)] == ["<40", "<40", "<40", "40-59", "40-59",
                                                                        "60+", "60+"]
    assert [age_band(a) for a in (None, "", "  ", float("nan"))] == ["unknown"] * 4
    assert age_band(35, bands=(18, 30, 50, 65, 120)) == "30-49"
    assert age_band_labels((18, 30, 50, 65, 120)) == ["18-29", "30-49", "50-64", "65+"]
    for bad in ("forty", -1, 200, True):
        with pytest.raises(InputError):
            age_band(bad)
    with pytest.raises(ValueError):
        age_band(30, bands=(40, 20))


def test_manifest_subgroups_section(tmp_path):
    from engine import manifest

    base = ("[data]\nroot = \"data\"\n[[backbones]]\nname = \"x\"\nfile = \"x.keras\"\n")
    (tmp_path / "x.keras").write_text("")

    def load(extra: str):
        return manifest.loads(base + extra, base=tmp_path, check_data=False)

    default = load("")
    assert (default.subgroups.by, default.subgroups.age_bands, default.subgroups.min_n) == ([], [0, 40, 60, 200], 20)
    m = load("[subgroups]\nby = [\"site\", \"age_band\"]\nage_bands = [0, 50, 120]\nmin_n = 30\n"
             "[gates]\nmax_subgroup_gap = 0.1\n")
    assert (m.subgroups.by, m.subgroups.age_bands, m.subgroups.min_n) == (["site", "age_band"], [0, 50, 120], 30)
    assert m.gates.max_subgroup_gap == 0.1
    with pytest.raises(InputError, match=r"subgroups\.by\[1\].*'ward'.*site, scanner, sex, age_band"):
        load("[subgroups]\nby = [\"site\", \"ward\"]\n")
    with pytest.raises(InputError, match=r"subgroups\.by.*repeat"):
        load("[subgroups]\nby = [\"sex\", \"sex\"]\n")
    with pytest.raises(InputError, match=r"subgroups\.age_bands.*increasing"):
        load("[subgroups]\nage_bands = [0, 60, 40]\n")
    with pytest.raises(InputError, match=r"subgroups\.min_n"):
        load("[subgroups]\nmin_n = 0\n")
    with pytest.raises(InputError, match=r"gates\.max_subgroup_gap"):
        load("[gates]\nmax_subgroup_gap = 2\n")


def test_docs_name_the_section_and_the_gate():
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert "## `[subgroups]`" in (docs / "manifest.md").read_text(encoding="utf-8")
    assert "`max_subgroup_gap`" in (docs / "nightly.md").read_text(encoding="utf-8")
