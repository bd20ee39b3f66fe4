"""Issue 17, subgroups and patient leakage wired through a run: ``[subgroups]`` on synthetic DICOM
(``auditrun synth-data --format dicom --site-noise S2=1.0``: site S2's phantoms drown in noise), the
predictions CSVs' metadata columns, results.json ``backbones[].subgroups`` / ``subgroup_gap``, the
report's subgroup section and forest plot, and the ``max_patient_leakage`` / ``max_subgroup_gap``
gates.

The always-on run trains the tiny CNN for one epoch at 32 px (it learns little: the wiring is what
is checked). The planted site effect needs a model that reads the clean site well: the offline
Lite0 backbone (96 px, frozen, about 20 s), skipped without it.
"""

from __future__ import annotations

import csv
import html as html_mod
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from conftest import as_path, assert_reads_back_unchanged, needs_lite0, shown_names, write_manifest, LITE0, trains
from engine.cli import main
from engine.errors import InputError
from engine.evaluation.predictions import METADATA_COLUMNS
from engine.evaluation.subgroups import audit_subgroups, record_values
from engine.nightly.gates import GatesConfig, evaluate_gates
from engine.results import load_schema, validate_results
from test_hospital_data import TRUTH, assert_no_planted_value, files_under
from test_nightly_e2e import tiny_backbone

BY = ["site", "scanner", "sex", "age_band"]
TUMOUR = ["glioma", "meningioma", "pituitary"]
ENTRY_KEYS = {"group", "n", "accuracy", "macro_f1", "recall", "ci"}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def site_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sites")
    result = invoke("synth-data", tmp / "data", "--format", "dicom", "--patients-per-class", 12,
                    "--slices-per-patient", 4, "--sites", 2, "--size", 64, "--site-noise", "S2=1.0")
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp / "data" / TRUTH).read_text())
    tiny_backbone(tmp / "tiny.keras")
    return tmp, truth


def manifest(tmp: Path, name: str, *, backbone: str, by=BY, gates: str = "", extra: str = "") -> Path:
    return write_manifest(tmp / f"{name}.toml", f"""
[experiment]
name = "{name}"
seed = 3
output_dir = "{tmp / 'out'}"
{extra}
[data]
root = "{tmp / 'data'}"
validation_fraction = 0.25
{backbone}
[gradcam]
enabled = false
[evaluation]
bootstrap_resamples = 200
[integrity]
shift = false
[report]
formats = ["html"]
[subgroups]
by = {json.dumps(by)}
min_n = 10
[gates]
{gates}
""")


TINY = """
[training]
epochs = 1
batch_size = 8
[[backbones]]
name = "tiny"
file = "{tmp}/tiny.keras"
preprocessing = "unit"
input_size = 32
train_backbone = true
"""


