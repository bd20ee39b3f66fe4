"""Snapshot and accessibility tests of the rendered report (issue 3, items 2-5).

The snapshots render ``tests/fixtures/smoke_run``: the inputs of a real smoke audit (results.json,
manifest copy, Grad-CAM and duplicate-pair PNGs), made by ``tests/fixtures/make_smoke_fixture.py``,
with a fixed clock. The hand-made ``tests/fixtures/run_fixture`` holds the cases a real run rarely
shows at once (a failed backbone, leakage, a trend, a class absent from the leakage-free subset) and
serves the behaviour tests below. The HTML, with every ``data:`` image
payload replaced by a placeholder (matplotlib versions change PNG bytes, not the report), and the
text of the PDF (``pdftotext`` from poppler-utils) must equal ``tests/snapshots/report.html`` and
``tests/snapshots/report.txt``. Any change of a template therefore fails here until the snapshots
are rewritten on purpose::

    AUDITRUN_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_report_snapshot.py

(refused under ``CI=true``: a CI run must compare, never rewrite)

(see docs/report.md). The other tests check behaviour that a snapshot would only freeze: alt text,
no external URLs, escaping, the leakage warning threshold, the best backbone marked in words.
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.integrity.audit import LEAKAGE_WARN_FRACTION
from engine.report import TEMPLATES_DIR, build_report, load_results, prepare_report, render_html, render_report
from engine.report.ethics import tumour_miss_counts
from engine.report.figures import confusion_facts, training_curves
from engine.report.integrity import leakage_warning

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "run_fixture"
SMOKE = HERE / "fixtures" / "smoke_run"
SNAPSHOTS = HERE / "snapshots"
NOW = datetime(2025, 3, 1, 6, 0, tzinfo=timezone.utc)
UPDATE = os.environ.get("AUDITRUN_UPDATE_SNAPSHOTS") == "1"
DATA_URI = re.compile(r"data:(image/[a-z+.-]+);base64,[A-Za-z0-9+/=]+")
BEST_WORDS = "best (validation macro-F1)"


# ------------------------------------------------------------------------------------------------
# Helpers


class _Collector(HTMLParser):
    """Tags (with attributes) in document order, and the text of each heading / table row."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.headings: list[tuple[int, str]] = []
        self.rows: list[str] = []
        self._heading: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if re.fullmatch(r"h[1-6]", tag):
            self._heading = []
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        if re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.headings.append((int(tag[1]), " ".join("".join(self._heading).split())))
            self._heading = None
        if tag == "tr" and self._row is not None:
            self.rows.append(" ".join("".join(self._row).split()))
            self._row = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._row is not None:
            self._row.append(data)


def parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector


def normalise_html(html: str) -> str:
    return DATA_URI.sub(lambda m: f"data:{m.group(1)};base64,<IMAGE>", html)


