"""Reviewer-ready reports (issue 29): CLAIM 2024 and TRIPOD+AI filled from the run, the Model facts
page, and the reviewer-facing snapshots of both.

The inputs are tests/fixtures/smoke_run (a real smoke audit's results.json and manifest copy, no
``[study]``) and the same run with the filled ``[study]`` of experiments/lite0-study.toml: what
each checklist item says is read from the run, so the counts below are the run's, not ours.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import manifest
from engine.cli import main
from engine.report import build_report, load_results, render_report
from engine.report.checklists import (CLAIM_2024, CSV_COLUMNS, STATUSES, TRIPOD_AI, build_checklists,
                                      checklist_csv)
from engine.report.study import StudyConfig
from engine.results import RunResults

from tests.conftest import needs_poppler
from tests.test_report_snapshot import NOW, SMOKE, check_snapshot, parse

REPO = Path(__file__).resolve().parents[1]
STUDY_MANIFEST = REPO / "experiments" / "lite0-study.toml"


def _settings(run: Path, extra_toml: str = "") -> manifest.Manifest:
    if extra_toml:
        copy = run / "manifest.toml"
        copy.write_text(copy.read_text(encoding="utf-8") + "\n" + extra_toml, encoding="utf-8")
    return manifest.run_settings(run)


def _study_tables() -> str:
    """The ``[report]`` checklists line and the ``[study]`` table of experiments/lite0-study.toml."""
    raw = tomllib.loads(STUDY_MANIFEST.read_text(encoding="utf-8"))
    lines = ["[study]"] + [f"{k} = {json.dumps(v)}" for k, v in raw["study"].items()]
    return "\n".join(lines) + "\n"


@pytest.fixture()
def smoke_run(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(SMOKE, run)
    return run


def _sections_of(run: Path, settings) -> dict[str, str]:
    return build_report(load_results(run), now=NOW, settings=settings).sections


def _checklist(run: Path, settings, key: str):
    (checklist,) = build_checklists(RunResults.from_json(load_results(run)), settings,
                                    _sections_of(run, settings), keys=[key])
    return checklist


# ------------------------------------------------------------------------------------------------
# The guidelines themselves


def test_guidelines_have_every_item_once_in_order():
    assert [n for n, *_ in CLAIM_2024] == [str(i) for i in range(1, 45)]
    assert [n for n, *_ in TRIPOD_AI] == [str(i) for i in range(1, 28)]
    assert all(topic.strip() for _, _, topic, _ in CLAIM_2024 + TRIPOD_AI)


def test_manifest_keys_and_errors(tmp_path):
    m = manifest.loads('[study]\nfunding = "none"\n[report]\nchecklists = ["tripod-ai"]\n[[backbones]]\nname = "VGG16"\n',
                       base=tmp_path, check_data=False)
    assert m.study.funding == "none" and m.report.checklists == ["tripod-ai"]
    assert manifest.loads('[[backbones]]\nname = "VGG16"\n', base=tmp_path, check_data=False).report.checklists == [
        "claim-2024"]
    with pytest.raises(Exception, match=r"study\.fundng"):
        manifest.loads('[study]\nfundng = "x"\n[[backbones]]\nname = "VGG16"\n', base=tmp_path, check_data=False)
    with pytest.raises(Exception, match=r"report\.checklists\[0\].*'claim-2024', 'tripod-ai'"):
        manifest.loads('[report]\nchecklists = ["claim"]\n[[backbones]]\nname = "VGG16"\n', base=tmp_path,
                       check_data=False)


def test_study_example_manifest_fills_every_key():
    m = manifest.load(STUDY_MANIFEST, check_data=False)
    assert m.report.checklists == ["claim-2024", "tripod-ai"]
    empty = [f.name for f in fields(StudyConfig) if not getattr(m.study, f.name).strip()]
    assert empty == []


# ------------------------------------------------------------------------------------------------
# From the run alone (no [study])


@pytest.mark.parametrize("key, minimum", [("claim-2024", 30), ("tripod-ai", 20)])
def test_without_study_most_items_come_from_the_run(smoke_run, key, minimum):
    settings = _settings(smoke_run)
    checklist = _checklist(smoke_run, settings, key)
    counts = checklist.counts
    assert sum(counts.values()) == len(checklist.items) == {"claim-2024": 44, "tripod-ai": 27}[key]
    assert counts["from-run"] + counts["drafted"] >= minimum, counts
    sections = _sections_of(smoke_run, settings)
    for item in checklist.items:
        assert item.status in STATUSES and item.answer.strip()
        if item.status in ("from-run", "drafted") and item.source.startswith("results.json"):
            # an answer measured by the run points at the section that shows it, and that section exists
            assert item.section in sections, (item.item, item.section)
        if item.status == "author-input":
            keys = re.findall(r"\[study\] ([a-z_]+)", item.answer)
            assert keys and all(hasattr(StudyConfig(), k) for k in keys), (item.item, item.answer)
        if item.status == "not-applicable":
            assert item.answer.startswith("Not applicable: ") and len(item.answer) > 25


def test_answers_carry_the_runs_numbers(smoke_run):
    """Item 37 states the chosen model's test figures as results.json has them."""
    results = load_results(smoke_run)
    best = next(b for b in results["backbones"] if b["name"] == results["best_backbone"]["name"])
    item = {i.item: i for i in _checklist(smoke_run, _settings(smoke_run), "claim-2024").items}
    assert f"test accuracy {best['test']['accuracy']:.3f}" in item["37"].answer
    assert f"macro-F1 {best['test']['macro_f1']:.3f}" in item["37"].answer
    assert str(results["experiment"]["seed"]) in item["19"].answer