def run_dir_of(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def institution(truth: dict) -> dict[str, str]:
    return {s["code"]: s["institution"] for s in truth["site_profiles"]}


@pytest.fixture(scope="module")
@trains
def tiny_runs(site_data):
    """Two runs of one manifest with reuse = "if-unchanged": the second reuses the first's model."""
    tmp, truth = site_data
    m = manifest(tmp, "wiring", backbone=TINY.format(tmp=tmp), extra='reuse = "if-unchanged"',
                 gates="max_patient_leakage = 0\nmax_subgroup_gap = 1.0")
    first, second = invoke("run", m), invoke("run", m)
    return first, second, truth


# ------------------------------------------------------------------------------ results.json and CSVs


def test_results_hold_subgroups_of_the_contract_shape_valid_against_the_schema(tiny_runs):
    # mutations: run_post_stages without subgroup_stage -> no "subgroups" key; a schema $def that
    # requires "pooled" -> validate_results raises
    first, _, truth = tiny_runs
    run = run_dir_of(first)
    results = json.loads((run / "results.json").read_text())
    validate_results(results, run / "results.json")
    backbone = results["backbones"][0]
    n_test = backbone["test"]["n_images"]
    groups = backbone["subgroups"]
    assert list(groups) == BY
    for attribute, entries in groups.items():
        assert sum(e["n"] for e in entries) == n_test, attribute
        for e in entries:
            assert ENTRY_KEYS <= set(e) and set(e["recall"]) == set(TUMOUR)
            assert set(e["ci"]) == {"accuracy", "macro_f1", "recall"}
    assert {e["group"] for e in groups["site"]} == set(institution(truth).values())
    assert {e["group"] for e in groups["sex"]} <= {"F", "M"}
    assert [e["group"] for e in groups["age_band"]] == [b for b in ("<40", "40-59", "60+")
                                                        if b in {e["group"] for e in groups["age_band"]}]
    gap = backbone["subgroup_gap"]
    assert set(gap["attributes"]) == set(BY) and gap["unavailable"] == [] and gap["min_n"] == 10
    measured = {a: g["gap"] for a, g in gap["attributes"].items() if g["gap"] is not None}
    assert gap["largest"]["gap"] == max(measured.values())


def test_predictions_csvs_keep_the_metadata_and_only_pseudonyms(tiny_runs):
    # mutation: write_predictions stores r.meta's site for "scanner" -> the scanner check fails
    first, _, truth = tiny_runs
    run = run_dir_of(first)
    results = json.loads((run / "results.json").read_text())
    by_file = {f: p for p in truth["patients"] for files in p["files"].values() for f in files}
    by_file = {ref: by_file[f] for ref, f in shown_names(run).items()}  # artefacts name files by reference
    sites = {s["code"]: s for s in truth["site_profiles"]}
    for name in ("tiny.csv", "tiny.validation.csv"):
        with open(run / "predictions" / name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and list(rows[0])[:8] == ["path", *METADATA_COLUMNS]
        for row in rows:
            p = by_file[row["path"]]
            profile = sites[p["site"]]
            assert row["frame"] == "0"
            assert re.fullmatch(r"p-[0-9a-f]{16}", row["patient"])
            assert row["site"] == profile["institution"]
            assert row["scanner"] == f"{profile['manufacturer']} {profile['model']} {profile['field_strength']:g} T"
            assert (row["sex"], float(row["age"])) == (p["sex"], p["age"])
            assert row["age_band"] == ("<40" if p["age"] < 40 else "40-59" if p["age"] < 60 else "60+")
    with open(run / "predictions" / "tiny.csv", newline="") as fh:
        leaked = {r["patient"] for r in csv.DictReader(fh) if by_file[r["path"]]["leaked"]}
    assert leaked == set(results["integrity"]["cross_split_patient_ids"])
    assert_no_planted_value(files_under(run / "predictions"), truth)


# ------------------------------------------------------------------------------ patient leakage


def test_patient_leakage_is_counted_dropped_from_leakage_free_figures_and_gated(tiny_runs):
    # mutations: _patient_leakage_gate with `count < limit` -> the limit 4 FAILs; the report's
    # patient_leakage_sentence counting leaked patients' files in training -> another M
    first, _, truth = tiny_runs
    assert first.exit_code == 1, first.output  # max_patient_leakage = 0 with 4 leaked patients
    run = run_dir_of(first)
    results = json.loads((run / "results.json").read_text())
    integrity = results["integrity"]
    leaked_test = sorted(f for p in truth["patients"] if p["leaked"] for f in p["files"]["Testing"])
    assert integrity["cross_split_patients"] == truth["leaked_patients"] == 4
    assert sorted(as_path(f, shown_names(run)) for f in integrity["patient_leaked_test_files"]) == leaked_test
    backbone = results["backbones"][0]
    assert backbone["leakage_free"]["n_images"] == backbone["test"]["n_images"] - len(leaked_test)

    (gate,) = [g for g in results["gates"]["gates"] if g["name"] == "max_patient_leakage"]
    assert (gate["status"], gate["value"], gate["threshold"]) == ("FAIL", 4.0, 0.0)
    assert all(i in gate["message"] for i in integrity["cross_split_patient_ids"])
    assert "FAIL max_patient_leakage" in first.stderr
    for limit, status in ((3, "FAIL"), (4, "PASS"), (10, "PASS")):
        (g,) = evaluate_gates(results, GatesConfig(all_backbones_finished=False, max_patient_leakage=limit), None)
        assert (g.name, g.status, g.value) == ("max_patient_leakage", status, 4.0), limit
    html = (run / "report.html").read_text()
    assert ('<th scope="row">max_patient_leakage</th><td>whole run</td><td><span class="status-FAIL">FAIL</span></td>'
            '<td class="num">4</td><td class="num">0</td>') in html
    assert (f"4 patients have images in both training and test; their {len(leaked_test)} test images are "
            "left out of the leakage-free figures.") in html


def test_patient_leakage_gate_without_patient_ids_warns_and_without_an_audit_fails():
    gate = GatesConfig(all_backbones_finished=False, max_patient_leakage=0)
    (warned,) = evaluate_gates({"integrity": {"patients": {}, "cross_split_patients": 0}, "backbones": []}, gate, None)
    assert warned.status == "WARN" and "not evaluated" in warned.message and warned.value is None
    (failed,) = evaluate_gates({"backbones": []}, gate, None)
    assert failed.status == "FAIL" and failed.value is None
    for bad in (-1, 0.5, True):
        with pytest.raises(InputError, match="gates.max_patient_leakage"):
            GatesConfig(max_patient_leakage=bad)
    assert GatesConfig(warn_only=["max_patient_leakage"]).is_warn_only("max_patient_leakage")


# ------------------------------------------------------------------------------ report and reuse


def test_the_report_shows_each_attribute_and_a_forest_plot_with_the_numbers(tiny_runs):
    # mutation: _attach_figures skips subgroup_forest -> no forest figure in the report
    first, _, _ = tiny_runs
    run = run_dir_of(first)
    backbone = json.loads((run / "results.json").read_text())["backbones"][0]
    html = (run / "report.html").read_text()
    section = html[html.index('id="subgroups"'):]
    section = section[:section.index("</section>")]
    assert all(f"{label}: test metrics of tiny per group" in section
               for label in ("Site", "Scanner", "Sex", "Age band"))
    (alt,) = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="(Forest plot[^"]+)"', section)
    alt = html_mod.unescape(alt)
    for attribute, entries in backbone["subgroups"].items():
        for e in entries:
            assert f"{e['group']} {e['macro_f1']:.2f}" in alt and f"n={e['n']}" in alt
            cell = f"<th scope=\"row\">{html_mod.escape(e['group'], quote=False)}</th><td class=\"num\">{e['n']}</td>"
            assert cell in section
    largest = backbone["subgroup_gap"]["largest"]
    assert f"Largest gap: {largest['gap']:.2f} (95 % CI {largest['ci_low']:.2f} to {largest['ci_high']:.2f})" in alt
    assert (run / "figures" / "tiny_subgroups.png").is_file()


