"""Issue 18 wired into the audit: the explanation checks per backbone and method in results.json,
the report, the gates (min_pointing_game, explanation_sanity), the manifest and ``auditrun evaluate``.

The unit cases use test_explain_checks' toy model ("bright square" vs "empty", 48 px); the end-to-end
case runs a real tiny audit (32 px CNN, 1 epoch) through the CLI with a model-blind explainer injected
for one method, which the explanation_sanity gate must catch (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from conftest import assert_reads_back_unchanged, trains, write_manifest  # noqa: E402
from test_explain_checks import blobs, edge_explainer, trained  # noqa: E402,F401 - fixtures
from test_nightly_e2e import manifest_text, tiny_backbone  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.explain.reliability import check_sample, explain_reliability  # noqa: E402
from engine.nightly.gates import GatesConfig, evaluate_gates  # noqa: E402

CHECK_KEYS = {"method", "randomisation", "faithfulness"}


def _schema_validator(definition: str):
    import importlib.resources

    from jsonschema import Draft202012Validator

    schema = json.loads(importlib.resources.files("engine").joinpath("schemas/results.schema.json").read_text())
    return Draft202012Validator({"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]})


# ------------------------------------------------------------------------------ the explain stage's block

@pytest.fixture(scope="module")
@trains
def checked(trained, blobs, tmp_path_factory):
    images, y, boxes = blobs
    tmp = tmp_path_factory.mktemp("reliability")
    blocks = explain_reliability(trained, images, y, boxes, ["gradcam", edge_explainer], seed=5,
                                 out_dir=tmp / "gradcam" / "toy", run_dir=tmp, n_images=12, cascade_steps=4,
                                 faithfulness_steps=4, cascade_draws=3)
    return tmp, blocks


def test_every_method_gets_the_three_checks_and_a_cascade_figure(checked):
    run_dir, blocks = checked
    assert [b["method"] for b in blocks] == ["gradcam", "edge_explainer"]
    validate = _schema_validator("explanation")
    for block in blocks:
        validate.validate(block)
        json.dumps(block, allow_nan=False)
        assert CHECK_KEYS <= set(block) and block["n_images"] == 12
        assert "pointing_game" not in block  # scored once per method, by engine.explain.localise
        fig = block["figure"]
        assert (run_dir / fig["path"]).stat().st_size > 1000 and fig["path"].startswith("gradcam/toy/")
        # the caption carries the verdict's numbers
        assert f"{block['randomisation']['spearman_median']:.2f}" in fig["caption"] and fig["alt"]
    real, blind = blocks
    assert real["randomisation"]["passed"] is True
    assert blind["randomisation"]["passed"] is False and blind["randomisation"]["spearman_median"] > 0.9


def test_without_boxes_randomisation_and_faithfulness_still_run(trained, blobs, tmp_path):
    images, y, _ = blobs
    blocks = explain_reliability(trained, images, y, [None] * len(y), ["gradcam"], seed=5, out_dir=tmp_path,
                                 run_dir=tmp_path, n_images=4, cascade_steps=2, faithfulness_steps=3)
    (block,) = blocks
    _schema_validator("explanation").validate(block)
    assert "pointing_game" not in block and block["n_images"] == 4
    assert "passed" in block["randomisation"] and block["faithfulness"]["deletion_auc"] is not None


def test_a_failing_method_is_recorded_and_the_others_still_run(trained, blobs, tmp_path):
    images, y, _ = blobs

    def broken(model, imgs, cls):
        raise RuntimeError("no maps today")

    blocks = explain_reliability(trained, images, y, [None] * len(y), [broken, "gradcam"], seed=1,
                                 out_dir=tmp_path, run_dir=tmp_path, n_images=3, cascade_steps=1,
                                 faithfulness_steps=2)
    assert blocks[0] == {"method": "broken", "error": "RuntimeError: no maps today"}
    assert CHECK_KEYS <= set(blocks[1])
    _schema_validator("explanation").validate(blocks[0])


def test_check_sample_takes_boxed_images_first_then_tops_up_seeded():
    boxes = [[(0.5, 0.5, 0.1, 0.1)] if i % 3 == 0 else [] for i in range(30)]
    pick = check_sample(boxes, seed=4, n_images=12)
    assert len(pick) == 12 and {i for i in range(30) if i % 3 == 0} <= set(pick)
    assert pick == check_sample(boxes, seed=4, n_images=12) and pick != check_sample(boxes, seed=5, n_images=12)
    assert len(check_sample(boxes, seed=4, n_images=5)) == 5
    assert all(i % 3 == 0 for i in check_sample(boxes, seed=4, n_images=5))


# ------------------------------------------------------------------------------ gates

def _results(explanations: list[dict] | None, localisation: list[dict] | None = None) -> dict:
    entry = {"name": "toy", "status": "ok", "test": {"accuracy": 1.0, "macro_f1": 1.0}}
    if explanations is not None:
        entry["explanations"] = explanations
    if localisation is not None:
        entry["localisation"] = localisation
    return {"backbones": [entry], "best_backbone": {"name": "toy"}}


def test_explanation_sanity_fails_a_model_blind_explainer_and_passes_a_real_one(checked):
    _, (real, blind) = checked
    config = GatesConfig(explanation_sanity=True, min_pointing_game=0.5, all_backbones_finished=False)
    sanity, = [g for g in evaluate_gates(_results([real, blind]), config, None) if g.name == "explanation_sanity"]
    assert sanity.status == "FAIL" and sanity.value == 0.5 and "edge_explainer" in sanity.message
    located = [{"method": "gradcam", "rate": 0.9, "hits": 9, "total": 10, "chance_rate": 0.1},
               {"method": "edge_explainer", "rate": 0.1, "hits": 1, "total": 10}]
    gates = {g.name: g for g in evaluate_gates(_results([real], located), config, None)}
    assert gates["explanation_sanity"].status == "PASS"
    # the gate reads the primary method's localisation block: the model's one pointing game
    assert gates["min_pointing_game"].status == "PASS" and gates["min_pointing_game"].value == 0.9
    low = [dict(located[0], rate=0.2, hits=1, total=5)]
    gate, = evaluate_gates(_results([real], low), GatesConfig(min_pointing_game=0.5, all_backbones_finished=False),
                           None)
    assert gate.status == "FAIL" and gate.value == 0.2 and "1 of 5" in gate.message
    old = dict(real, pointing_game={"rate": 0.2, "hits": 1, "total": 5})  # a run before issue 30
    gate, = evaluate_gates(_results([old]), GatesConfig(min_pointing_game=0.5, all_backbones_finished=False), None)
    assert gate.status == "FAIL" and gate.value == 0.2


def test_pointing_game_gate_warns_without_boxes_and_fails_without_checks():
    config = GatesConfig(min_pointing_game=0.5, explanation_sanity=True, all_backbones_finished=False)
    unboxed = {"method": "gradcam", "pointing_game": None, "randomisation": {"passed": True, "spearman_median": 0.1},
               "faithfulness": {}}
    gates = {g.name: g for g in evaluate_gates(_results([unboxed]), config, None)}
    assert gates["min_pointing_game"].status == "WARN" and "not evaluated" in gates["min_pointing_game"].message
    assert gates["explanation_sanity"].status == "PASS"
    gates = {g.name: g for g in evaluate_gates(_results(None), config, None)}
    assert gates["min_pointing_game"].status == "FAIL" and gates["explanation_sanity"].status == "FAIL"


# ------------------------------------------------------------------------------ manifest

@pytest.mark.parametrize("value, key", [('"lime"', "gradcam.method"), ('["gradcam", "x"]', "gradcam.method[1]"),
                                        ('["gradcam", "gradcam"]', "gradcam.method"), ("3", "gradcam.method"),
                                        ("[]", "gradcam.method")])
def test_bad_method_exits_2_naming_the_key(tmp_path, value, key):
    path = write_manifest(tmp_path / "m.toml", f"""