def test_filled_study_answers_every_item(smoke_run):
    settings = _settings(smoke_run, _study_tables())
    for key in ("claim-2024", "tripod-ai"):
        checklist = _checklist(smoke_run, settings, key)
        assert checklist.counts["author-input"] == 0, [(i.item, i.answer) for i in checklist.items
                                                      if i.status == "author-input"]
        stated = [i for i in checklist.items if i.source.startswith("[study]") and i.status == "from-run"]
        assert stated and all(i.status_label == "Stated by the authors" for i in stated)
    item = {i.item: i for i in _checklist(smoke_run, settings, "claim-2024").items}
    # "Not applicable: ..." in [study] is a reasoned not-applicable; anything else is the answer
    assert item["34"].status == "not-applicable" and "not a clinical trial" in item["34"].answer
    assert item["44"].status == "from-run" and "worked example" in item["44"].answer


def test_one_study_key_changes_only_its_items(smoke_run):
    before = {i.item: i for i in _checklist(smoke_run, _settings(smoke_run), "claim-2024").items}
    after = {i.item: i for i in _checklist(smoke_run, _settings(smoke_run, '[study]\nfunding = "Grant X"\n'),
                                           "claim-2024").items}
    changed = [k for k in before if before[k] != after[k]]
    assert changed == ["44"]
    assert before["44"].status == "author-input" and after["44"].answer == "Grant X"


# ------------------------------------------------------------------------------------------------
# Outputs: CSV, Markdown, results.json, the report section; `auditrun render` rebuilds them