def test_a_reused_run_recomputes_the_subgroups_from_the_saved_predictions(tiny_runs):
    # mutation: subgroup_stage only for backbones trained in this run -> the reused run has no
    # subgroups (adopt_entry strips them) and no "largest subgroup gap" line
    first, second, _ = tiny_runs
    assert second.exit_code == 1, second.output
    results = json.loads((run_dir_of(second) / "results.json").read_text())
    assert results["run"]["reused_from"] == run_dir_of(first).name
    before = json.loads((run_dir_of(first) / "results.json").read_text())["backbones"][0]
    after = results["backbones"][0]
    assert after["subgroups"] == before["subgroups"] and after["subgroup_gap"] == before["subgroup_gap"]
    assert "largest subgroup gap in macro-F1" in second.stderr


# ------------------------------------------------------------------------------ the planted site effect


@needs_lite0
@pytest.mark.slow
def test_a_planted_site_effect_is_a_gap_whose_interval_excludes_zero_and_trips_the_gate(site_data):
    # mutations: subgroup_gap's interval from unpaired resamples; the gate's `gap <= limit` flipped
    tmp, truth = site_data
    backbone = f"""
[training]
epochs = 15
learning_rate = 0.003
batch_size = 8
[[backbones]]
name = "lite0"
file = "{LITE0}"
input_size = 96
"""
    result = invoke("run", manifest(tmp, "site-effect", backbone=backbone, by=["site", "sex"],
                                    gates="max_subgroup_gap = 0.2"))
    assert result.exit_code == 1, result.output
    results = json.loads((run_dir_of(result) / "results.json").read_text())
    largest = results["backbones"][0]["subgroup_gap"]["largest"]
    names = institution(truth)
    assert largest["attribute"] == "site"
    assert (largest["higher"]["group"], largest["lower"]["group"]) == (names["S1"], names["S2"])
    # measured: S1 0.93, S2 0.22 (chance 0.25); gap 0.71, CI 0.51 to 0.89
    assert largest["ci_low"] > 0 and largest["gap"] > 0.3
    (gate,) = [g for g in results["gates"]["gates"] if g["name"] == "max_subgroup_gap"]
    assert gate["status"] == "FAIL" and gate["value"] == largest["gap"]
    assert "FAIL max_subgroup_gap[lite0]" in result.stderr and names["S2"] in result.stderr