def pdf_text(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    pages = []
    for page in out.split("\f"):
        lines = [line.rstrip() for line in page.splitlines()]
        pages.append("\n".join(line for line in lines if line))
    return "\n<<page break>>\n".join(p for p in pages if p) + "\n"


def check_snapshot(name: str, actual: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE and os.environ.get("CI") == "true":
        pytest.fail("AUDITRUN_UPDATE_SNAPSHOTS=1 under CI=true: snapshots are rewritten on purpose, by a "
                    "person, never by CI; unset one of them")
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"{path} is missing; create it with AUDITRUN_UPDATE_SNAPSHOTS=1 (see docs/report.md)")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = list(difflib.unified_diff(expected.splitlines(), actual.splitlines(), f"snapshot/{name}",
                                         "rendered", lineterm="", n=2))
        pytest.fail(f"rendered report differs from {path} ({len(diff)} diff lines; if the change is intended, "
                    "rerun with AUDITRUN_UPDATE_SNAPSHOTS=1):\n" + "\n".join(diff[:60]))


def fixture_results() -> dict:
    return json.loads((FIXTURE / "results.json").read_text(encoding="utf-8"))


def html_for(results: dict) -> str:
    """HTML of a (modified) results dict, without drawing figures: fast, for template behaviour."""
    return render_html(build_report(results, now=NOW), FIXTURE)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(FIXTURE, run)
    paths = render_report(run, now=NOW)
    html = paths["html"].read_text(encoding="utf-8")
    return {"run": run, "paths": paths, "html": html, "parsed": parse(html)}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """The real smoke run's inputs, rendered with the fixed clock."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    shutil.copytree(SMOKE, run)
    paths = render_report(run, now=NOW)
    html = paths["html"].read_text(encoding="utf-8")
    return {"run": run, "paths": paths, "html": html, "parsed": parse(html)}


# ------------------------------------------------------------------------------------------------
# Snapshots


def test_html_matches_snapshot(smoke):
    check_snapshot("report.html", normalise_html(smoke["html"]))


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext missing (apt-get install poppler-utils)")
def test_pdf_text_matches_snapshot(smoke):
    check_snapshot("report.txt", pdf_text(smoke["paths"]["pdf"]))


def test_updating_snapshots_is_refused_under_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "UPDATE", True)
    monkeypatch.setattr(sys.modules[__name__], "SNAPSHOTS", tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="never by CI"):
        check_snapshot("report.html", "anything")
    assert not (tmp_path / "report.html").exists()


def test_smoke_report_images_have_alt_text_and_are_embedded(smoke):
    images = [attrs for tag, attrs in smoke["parsed"].tags if tag == "img"]
    assert len(images) > 10  # curves, confusion matrices, reliability, galleries of two backbones
    for attrs in images:
        assert (attrs.get("alt") or "").strip(), f"img without alt text: {attrs.get('src', '')[:60]}"
        assert attrs["src"].startswith("data:image/"), "images must be embedded, not linked"


@pytest.fixture(scope="module")
def prepared(smoke):
    """The smoke run's typed report with its figures drawn, for re-rendering with other templates."""
    return prepare_report(smoke["run"], now=NOW)


@pytest.mark.skipif(UPDATE, reason="snapshots are being rewritten")
def test_same_inputs_render_the_same_html(smoke, prepared):
    assert render_html(prepared, smoke["run"]) == smoke["html"]


@pytest.mark.skipif(UPDATE, reason="snapshots are being rewritten")
@pytest.mark.parametrize("template, edit", [
    ("report.html.j2", lambda s: s.replace("<main>", "<main>\n<p>An added line.</p>", 1)),
    ("report.css", lambda s: s + "\n.added { color: black; }\n"),
    ("_macros.html.j2", lambda s: s.replace("<figcaption>{{ fig.caption }}", "<figcaption>Figure: {{ fig.caption }}", 1)),
])
def test_template_change_fails_the_snapshot(smoke, prepared, tmp_path, template, edit):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    source = (templates / template).read_text(encoding="utf-8")
    changed = edit(source)
    assert changed != source, "the edit did not apply; update this test with the template"
    (templates / template).write_text(changed, encoding="utf-8")
    html = render_html(prepared, smoke["run"], templates)
    assert normalise_html(html) != (SNAPSHOTS / "report.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Structure and accessibility


def test_every_image_has_alt_text_and_is_embedded(rendered):
    images = [attrs for tag, attrs in rendered["parsed"].tags if tag == "img"]
    # 2 finished backbones x (curves, counts, normalised) + 1 reliability + 1 trend
    # + 2 backbones x 2 Grad-CAM items x 3 images + 1 duplicate pair x 2 images
    # + the Model facts page's confusion matrix of the chosen model
    assert len(images) == 2 * 3 + 1 + 1 + 2 * 2 * 3 + 2 + 1
    for attrs in images:
        assert (attrs.get("alt") or "").strip(), f"img without alt text: {attrs.get('src', '')[:60]}"
        assert attrs["src"].startswith("data:image/"), "images must be embedded, not linked"


def test_stored_images_are_embedded_byte_for_byte(rendered):
    payloads = set(m.group(0).split(",", 1)[1] for m in DATA_URI.finditer(rendered["html"]))
    results = fixture_results()
    stored = [f for b in results["backbones"] if b.get("gradcam") for item in b["gradcam"]["items"]
              for f in item["files"].values()]
    stored += [f for pair in results["integrity"]["example_pairs"] for f in pair.get("files", {}).values()]
    assert len(stored) == 2 * 2 * 3 + 2
    for rel in stored:
        assert base64.b64encode((FIXTURE / rel).read_bytes()).decode() in payloads, rel


def test_no_external_resources(rendered):
    html, parsed = rendered["html"], rendered["parsed"]
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), f"<{tag}> in a self-contained report"
        for key in ("src", "href", "srcset", "action", "poster"):
            value = (attrs.get(key) or "").strip()
            if value:
                assert value.startswith(("data:", "#")), f"<{tag} {key}={value[:60]!r}> is not embedded or local"
    assert not re.search(r"https?://", DATA_URI.sub("", html)), "an http(s) URL in the report"
    assert "@import" not in html and not re.search(r"url\((?!['\"]?data:)", html)


def test_document_language_title_author_and_heading_outline(rendered):
    parsed = rendered["parsed"]
    html_tag = next(attrs for tag, attrs in parsed.tags if tag == "html")
    assert html_tag.get("lang") == "en"
    metas = {attrs.get("name"): attrs.get("content") for tag, attrs in parsed.tags if tag == "meta"}
    assert metas["author"] == "auditrun & the imaging ML group"  # from the manifest's [report] table
    levels = [level for level, _ in parsed.headings]
    assert levels.count(1) == 1 and levels[0] == 1
    for before, after in zip(levels, levels[1:]):
        assert after <= before + 1, f"heading level jumps from h{before} to h{after}"
    h2 = [text for level, text in parsed.headings if level == 2]
    for section in ("Summary of all backbones", "Training curves", "Confusion matrices", "Per-class metrics",
                    "Grad-CAM explanations", "Ethics and intended use", "Provenance", "Data integrity and leakage"):
        assert section in h2
    h3 = [text for level, text in parsed.headings if level == 3]
    assert h3.count("EfficientNetB0 (fine-tuned)") >= 5  # one per backbone in every per-backbone section


def test_tables_have_captions_and_scoped_header_cells(rendered):
    parsed = rendered["parsed"]
    tags = [tag for tag, _ in parsed.tags]
    assert tags.count("table") == tags.count("caption") > 10
    for tag, attrs in parsed.tags:
        if tag == "th":
            assert attrs.get("scope") in ("col", "row", "colgroup", "rowgroup"), attrs


@pytest.mark.skipif(shutil.which("pdfinfo") is None, reason="pdfinfo missing (apt-get install poppler-utils)")
def test_pdf_is_tagged_with_title_and_author(rendered):
    info = subprocess.run(["pdfinfo", str(rendered["paths"]["pdf"])], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    assert fields["Tagged"].strip() == "yes"
    assert fields["Title"].strip() == "Audit report: sartaj-baseline"
    assert fields["Author"].strip() == "auditrun & the imaging ML group"
    assert int(fields["Pages"]) > 5


def test_outputs_written_atomically_without_leftovers(rendered):
    run = rendered["run"]
    assert set(rendered["paths"]) == {"html", "pdf"}
    assert rendered["paths"]["pdf"].read_bytes().startswith(b"%PDF-1.7")
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert len(list((run / "figures").glob("*.png"))) == 8


# ------------------------------------------------------------------------------------------------
# Behaviour


def test_backbone_error_is_escaped():
    results = fixture_results()
    results["backbones"][2]["error"] = 'Boom <script>alert("x")</script> & <b>bold</b>'
    html = html_for(results)
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "Boom &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert not [tag for tag, _ in parse(html).tags if tag == "script"]


@pytest.mark.parametrize("near, warned", [(252, True), (20, True), (19, False), (0, False)])
def test_leakage_warning_follows_the_five_percent_line(near, warned):
    results = fixture_results()  # 394 test images: 20 is 5.08 %, 19 is 4.82 %
    results["integrity"]["cross_split_near"] = near
    html = html_for(results)
    assert (f"Warning: {near} of 394 test images" in html) is warned
    assert ("partly measure memory" in html) is warned


def test_leakage_warning_function():
    assert leakage_warning(6, 100) is not None
    assert leakage_warning(5, 100) is None  # exactly 5 % is not "more than 5 %"
    assert leakage_warning(None, 100) is None and leakage_warning(3, 0) is None
    assert LEAKAGE_WARN_FRACTION == 0.05


def _summary_rows(html: str) -> list[str]:
    rows = parse(html).rows
    return [r for r in rows if r.startswith(("EfficientNetB0", "VGG16"))][:3]


def test_best_backbone_is_marked_in_words():
    results = fixture_results()
    rows = _summary_rows(html_for(results))
    assert [BEST_WORDS in r for r in rows] == [False, True, False]
    assert rows[1].startswith("EfficientNetB0 (fine-tuned)")

    results["best_backbone"] = {"name": "efficientnetb0", "selected_by": "validation macro_f1"}
    rows = _summary_rows(html_for(results))
    assert [BEST_WORDS in r for r in rows] == [True, False, False]

    results["best_backbone"] = None
    assert BEST_WORDS not in html_for(results)


def test_failed_backbone_listed_with_its_error():
    html = html_for(fixture_results())
    assert "<strong>VGG16</strong>" in html
    assert "ResourceExhaustedError: OOM when allocating tensor" in html


def test_leakage_free_twin_beside_headline_metrics():
    rows = _summary_rows(html_for(fixture_results()))
    # spaced for screen readers; the fixture's leakage-free subset has no no_tumor image, so its
    # macro-F1 says which classes it averages
    assert "0.904 leakage-free 0.789" in rows[1]
    assert "0.905 leakage-free 0.818 (3 classes: no no_tumor image in this subset)" in rows[1]
    results = fixture_results()
    for b in results["backbones"]:
        b.pop("leakage_free", None)
    assert "leakage-free 0." not in " ".join(_summary_rows(html_for(results)))


def test_tumour_miss_counts_from_confusion_matrix():
    cm = [[8, 0, 2, 0],   # glioma: 2 called no_tumor
          [1, 9, 0, 0],   # meningioma: none
          [0, 1, 9, 0],   # no_tumor row is not a tumour
          [0, 0, 1, 4]]   # pituitary: 1
    per_class, missed, total = tumour_miss_counts(cm, ["glioma", "meningioma", "no_tumor", "pituitary"])
    assert per_class == [("glioma", 2, 10), ("meningioma", 0, 10), ("pituitary", 1, 5)]
    assert (missed, total) == (3, 25)
    assert tumour_miss_counts(cm, ["a", "b", "c", "d"]) is None
    # in the report: the frozen model sent 9 + 7 + 2 of 289 tumour images to no_tumor
    html = html_for(fixture_results())
    assert "EfficientNetB0 (frozen) called 18 of 289 tumour images in the test split no_tumor (6.2 %)" in html


def test_alt_text_is_written_from_the_numbers(tmp_path):
    import numpy as np

    cm = np.array([[87, 9, 3, 1], [2, 90, 5, 3], [0, 0, 100, 0], [1, 1, 0, 98]])
    facts = confusion_facts(cm, ["glioma", "meningioma", "no_tumor", "pituitary"])
    assert facts[0] == "87 of 100 glioma images correct, most errors went to meningioma (9)"
    assert facts[2] == "100 of 100 no_tumor images correct"
    backbone = fixture_results()["backbones"][1]
    record = training_curves(backbone, tmp_path)
    assert "best validation accuracy 0.88 at epoch 6 of 6" in record.alt
    assert "head training for epochs 1 to 3, fine-tuning for epochs 4 to 6" in record.alt
    assert (tmp_path / record.path).read_bytes().startswith(b"\x89PNG")


def test_missing_image_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    victim = run / "gradcam" / "efficientnetb0" / "glioma_0_heatmap.png"
    victim.unlink()
    with pytest.raises(InputError, match="glioma_0_heatmap.png"):
        render_html(build_report(load_results(run), now=NOW), run)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no results.json"):
        render_report(tmp_path, formats=("html",))
    (tmp_path / "results.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        render_report(tmp_path, formats=("html",))
    with pytest.raises(InputError, match="docx"):
        render_report(tmp_path, formats=("docx",))


def test_optional_sections_are_skipped_when_absent():
    results = fixture_results()
    for key in ("integrity", "comparisons", "gates", "trend", "external"):
        results.pop(key)
    results["data"].pop("warnings")
    for b in results["backbones"]:
        for key in ("leakage_free", "calibration", "uncertainty", "gradcam"):
            b.pop(key, None)
    html = html_for(results)
    h2 = [text for level, text in parse(html).headings if level == 2]
    assert h2 == ["Contents", "Model facts", "Summary of all backbones", "Training curves", "Confusion matrices",
                  "Per-class metrics", "Ethics and intended use", "Provenance"]
    assert "Warning:" not in html


def test_report_package_does_not_import_tensorflow():
    code = ("import sys, json; from pathlib import Path; from datetime import datetime, timezone\n"
            "from engine.report import build_report, render_html, load_results\n"
            f"run = Path({str(FIXTURE)!r})\n"
            "render_html(build_report(load_results(run), now=datetime(2025, 1, 1, tzinfo=timezone.utc)), run)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=HERE.parent)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_report_leaves_the_matplotlib_backend_alone(tmp_path):
    """Importing the report and drawing its figures (seaborn included) selects no backend for the
    process: each figure prints on its own Agg canvas, never through matplotlib.use()."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    code = ("import json, matplotlib; from pathlib import Path\n"
            "backend = lambda: repr(dict.__getitem__(matplotlib.rcParams, 'backend'))\n"
            "before = backend()\n"
            "from engine.report import prepare_report\n"
            "imported = backend()\n"
            f"prepare_report(Path({str(run)!r}))\n"
            "print(json.dumps([before, imported, backend()]))\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=HERE.parent, env=env)
    assert out.returncode == 0, out.stderr
    before, imported, drawn = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == imported == drawn
    assert len(list((run / "figures").glob("*_confusion*.png"))) == 4  # the seaborn heatmaps were drawn


def test_build_report_keeps_values_apart_from_display():
    report = build_report(copy.deepcopy(fixture_results()), now=NOW)
    best = next(r for r in report.summary if r.best)
    assert best.macro_f1.value == pytest.approx(0.9046) and best.macro_f1.text == "0.905"
    assert report.integrity.fraction == pytest.approx(252 / 394)
    assert [r.status for r in report.summary] == ["ok", "ok", "failed"]
    assert report.generated_at == "2025-03-01 06:00 UTC"


def test_pair_thumbnails_are_stored_in_the_run_directory(tmp_path):
    from PIL import Image

    from engine.report.thumbnails import add_pair_thumbnails

    data, run = tmp_path / "data", tmp_path / "run"
    (data / "Training").mkdir(parents=True)
    (data / "Testing").mkdir()
    Image.new("L", (400, 300), 90).save(data / "Training" / "a (1).jpg")
    Image.new("RGB", (300, 400), (10, 20, 30)).save(data / "Testing" / "a.png")
    results = {"data": {"root": str(data)}, "integrity": {"example_pairs": [
        {"train": "Training/a (1).jpg", "test": "Testing/a.png", "distance": 0},
        {"train": "Training/missing.jpg", "test": "Testing/a.png", "distance": 3},
    ]}}
    assert add_pair_thumbnails(results, run) == 1
    first, second = results["integrity"]["example_pairs"]
    assert first["files"] == {"train": "integrity/pair0_train.png", "test": "integrity/pair0_test.png"}
    with Image.open(run / first["files"]["train"]) as im:
        assert max(im.size) == 192 and im.mode == "RGB"
    assert "files" not in second  # unreadable source: the report lists the paths instead
    assert add_pair_thumbnails(results, run) == 0  # pairs that have files are left alone


def test_one_leakage_free_macro_f1_per_model_in_every_table(tmp_path):
    """Issue 15: a leakage-free subset with no no_tumor image but wrong no_tumor predictions.

    The subset's predictions go through the engine's own metrics and bootstrap into a results.json,
    the trend is built from it as finish_run does, and the rendered report must show that one
    macro-F1 wherever it shows the model's leakage-free macro-F1, inside the interval shown.
    """
    import numpy as np
    from sklearn.metrics import f1_score

    from engine.nightly import history
    from engine.evaluation.metrics import classification_metrics
    from engine.evaluation.uncertainty import bootstrap_summary

    results = fixture_results()
    classes = results["data"]["class_names"]
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1, 3], [70, 50, 22])  # no no_tumor (index 2)
    wrong = rng.uniform(size=len(y)) < 0.25
    pred = np.where(wrong, (y + rng.integers(1, 4, size=len(y))) % 4, y)
    pred[[0, 70, 120]] = 2  # a wrong prediction into the absent class from each present class
    ft = next(b for b in results["backbones"] if b["name"] == "efficientnetb0_ft")
    ft["leakage_free"] = classification_metrics(y, np.eye(4)[pred], classes).to_dict()
    ft["uncertainty"]["leakage_free"] = bootstrap_summary(y, pred, classes, 1000, seed=42)
    results["trend"] = history.trend([history.record_from_results(results)], results["run"]["id"])
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")

    stored = load_results(run)
    lf = next(b for b in stored["backbones"] if b["name"] == "efficientnetb0_ft")
    value, boot = lf["leakage_free"]["macro_f1"], lf["uncertainty"]["leakage_free"]["macro_f1"]
    assert value == pytest.approx(f1_score(y, pred, labels=[0, 1, 3], average="macro"), abs=1e-6)
    assert boot["value"] == pytest.approx(value, abs=1e-6)
    assert boot["ci_low"] <= value <= boot["ci_high"]
    shown = f"{value:.3f}"
    # what the bootstrap and macro_avg used to average (no_tumor's F1 of 0 included): a report
    # that still showed it anywhere would contradict itself again
    other = f"{f1_score(y, pred, average='macro', zero_division=0):.3f}"
    assert other != shown

    html = render_html(build_report(stored, now=NOW), run)
    rows = _table_cells(html)
    note = "(3 classes: no no_tumor image in this subset)"
    (summary,) = [r for r in rows if r[0].startswith("EfficientNetB0 (fine-tuned) best")]
    assert summary[3] == f"0.905 leakage-free {shown} {note}"  # test macro-F1 column
    section = html.split('id="bb-efficientnetb0_ft-metrics"')[1].split("<h3")[0]
    (headline,) = [r for r in _table_cells(section) if r[0] == "Macro-F1"]
    ci = f"95 % CI {boot['ci_low']:.3f}–{boot['ci_high']:.3f}"
    assert headline[2] == f"{shown} {ci} {note}"  # leakage-free column
    (trend,) = [r for r in rows if r[:2] == ["EfficientNetB0 (fine-tuned)", "leakage-free macro-F1"]]
    assert trend[3] == shown  # "this run" column
    assert f"macro-F1 {shown} over 3 classes" in html  # the best-backbone sentence
    assert not [r for r in rows if any(other in cell for cell in r)], "a table shows the other definition's macro-F1"


def _table_cells(html: str) -> list[list[str]]:
    """Text of each cell of each table row, whitespace collapsed."""
    out = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        out.append([" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in cells])
    return out


def test_an_interval_around_another_value_is_not_shown():
    # results.json written before the one definition (the lite0 run of issue 15): the bootstrap
    # block says 0.298 [0.239, 0.353] where the metrics block says 0.397 for the same images.
    results = fixture_results()
    ft = next(b for b in results["backbones"] if b["name"] == "efficientnetb0_ft")
    ft["leakage_free"]["macro_f1"] = 0.397
    ft["uncertainty"]["leakage_free"]["macro_f1"] = {"value": 0.298, "ci_low": 0.239, "ci_high": 0.353}
    html = html_for(results)
    section = html.split('id="bb-efficientnetb0_ft-metrics"')[1].split("<h3")[0]
    (headline,) = [r for r in _table_cells(section) if r[0] == "Macro-F1"]
    assert headline[2] == "0.397 (3 classes: no no_tumor image in this subset)"
    assert "0.298" not in " ".join(" ".join(r) for r in _table_cells(html))
    assert ("The stored bootstrap interval of macro-F1 on the leakage-free subset was computed around 0.298, "
            "not the 0.397 shown") in section
    # the accuracy interval was computed around the value shown, so it stays
    (accuracy,) = [r for r in _table_cells(section) if r[0] == "Accuracy"]
    acc = ft["uncertainty"]["leakage_free"]["accuracy"]
    assert accuracy[2] == f"{ft['leakage_free']['accuracy']:.3f} 95 % CI {acc['ci_low']:.3f}–{acc['ci_high']:.3f}"


def test_undefined_per_class_metrics_say_why():
    results = fixture_results()
    frozen = results["backbones"][0]
    # a results.json from before undefined metrics were null: recall and F1 stored as 0.0
    frozen["test"]["per_class"]["pituitary"].update(precision=0.0, recall=0.0, f1=0.0, support=0)
    frozen["test"]["per_class"]["glioma"]["precision"] = None  # glioma never predicted
    ext = results["external"][0]["backbones"][0]
    ext["per_class"]["no_tumor"].update(recall=None, f1=None, support=0)
    report = build_report(results, now=NOW)
    rows = {r.cls: r for r in report.backbones[0].per_class}
    assert (rows["pituitary"].recall.text, rows["pituitary"].f1.text) == ("no test images", "no test images")
    assert rows["pituitary"].precision.text == "0.000"  # predicted, all wrongly: measured
    assert rows["glioma"].precision.text == "never predicted" and rows["glioma"].recall.text == "0.720"
    summary = next(r for r in report.summary if r.name == "efficientnetb0")
    assert [m.text for m in summary.per_class_f1][3] == "no test images"
    assert summary.macro_note == "3 classes: no pituitary image in the test split"
    (row,) = report.external[0].rows
    assert "no_tumor no images" in row.recall_text
    assert row.macro_note == "3 classes: no no_tumor image in this data"