def test_render_writes_supplement_files_and_results_block(smoke_run):
    (smoke_run / "manifest.toml").write_text((smoke_run / "manifest.toml").read_text(encoding="utf-8")
                                             + '\n[study]\nfunding = "Grant X"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["render", str(smoke_run), "--format", "html"])
    assert result.exit_code == 0, result.output
    assert "checklist-claim-2024.csv" in result.output
    rows = list(csv.reader(io.StringIO((smoke_run / "checklist-claim-2024.csv").read_text(encoding="utf-8"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 45)]
    assert {r[1] for r in rows[1:]} <= set(STATUSES)
    html = (smoke_run / "report.html").read_text(encoding="utf-8")
    ids = {attrs["id"] for _, attrs in parse(html).tags if attrs.get("id")}
    for r in rows[1:]:
        if r[3]:
            assert r[3].startswith("report.html#") and r[3].split("#", 1)[1] in ids, r
    assert rows[44][1:3] == ["from-run", "Grant X"]
    md = (smoke_run / "checklist-claim-2024.md").read_text(encoding="utf-8")
    assert md.count("\n| ") == 45 and "Tejani" in md
    stored = RunResults.read(smoke_run)  # schema-checked
    assert [c.key for c in stored.checklists] == ["claim-2024"]
    assert stored.checklists[0].items[43].answer == "Grant X"
    # every link in the report's checklist section reaches an element of the report
    section = html[html.index('id="checklists"'):html.index('id="provenance"')]
    for target in re.findall(r'href="#([^"]+)"', section):
        assert target in ids, target
    # the authors change their answer: render again rebuilds files and block
    text = (smoke_run / "manifest.toml").read_text(encoding="utf-8").replace("Grant X", "Grant Y")
    (smoke_run / "manifest.toml").write_text(text, encoding="utf-8")
    assert CliRunner().invoke(main, ["render", str(smoke_run), "--format", "html"]).exit_code == 0
    assert RunResults.read(smoke_run).checklists[0].items[43].answer == "Grant Y"
    assert "Grant Y" in (smoke_run / "checklist-claim-2024.csv").read_text(encoding="utf-8")


def test_render_without_settings_shows_the_stored_checklists(smoke_run):
    render_report(smoke_run, formats=("html",), now=NOW, settings=_settings(smoke_run, '[study]\nfunding = "G"\n'))
    (smoke_run / "checklist-claim-2024.csv").unlink()
    render_report(smoke_run, formats=("html",), now=NOW)  # from results.json alone
    assert ",from-run,G," in (smoke_run / "checklist-claim-2024.csv").read_text(encoding="utf-8")
    assert "Reporting checklist" in (smoke_run / "report.html").read_text(encoding="utf-8")


def test_no_checklists_when_none_are_asked_for(smoke_run):
    settings = _settings(smoke_run)
    render_report(smoke_run, formats=("html",), now=NOW, settings=settings)
    assert len(list(smoke_run.glob("checklist-*"))) == 2
    settings.report.checklists = []
    render_report(smoke_run, formats=("html",), now=NOW, settings=settings)
    assert not list(smoke_run.glob("checklist-*")), "a checklist no longer asked for was left behind"
    assert RunResults.read(smoke_run).checklists is None
    assert 'id="checklists"' not in (smoke_run / "report.html").read_text(encoding="utf-8")


def test_csv_quotes_answers_with_commas_and_newlines(smoke_run):
    checklist = _checklist(smoke_run, _settings(smoke_run, '[study]\nfunding = "A, B\\n\\"C\\""\n'), "claim-2024")
    rows = list(csv.reader(io.StringIO(checklist_csv(checklist))))
    assert rows[44][2] == 'A, B\n"C"' and len(rows) == 45


# ------------------------------------------------------------------------------------------------
# Model facts


def _best(results: dict) -> dict:
    return next(b for b in results["backbones"] if b["name"] == results["best_backbone"]["name"])


def _expected_values(results: dict) -> dict[str, float]:
    """What the Model facts page must show, computed here from results.json alone."""
    best = _best(results)
    out = {}
    for key, label in (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"), ("macro_f1", "Macro-F1")):
        out[f"{label} (test)"] = best["test"][key]
        if best.get("leakage_free"):
            out[f"{label} (leakage-free)"] = best["leakage_free"][key]
    classes = results["data"]["class_names"]
    j = classes.index("no_tumor")
    for where, block in (("test", best["test"]), ("leakage-free", best.get("leakage_free"))):
        if not block:
            continue
        cm = block["confusion_matrix"]
        tumours = [i for i in range(len(classes)) if i != j]
        total = sum(sum(cm[i]) for i in tumours)
        if total:
            out[f"missed-tumour rate ({where})"] = sum(cm[i][j] for i in tumours) / total
    if best.get("calibration"):
        out["ECE after"] = best["calibration"]["ece_after"]
        out["ECE before"] = best["calibration"]["ece_before"]
    return out


def test_model_facts_values_equal_results_json():
    results = load_results(SMOKE)
    facts = build_report(results, now=NOW).model_facts
    assert facts is not None and facts.model == _best(results)["display_name"]
    expected = _expected_values(results)
    assert set(facts.values) == set(expected)
    for key, value in expected.items():
        assert facts.values[key] == pytest.approx(value, abs=1e-9), key
    assert len({"Summary", "Mechanism"}) == 2 and facts.summary and facts.mechanism and facts.uses and facts.other


def test_model_facts_warns_what_the_run_measured():
    results = load_results(SMOKE)
    quiet = build_report(results, now=NOW).model_facts.warnings
    results["integrity"]["cross_split_near"] = 40  # half the test split now has a twin in training
    results["integrity"]["cross_split_near_fraction"] = 0.5
    best = _best(results)
    best["calibration"]["ece_after"] = 0.2
    best["weights"]["used"] = "random"
    loud = build_report(results, now=NOW).model_facts.warnings
    assert not any(w.startswith(("Leakage", "Calibration", "Initialisation")) for w in quiet)
    assert any(w.startswith("Leakage: 40 of 80") for w in loud)
    assert any("0.200" in w for w in loud if w.startswith("Calibration"))
    assert any(w.startswith("Initialisation") for w in loud)


def test_no_model_facts_without_a_chosen_model():
    results = load_results(SMOKE)
    results["best_backbone"] = None
    report = build_report(results, now=NOW)
    assert report.model_facts is None and "model-facts" not in report.sections


def _pdf_pages(pdf: Path) -> list[str]:
    out = subprocess.run(["pdftotext", "-layout", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return out.split("\f")


def _body(page: str) -> list[str]:
    """A page's lines without the running header (first line) and footer (last line)."""
    lines = [line.strip() for line in page.splitlines() if line.strip()]
    return lines[1:-1]


@pytest.fixture(scope="module")
def smoke_pdf(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("facts") / "run"
    shutil.copytree(SMOKE, run)
    paths = render_report(run, now=NOW, settings=manifest.run_settings(run))
    return {"run": run, "paths": paths, "pages": _pdf_pages(paths["pdf"])}


@needs_poppler
@pytest.mark.slow
def test_model_facts_is_page_two_and_fits_on_it(smoke_pdf):
    pages = smoke_pdf["pages"]
    body2, body3 = _body(pages[1]), _body(pages[2])
    assert body2[0] == "Model facts"
    for heading in ("Summary", "Mechanism", "Validation and performance", "Uses and directions", "Warnings",
                    "Other information"):
        assert heading in body2, heading
    assert body3[0] == "Summary of all backbones", "Model facts ran over onto page 3"


@needs_poppler
@pytest.mark.slow
def test_every_number_on_the_model_facts_page_is_in_results_json(smoke_pdf):
    results = load_results(smoke_pdf["run"])
    best = _best(results)
    known = {f"{v:.3f}" for v in _expected_values(results).values()}
    for boot in (best.get("uncertainty") or {}).values():
        for metric in ("accuracy", "macro_f1"):
            est = (boot or {}).get(metric) or {}
            known |= {f"{est[k]:.3f}" for k in ("lower", "upper") if isinstance(est.get(k), float)}
    shown = re.findall(r"\b\d\.\d{3}\b", "\n".join(_body(smoke_pdf["pages"][1])))
    assert shown, "no number on the Model facts page"
    assert set(shown) <= known, sorted(set(shown) - known)


@needs_poppler
@pytest.mark.slow
def test_model_facts_fits_one_page_with_every_warning(tmp_path):
    """The longest page: leakage, shift, small groups, calibration, random weights, a failed run."""
    run = tmp_path / "run"
    shutil.copytree(SMOKE, run)
    data = json.loads((run / "results.json").read_text(encoding="utf-8"))
    data["run"]["status"] = "partial"
    data["integrity"]["cross_split_near"], data["integrity"]["cross_split_near_fraction"] = 40, 0.5
    data["integrity"]["shift"] = {"per_class": {c: {"auc": 0.95, "n_test": 20, "control_auc": 0.55, "n_validation": 12,
                                                    "n_training": 40} for c in data["data"]["class_names"]},
                                  "method": "domain classifier", "min_images": 10, "seed": 1}
    best = _best(data)
    best["calibration"]["ece_after"] = 0.25
    best["weights"]["used"] = "random"
    best["leakage_free"]["per_class"]["glioma"]["support"] = 3
    (run / "results.json").write_text(json.dumps(data), encoding="utf-8")
    pdf = render_report(run, formats=("pdf",), now=NOW, settings=manifest.run_settings(run))["pdf"]
    pages = _pdf_pages(pdf)
    body2 = _body(pages[1])
    assert body2[0] == "Model facts" and any(line.startswith("• Distribution shift") for line in body2)
    assert _body(pages[2])[0] == "Summary of all backbones", "Model facts ran over onto page 3"


# ------------------------------------------------------------------------------------------------
# Reviewer-facing snapshots: what a reviewer reads, frozen until changed on purpose


@needs_poppler
@pytest.mark.slow
def test_model_facts_page_matches_snapshot(smoke_pdf):
    check_snapshot("model-facts.txt", "\n".join(_body(smoke_pdf["pages"][1])) + "\n")


def test_checklists_match_snapshot(smoke_run):
    settings = _settings(smoke_run, _study_tables())
    settings.report.checklists = ["claim-2024", "tripod-ai"]
    render_report(smoke_run, formats=("html",), now=NOW, settings=settings)
    for key in ("claim-2024", "tripod-ai"):
        check_snapshot(f"checklist-{key}.md", (smoke_run / f"checklist-{key}.md").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Runs that lack a block: a run that failed in data discovery has no `data`, one with every backbone
# failed has no chosen model. Each must still get every item, never an internal error.

_OPTIONAL = ("data", "integrity", "best_backbone", "no_backbones", "comparisons", "uncertainty", "calibration",
             "leakage_free", "gradcam", "explanations", "failed_backbones", "everything")


@pytest.mark.parametrize("missing", _OPTIONAL)
def test_every_item_is_answered_when_a_block_is_missing(missing):
    results = load_results(SMOKE)
    per_backbone = {"uncertainty", "calibration", "leakage_free", "gradcam", "explanations"}
    if missing in per_backbone:
        for b in results["backbones"]:
            b.pop(missing, None)
    elif missing == "failed_backbones":
        for b in results["backbones"]:
            b.update(status="failed", error="boom", test=None)
        results["best_backbone"] = None
    elif missing in ("no_backbones", "everything"):
        results["backbones"], results["best_backbone"] = [], None
        if missing == "everything":
            for key in ("data", "integrity", "comparisons", "comparisons_leakage_free"):
                results.pop(key, None)
    elif missing == "best_backbone":
        results["best_backbone"] = None
    else:
        results.pop(missing, None)
    settings = manifest.Manifest()
    settings.report.checklists = ["claim-2024", "tripod-ai"]
    report = build_report(results, now=NOW, settings=settings)
    assert [len(c.items) for c in report.checklists] == [44, 27]
    for checklist in report.checklists:
        for item in checklist.items:
            assert item.answer.strip() and item.status in STATUSES
            assert item.section is None or item.section in report.sections