# ------------------------------------------------------------------------------ units


def test_attributes_no_image_records_are_unavailable_not_one_unknown_group():
    # mutation: audit_subgroups passes every attribute to subgroup_results -> site has one "unknown" group
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    values = {"site": [None] * 60, "sex": ["F", "M"] * 30, "scanner": [""] * 60, "age_band": [None] * 60}
    block = audit_subgroups(y, y, values, ["glioma", "meningioma", "no_tumor", "pituitary"], BY, min_n=10,
                            n_resamples=50, seed=1)
    assert block["subgroups"]["site"] == [] and block["subgroups"]["scanner"] == []
    assert [e["group"] for e in block["subgroups"]["sex"]] == ["F", "M"]
    gap = block["subgroup_gap"]
    assert gap["unavailable"] == ["site", "scanner", "age_band"]
    assert list(gap["attributes"]) == BY and "no test image records its site" in gap["attributes"]["site"]["note"]
    schema = load_schema("results")
    backbone_schema = Draft202012Validator({"$ref": "#/$defs/backbone", "$defs": schema["$defs"]})
    assert not list(backbone_schema.iter_errors({"name": "a", "status": "failed", **block}))
    assert list(backbone_schema.iter_errors({"name": "a", "status": "failed", "subgroups": {"site": [{"group": "A"}]}}))
    entry = {"name": "a", "status": "ok", "test": {"macro_f1": 0.5}, **block}
    none = audit_subgroups(y, y, {a: [None] * 60 for a in BY}, ["glioma", "meningioma", "no_tumor", "pituitary"],
                           BY, n_resamples=0)
    assert none["subgroup_gap"]["largest"] is None and none["subgroups"] == {a: [] for a in BY}
    entry.update(none)
    (gate,) = evaluate_gates({"best_backbone": {"name": "a"}, "backbones": [entry]},
                             GatesConfig(all_backbones_finished=False, max_subgroup_gap=0.1), None)
    assert gate.status == "WARN" and "no test image records site, scanner, sex, age_band" in gate.message


def test_the_forest_plot_and_the_section_name_pooled_groups(tmp_path):
    # mutation: _pooled_note returns None -> the note naming "tiny-site" is missing
    from engine.report.figures import subgroup_forest
    from engine.report.subgroups import subgroup_view

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 70)
    pred = np.where(np.arange(70) < 30, y, (y + 1) % 4)  # site A all right, B all wrong
    site = ["A"] * 30 + ["B"] * 34 + ["tiny-site"] * 6
    block = audit_subgroups(y, pred, {"site": site}, ["glioma", "meningioma", "no_tumor", "pituitary"], ["site"],
                            min_n=10, n_resamples=100, seed=0)
    backbone = {"name": "m", "display_name": "m", "status": "ok", "test": {"macro_f1": 0.4}, **block}
    view = subgroup_view(backbone)
    (table,) = view.tables
    assert [r.group for r in table.rows] == ["A", "B", "other"]
    assert table.pooled_note.startswith("Site groups with fewer than 10 test images are pooled into “other” "
                                        "(6 images): tiny-site.")
    assert "“other” itself has fewer than 10 images" in table.pooled_note
    assert "higher for A (1.000, 30 images) than for B (0.000, 34 images)" in table.gap_sentence
    assert "The interval excludes 0" in table.gap_sentence
    fig = subgroup_forest(backbone, tmp_path)
    assert (tmp_path / fig.path).is_file()
    assert "site other 0.00" in fig.alt and "pooled from tiny-site" in fig.alt
    assert "Dotted line: macro-F1 on the whole test split, 0.40." in fig.caption


