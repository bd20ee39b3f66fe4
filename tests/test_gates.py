"""Regression gates: conditions, warn-only, missing metrics, serialisers (no TensorFlow)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from engine.errors import InputError
from engine.nightly.gates import (
    GatesConfig,
    evaluate_gates,
    gates_summary_lines,
    gates_to_dict,
    gates_to_junit,
    overall_status,
)

def Gates(**kwargs) -> GatesConfig:
    """A config for the threshold gates alone: the built-in all_backbones_finished gate has its own tests."""
    return GatesConfig(**{"all_backbones_finished": False, **kwargs})


CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def bb(name, accuracy=0.9, macro_f1=0.88, recall=None, status="ok"):
    if status != "ok":
        return {"name": name, "status": "failed", "error": "ResourceExhaustedError: OOM"}
    recall = {**{c: 0.9 for c in CLASSES}, **(recall or {})}
    return {"name": name, "status": "ok", "error": None,
            "test": {"accuracy": accuracy, "macro_f1": macro_f1,
                     "per_class": {c: {"recall": r, "precision": 0.9, "f1": 0.9, "support": 25}
                                   for c, r in recall.items()}}}


def run(*backbones, best="ResNet50", near=13, n_per_class=25, integrity=True):
    r = {"run": {"id": "run-2"}, "data": {"class_names": CLASSES,
                                          "counts": {"test": {c: n_per_class for c in CLASSES}}},
         "best_backbone": {"name": best} if best else None, "backbones": list(backbones)}
    if integrity:
        r["integrity"] = {"cross_split_near": near, "cross_split_exact": 3}
    return r


def previous(**f1):
    return {"run_id": "run-1", "status": "ok",
            "backbones": {k: {"status": "ok", "test": {"macro_f1": v}} for k, v in f1.items()}}


def by_label(gates):
    return {g.label: g for g in gates}


def test_thresholds_pass_and_fail_with_value_and_threshold():
    results = run(bb("ResNet50", accuracy=0.93, macro_f1=0.86, recall={"glioma": 0.72}))
    config = Gates(min_accuracy=0.9, min_macro_f1=0.9, min_recall={"glioma": 0.8, "pituitary": 0.9})
    gates = by_label(evaluate_gates(results, config, None))
    assert set(gates) == {"min_accuracy[ResNet50]", "min_macro_f1[ResNet50]", "min_recall.glioma[ResNet50]",
                          "min_recall.pituitary[ResNet50]"}
    assert gates["min_accuracy[ResNet50]"].status == "PASS"
    f1 = gates["min_macro_f1[ResNet50]"]
    assert (f1.status, f1.value, f1.threshold) == ("FAIL", 0.86, 0.9)
    assert "0.860 is below the minimum 0.900" in f1.message
    assert gates["min_recall.glioma[ResNet50]"].status == "FAIL"
    assert gates["min_recall.pituitary[ResNet50]"].status == "PASS"  # 0.9 meets 0.9 exactly
    assert overall_status(list(gates.values())) == "FAIL"


def test_warn_only_by_exact_name_and_by_family():
    results = run(bb("ResNet50", macro_f1=0.5, recall={"glioma": 0.1, "meningioma": 0.1}))
    config = Gates(min_macro_f1=0.9, min_recall={"glioma": 0.8, "meningioma": 0.8},
                         warn_only=["min_recall.meningioma"])
    gates = by_label(evaluate_gates(results, config, None))
    assert gates["min_recall.meningioma[ResNet50]"].status == "WARN"
    assert gates["min_recall.glioma[ResNet50]"].status == "FAIL"
    config = Gates(min_macro_f1=0.9, min_recall={"glioma": 0.8}, warn_only=["min_recall", "min_macro_f1"])
    gates = evaluate_gates(results, config, None)
    assert {g.status for g in gates} == {"WARN"} and overall_status(gates) == "WARN"


def test_missing_metric_fails_even_when_warn_only():
    results = run(bb("ResNet50"), bb("VGG16", status="failed"))
    config = Gates(min_macro_f1=0.5, applies_to="all", warn_only=["min_macro_f1"])
    gates = by_label(evaluate_gates(results, config, None))
    assert gates["min_macro_f1[ResNet50]"].status == "PASS"
    failed = gates["min_macro_f1[VGG16]"]
    assert failed.status == "FAIL" and failed.value is None and "backbone failed" in failed.message


def test_no_best_backbone_fails_every_configured_gate():
    results = run(bb("VGG16", status="failed"), best=None)
    gates = evaluate_gates(results, Gates(min_accuracy=0.1, max_macro_f1_drop=0.1), previous(VGG16=0.9))
    assert [g.status for g in gates] == ["FAIL", "FAIL"]
    assert "no best backbone" in gates[0].message


def test_missing_recall_class_fails():
    results = run(bb("ResNet50"))
    del results["backbones"][0]["test"]["per_class"]["glioma"]
    (gate,) = evaluate_gates(results, Gates(min_recall={"glioma": 0.1}), None)
    assert gate.status == "FAIL" and gate.value is None


@pytest.mark.parametrize("stored_recall", [None, 0.0])  # 0.0: results.json from before undefined recall
@pytest.mark.parametrize("threshold", [0.0, 0.8])
def test_recall_of_a_class_with_no_test_images_is_not_evaluated(stored_recall, threshold):
    results = run(bb("ResNet50"))
    results["backbones"][0]["test"]["per_class"]["no_tumor"].update(recall=stored_recall, f1=None, support=0)
    config = Gates(min_recall={"no_tumor": threshold, "glioma": 0.8})
    gates = by_label(evaluate_gates(results, config, None))
    gate = gates["min_recall.no_tumor[ResNet50]"]
    # neither PASS (nothing was shown, even against a threshold of 0) nor FAIL (nothing was missed)
    assert (gate.status, gate.value) == ("WARN", None)
    assert "not evaluated (no test images of class no_tumor)" in gate.message
    assert gates["min_recall.glioma[ResNet50]"].status == "PASS"
    assert overall_status(list(gates.values())) == "WARN"
    case = ET.fromstring(gates_to_junit(list(gates.values()), "s").encode()).find("testsuite/testcase")
    assert case.find("skipped").get("message").startswith("WARN: ResNet50: not evaluated")


def test_applies_to_best_ignores_other_backbones():
    results = run(bb("ResNet50", macro_f1=0.95), bb("VGG16", macro_f1=0.2), best="ResNet50")
    gates = evaluate_gates(results, Gates(min_macro_f1=0.9), None)
    assert [(g.backbone, g.status) for g in gates] == [("ResNet50", "PASS")]
    gates = evaluate_gates(results, Gates(min_macro_f1=0.9, applies_to="all"), None)
    assert [(g.backbone, g.status) for g in gates] == [("ResNet50", "PASS"), ("VGG16", "FAIL")]


def test_macro_f1_drop_against_previous_run():
    results = run(bb("ResNet50", macro_f1=0.86))
    config = Gates(max_macro_f1_drop=0.02)
    (gate,) = evaluate_gates(results, config, previous(ResNet50=0.91))
    assert gate.status == "FAIL" and gate.value == pytest.approx(0.05)
    assert "0.910 in run run-1 -> 0.860" in gate.message
    (gate,) = evaluate_gates(results, Gates(max_macro_f1_drop=0.05), previous(ResNet50=0.91))
    assert gate.status == "PASS"  # a drop equal to the limit is allowed
    (gate,) = evaluate_gates(results, config, previous(ResNet50=0.80))
    assert gate.status == "PASS" and gate.value == pytest.approx(-0.06)


def test_macro_f1_drop_without_baseline_passes_and_says_so():
    results = run(bb("ResNet50"))
    (gate,) = evaluate_gates(results, Gates(max_macro_f1_drop=0.02), None)
    assert gate.status == "PASS" and gate.value is None and "no previous run" in gate.message
    (gate,) = evaluate_gates(results, Gates(max_macro_f1_drop=0.02), previous(Other=0.9))
    assert gate.status == "PASS" and "no previous result" in gate.message


def test_leakage_fraction_gate():
    config = Gates(max_leakage_fraction=0.05)
    (gate,) = evaluate_gates(run(bb("ResNet50"), near=13), config, None)
    assert gate.backbone is None and gate.status == "FAIL"
    assert gate.value == pytest.approx(0.13) and "(13 of 100)" in gate.message
    (gate,) = evaluate_gates(run(bb("ResNet50"), near=5), config, None)
    assert gate.status == "PASS"
    (gate,) = evaluate_gates(run(bb("ResNet50"), integrity=False), config, None)
    assert gate.status == "FAIL" and gate.value is None


def test_no_gates_configured():
    assert evaluate_gates(run(bb("ResNet50")), Gates(), None) == []
    assert gates_to_dict([])["summary"]["status"] == "NONE"
    assert gates_summary_lines([]) == ["gates: none configured"]


@pytest.mark.parametrize("kwargs, key", [
    ({"min_accuracy": 1.5}, "gates.min_accuracy"),
    ({"min_recall": {"glioma": -0.1}}, "gates.min_recall.glioma"),
    ({"max_leakage_fraction": float("nan")}, "gates.max_leakage_fraction"),
    ({"warn_only": ["min_acc"]}, "gates.warn_only[0]"),
    ({"warn_only": ["min_accuracy.glioma"]}, "gates.warn_only[0]"),
    ({"applies_to": "worst"}, "gates.applies_to"),
])
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        GatesConfig(**kwargs)


def _mixed():
    results = run(bb("ResNet50", macro_f1=0.5, recall={"glioma": 0.1}))
    config = Gates(min_accuracy=0.5, min_macro_f1=0.9, min_recall={"glioma": 0.8, "pituitary": 0.8},
                         max_leakage_fraction=0.05, warn_only=["max_leakage_fraction"])
    return evaluate_gates(results, config, None)


def test_junit_xml_counts_and_elements():
    gates = _mixed()
    assert sorted(g.status for g in gates) == ["FAIL", "FAIL", "PASS", "PASS", "WARN"]
    root = ET.fromstring(gates_to_junit(gates, "baseline").encode("utf-8"))
    suite = root.find("testsuite")
    assert suite.get("name") == "baseline"
    counts = [suite.get(k) for k in ("tests", "failures", "skipped", "errors")]
    assert counts == ["5", "2", "1", "0"]
    cases = suite.findall("testcase")
    assert len(cases) == 5 and len(root.findall(".//failure")) == 2
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"min_macro_f1[ResNet50]", "min_recall.glioma[ResNet50]"}
    warned = [c for c in cases if c.find("skipped") is not None]
    assert [c.get("name") for c in warned] == ["max_leakage_fraction"]
    assert warned[0].find("skipped").get("message").startswith("WARN: ")
    assert all("threshold=" in c.find("system-out").text for c in cases)


def test_junit_escapes_markup_in_names():
    results = run(bb("Res<Net>&50"), best="Res<Net>&50")
    xml = gates_to_junit(evaluate_gates(results, Gates(min_macro_f1=0.99), None), 'a"b')
    case = ET.fromstring(xml.encode("utf-8")).find("testsuite/testcase")
    assert case.get("name") == "min_macro_f1[Res<Net>&50]"


def test_dict_and_summary_lines():
    gates = _mixed()
    block = gates_to_dict(gates)
    assert block["summary"] == {"PASS": 2, "WARN": 1, "FAIL": 2, "status": "FAIL"}
    lines = gates_summary_lines(gates)
    assert lines[0] == "gates: FAIL (2 failed, 1 warned, 2 passed)"
    assert [line.split()[0] for line in lines[1:]] == ["FAIL", "FAIL", "WARN", "PASS", "PASS"]
    assert len(gates_summary_lines(gates, include_pass=False)) == 4


# ------------------------------------------------------------------------------------------------
# all_backbones_finished: built in, on by default


def test_all_backbones_finished_is_on_by_default_and_fails_on_a_failed_backbone():
    (gate,) = evaluate_gates(run(bb("ResNet50"), bb("VGG16", status="failed")), GatesConfig(), None)
    assert (gate.name, gate.status, gate.value) == ("all_backbones_finished", "FAIL", 0.5)
    assert "VGG16: ResourceExhaustedError: OOM" in gate.message


def test_all_backbones_finished_passes_when_all_finished_and_fails_with_no_backbones():
    (gate,) = evaluate_gates(run(bb("ResNet50"), bb("VGG16")), GatesConfig(), None)
    assert gate.status == "PASS" and gate.value == 1.0
    (gate,) = evaluate_gates(run(best=None), GatesConfig(), None)
    assert gate.status == "FAIL"


def test_failed_explanations_count_as_an_unfinished_backbone():
    ok = bb("ResNet50")
    ok["gradcam"] = {"error": "internal error (a bug in auditrun) ValueError: boom"}
    (gate,) = evaluate_gates(run(ok), GatesConfig(), None)
    assert gate.status == "FAIL" and "explanations failed" in gate.message and "boom" in gate.message


def test_all_backbones_finished_can_warn_or_be_switched_off():
    results = run(bb("ResNet50"), bb("VGG16", status="failed"))
    (gate,) = evaluate_gates(results, GatesConfig(warn_only=["all_backbones_finished"]), None)
    assert gate.status == "WARN"
    assert evaluate_gates(results, GatesConfig(all_backbones_finished=False), None) == []