[experiment]
name = "x"
[data]
root = "{tmp_path}"
[[backbones]]
name = "EfficientNetB0"
[gradcam]
method = {value}
""")
    result = CliRunner().invoke(main, ["check-data", str(path)])
    assert result.exit_code == 2 and f"'{key}'" in result.stderr


# ------------------------------------------------------------------------------ a real tiny audit

@pytest.fixture(scope="module")
@trains
def audit(tmp_path_factory):
    """A tiny audit with two methods; "gradcam++" is swapped for the model-blind edge explainer."""
    import engine.explain.checks as checks_mod
    from engine.data.synth import write_dataset

    tmp = tmp_path_factory.mktemp("x18")
    write_dataset(tmp / "data", per_class=12, size=64, seed=5)
    tiny_backbone(tmp / "tiny.keras")
    path = write_manifest(tmp / "audit.toml", manifest_text(tmp, "expl", extra="""
[gates]
explanation_sanity = true
min_pointing_game = 0.0
""").replace("""[gradcam]
enabled = false""", """[gradcam]
images_per_class = 1
method = ["gradcam", "gradcam++"]
check_images = 4
cascade_steps = 2
faithfulness_steps = 3"""))
    real = checks_mod.explainer
    mp = pytest.MonkeyPatch()
    mp.setattr(checks_mod, "explainer", lambda method, **kw: edge_explainer if method == "gradcam++" else real(method, **kw))
    try:
        result = CliRunner().invoke(main, [str(path), "--output-dir", str(tmp / "out"), "--run-id", "r1", "--quiet"])
    finally:
        mp.undo()
    return tmp, tmp / "out" / "expl" / "r1", result


def test_broken_explainer_fails_the_sanity_gate_with_exit_1(audit):
    _, run_dir, result = audit
    assert result.exit_code == 1, result.output
    results = json.loads((run_dir / "results.json").read_text())
    gate = next(g for g in results["gates"]["gates"] if g["name"] == "explanation_sanity")
    assert gate["status"] == "FAIL" and "gradcam++" in gate["message"]
    assert "FAIL explanation_sanity[tiny]" in result.stderr
    blocks = results["backbones"][0]["explanations"]
    assert [b["method"] for b in blocks] == ["gradcam", "gradcam++"]
    assert blocks[1]["randomisation"]["passed"] is False


def test_audit_results_validate_and_the_report_shows_every_check(audit):
    from engine.results import read_results

    _, run_dir, _ = audit
    results = read_results(run_dir)  # schema-checked
    html = (run_dir / "report.html").read_text()
    assert "Explanation reliability" in html
    located = results["backbones"][0]["localisation"]
    assert [b["method"] for b in located] == ["gradcam", "gradcam++"]
    for block in located:  # every boxed tumour test image, once per method
        assert block["total"] == block["n_annotated"] == sum(results["data"]["counts"]["test"][c]
                                                             for c in ("glioma", "meningioma", "pituitary"))
        assert (run_dir / block["figure"]["path"]).is_file() and block["figure"]["alt"]
    assert html.count("Localisation on the tumour outlines") == 1 and html.count('class="data localisation"') == 2
    for block in results["backbones"][0]["explanations"]:
        assert CHECK_KEYS <= set(block) and "pointing_game" not in block
        assert (run_dir / block["figure"]["path"]).is_file()
        assert block["figure"]["caption"].replace("’", "'") in html.replace("&#39;", "'").replace("’", "'")
    for label in ("Grad-CAM", "Grad-CAM++"):
        assert f"<h5>{label}</h5>" in html
    assert html.count("Localisation: ") == 2 and html.count("Randomisation: after") == 2
    assert html.count("Faithfulness: deleting") == 2 and "Most faithful of the 2 methods" in html


def test_evaluate_adds_the_explanation_blocks(audit):
    tmp, run_dir, _ = audit
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--data", str(tmp / "data" / "Testing")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    blocks = report["backbones"][0]["explanations"]
    assert [b["method"] for b in blocks] == ["gradcam", "gradcam++"]
    for block in blocks:
        assert CHECK_KEYS <= set(block) and "pointing_game" not in block
        assert (run_dir / block["figure"]["path"]).is_file() and block["figure"]["path"].startswith("external/")
    located = report["backbones"][0]["localisation"]  # exactly one pointing game per model and method
    assert "pointing_game" not in report["backbones"][0] and [b["method"] for b in located] == ["gradcam", "gradcam++"]
    assert all(b["total"] >= 1 and b["rate"] is not None and b["iou"] is not None for b in located)
    from engine.results import read_results

    assert read_results(run_dir)["external"][0]["backbones"][0]["explanations"] == blocks


def test_explanation_blocks_read_into_the_typed_tree_unchanged(audit):
    _, run_dir, _ = audit
    typed = assert_reads_back_unchanged(json.loads((run_dir / "results.json").read_text()))
    checks = typed.backbones[0].explanations
    assert [c.method for c in checks] == ["gradcam", "gradcam++"] and checks[1].randomisation.passed is False