def test_an_age_outside_the_bands_names_the_file(tmp_path):
    from engine.data.discovery import ImageRecord

    rec = ImageRecord(tmp_path / "Testing" / "a.dcm", "test", "glioma", meta={"age": 250.0})
    with pytest.raises(InputError, match=r"Testing/a\.dcm: age 250\.0 lies outside"):
        record_values([rec], (0, 40, 60, 200), root=tmp_path, strict=True)
    assert record_values([rec], (0, 40, 60, 200))["age_band"] == [None]
    young = ImageRecord(tmp_path / "b.dcm", "test", "glioma", meta={"age": 30.0, "site": "X"})
    values = record_values([young, ImageRecord(tmp_path / "c.png", "test", "glioma")], (0, 18, 65, 120))
    assert values == {"site": ["X", None], "scanner": [None, None], "sex": [None, None], "age_band": ["18-64", None]}


@pytest.mark.slow
def test_a_run_on_plain_images_lists_the_attributes_as_unavailable_and_gates_warn(tmp_path):
    # mutation: audit_subgroups passing every attribute on -> "site" gets one group "unknown" of
    # every test image instead of an empty list (max_subgroup_gap would WARN either way)
    result = invoke("synth-data", tmp_path / "data", "--format", "png16", "--patients-per-class", 4,
                    "--slices-per-patient", 3)
    assert result.exit_code == 0, result.output
    tiny_backbone(tmp_path / "tiny.keras")
    m = manifest(tmp_path, "plain", backbone=TINY.format(tmp=tmp_path),
                 gates="max_patient_leakage = 0\nmax_subgroup_gap = 0.1")
    result = invoke("run", m)
    assert result.exit_code == 0, result.output  # both gates WARN "not evaluated", none FAILs
    run = run_dir_of(result)
    results = json.loads((run / "results.json").read_text())
    backbone = results["backbones"][0]
    assert backbone["subgroups"] == {a: [] for a in BY}
    assert backbone["subgroup_gap"]["unavailable"] == BY and backbone["subgroup_gap"]["largest"] is None
    statuses = {g["name"]: (g["status"], g["message"]) for g in results["gates"]["gates"]}
    status, message = statuses["max_patient_leakage"]
    assert status == "WARN" and "no image carries a patient id" in message
    assert statuses["max_subgroup_gap"][0] == "WARN"
    assert "warning: subgroups: no test image records site, scanner, sex, age_band" in result.stderr
    html = (run / "report.html").read_text()
    assert "Not available: no test image records its site, scanner, sex, age band" in html
    assert "patients have images in both training and test" not in html
    with open(run / "predictions" / "tiny.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r[c] == "" for r in rows for c in METADATA_COLUMNS[1:])


def test_site_noise_is_checked_and_recorded(site_data, tmp_path):
    _, truth = site_data
    assert {s["code"]: s["noise"] for s in truth["site_profiles"]} == {"S1": 0.02, "S2": 1.0}
    for value, needle in (("S9=1", "site 'S9' (site noise) is not one of S1, S2"), ("S2", "is not SITE=NOISE"),
                          ("S2=11", "must be a number in [0, 10]")):
        result = invoke("synth-data", tmp_path / value, "--format", "dicom", "--site-noise", value)
        assert result.exit_code == 2 and needle in result.output, (value, result.output)


def test_subgroup_blocks_read_into_the_typed_tree_unchanged(tiny_runs):
    first, second, _ = tiny_runs
    for result in (first, second):
        typed = assert_reads_back_unchanged(json.loads((run_dir_of(result) / "results.json").read_text()))
        assert typed.backbones[0].subgroups and typed.backbones[0].subgroup_gap.attributes
