"""The printed report's layout, checked on the PDF itself (tests/pdf_layout.py says how).

Two reports are rendered once each (module fixtures, fixed clock): the smoke report
(tests/fixtures/smoke_run, copied first: rendering writes into the run folder) and a five-backbone
report (tests/fixtures/five_backbones.py: long backbone names, five rows in every per-backbone
table and section). On every page of both:

- no character, image, rectangle, line or curve reaches outside the text block (the page's own
  left edge, found from its characters, to ``width - left``), and that left edge is the CSS
  margin; the running header and footer sit in the margins and inside the block too;
- no page holds less than a quarter of a page of content unless a part ends there;
- every /Figure of the tagged PDF's structure tree has alternative text, one per image drawn.

Control documents, small HTML printed by WeasyPrint with the report's page margins, show that each
checker does fail: a table and an image wider than the page, a page holding one line.

Rendering takes about 5-6 s (smoke) and 8-10 s (five backbones, building the run included), under the ~20 s a
render would need to be marked ``slow`` (docs/testing.md); it happens in the fixtures, and each
test only reads the results of one pdfplumber pass.
"""

from __future__ import annotations

import base64
import io
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("pdfplumber", reason="the layout checks read the PDF with pdfplumber (pip install 'auditrun[test]')")
pytest.importorskip("pypdf", reason="the structure-tree checks read the PDF with pypdf (pip install 'auditrun[test]')")

from fixtures.five_backbones import make_five_backbone_run  # noqa: E402  (tests/ is on the path under pytest)
from pdf_layout import (  # noqa: E402
    CSS_SIDE_MARGIN_PT,
    MIN_FILL,
    TOLERANCE_PT,
    LayoutCheck,
    Overflow,
    check_layout,
    heading_bookmarks,
    page_overflows,
    sparse_pages,
    structure_elements,
)

from engine.report import render_report  # noqa: E402

HERE = Path(__file__).parent
SMOKE = HERE / "fixtures" / "smoke_run"
NOW = datetime(2025, 3, 1, 6, 0, tzinfo=timezone.utc)
REPORTS = ("smoke", "five_backbones")


# ------------------------------------------------------------------------------------------------
# The two reports, rendered and read once each


@pytest.fixture(scope="module")
def smoke_pdf(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("layout-smoke") / "run"
    shutil.copytree(SMOKE, run)
    return render_report(run, formats=("pdf",), now=NOW)["pdf"]


@pytest.fixture(scope="module")
def five_backbones_pdf(tmp_path_factory) -> Path:
    run = make_five_backbone_run(tmp_path_factory.mktemp("layout-five") / "run")
    return render_report(run, formats=("pdf",), now=NOW)["pdf"]


@pytest.fixture(scope="module", params=REPORTS)
def report(request) -> tuple[Path, LayoutCheck]:
    """(PDF path, its layout check) of each report in turn."""
    pdf = request.getfixturevalue(f"{request.param}_pdf")
    return pdf, check_layout(pdf)


def _overflow_summary(found: list[Overflow], limit: int = 12) -> str:
    pages: dict[int, list[Overflow]] = {}
    for o in found:
        pages.setdefault(o.page, []).append(o)
    lines = []
    for page, items in sorted(pages.items()):
        widest = max(items, key=lambda o: o.x1)
        lines.append(f"page {page}: {len(items)} objects outside [{items[0].left:.1f}, {items[0].right:.1f}] pt, "
                     f"rightmost x1 {widest.x1:.1f}, leftmost x0 {min(o.x0 for o in items):.1f}")
    lines += [f"  {o}" for o in found[:limit]]
    if len(found) > limit:
        lines.append(f"  ... and {len(found) - limit} more")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The reports


def test_no_table_or_figure_is_wider_than_the_text_block(report):
    _, check = report
    if check.overflows:
        pytest.fail("objects outside the text block:\n" + _overflow_summary(check.overflows), pytrace=False)


def test_every_page_has_the_css_side_margins_and_its_header_and_footer_in_the_margins(report):
    """The left edge the overflow check derives is the @page margin on every page (a left overflow
    of text would move it); the footer's "Page N of M" ends at ``width - left`` (the margins are
    symmetric); the top and bottom margins hold the 8 pt running header and footer and nothing
    else, so leaving them out of the fill measure leaves out exactly those."""
    _, check = report
    n = len(check.pages)
    for facts in check.pages:
        where = f"page {facts.number} ({facts.width:.0f} x {facts.height:.0f} pt)"
        assert facts.left == pytest.approx(CSS_SIDE_MARGIN_PT, abs=TOLERANCE_PT), where
        assert facts.footer.endswith(f"Page {facts.number} of {n}"), f"{where}: footer {facts.footer!r}"
        assert facts.footer.startswith("Run "), f"{where}: footer {facts.footer!r}"
        assert facts.footer_x1 == pytest.approx(facts.right, abs=TOLERANCE_PT), where
        assert facts.header or facts.number == 1, f"{where}: no running header"
        assert facts.margin_sizes == (8.0,), f"{where}: margin text sizes {facts.margin_sizes}"
        assert facts.margin_drawings == 0, f"{where}: drawings in the top or bottom margin"


def test_no_page_holds_less_than_a_quarter_page_unless_a_part_ends_there(report):
    _, check = report
    sparse = check.sparse()
    if sparse:
        pytest.fail(f"pages under {MIN_FILL:.0%} of the text block that end no part:\n"
                    + "\n".join(f"  {s}" for s in sparse), pytrace=False)


def test_part_starts_are_the_pages_an_h1_or_h2_bookmark_opens(report):
    """``PageFacts.starts_part`` (the first body line is set at the h2 size) against the PDF's own
    outline: WeasyPrint bookmarks each heading at its box, so a part starts exactly where an h1 or
    h2 bookmark points at (or above) the page's first body object."""
    pdf, check = report
    opened = {page for level, _, page, top in heading_bookmarks(pdf)
              if level <= 2 and check.pages[page - 1].content_top is not None
              and top <= check.pages[page - 1].content_top + 1.0}
    found = {facts.number for facts in check.pages if facts.starts_part}
    assert found == opened
    assert len(found) >= 10  # title page and every major section


def test_every_figure_in_the_structure_tree_has_alt_text_one_per_image_drawn(report):
    """WeasyPrint tags each <img> as one /Figure (with the img's alt as /Alt) and the report draws
    no image any other way (no CSS background images, no decorative images), so the Figure count
    must equal the images drawn: fewer would be an image a screen reader is never told of."""
    pdf, check = report
    figures = structure_elements(pdf, "/Figure")
    assert figures, "no /Figure in the structure tree: is the PDF still tagged (pdf/ua-1)?"
    missing = [i for i, f in enumerate(figures) if not str(f.get("/Alt") or "").strip()]
    assert not missing, f"/Figure elements without /Alt: {missing} of {len(figures)}"
    assert len(figures) == check.images


def test_five_backbone_report_has_a_section_per_backbone(five_backbones_pdf):
    """The fixture does what it is for: every long name reaches the page."""
    from pypdf import PdfReader

    text = "\n".join(page.extract_text() for page in PdfReader(str(five_backbones_pdf)).pages)
    for name in ("EfficientNet-Lite0 (fine-tuned)", "EfficientNet-Lite1 (fine-tuned)", "EfficientNet-Lite2"):
        assert name in text
    assert "Holm-adjusted over 10 pairs" in text


# ------------------------------------------------------------------------------------------------
# Controls: documents each checker must fail

CONTROL_CSS = """
@page { size: A4; margin: 2cm 1.6cm;
        @bottom-right { content: "Page " counter(page) " of " counter(pages); font-size: 8pt; } }
body { margin: 0; font-family: "DejaVu Sans", sans-serif; font-size: 9.5pt; line-height: 1.4; }
h2 { font-size: 15pt; }
table { border-collapse: collapse; }
td { border-bottom: 1px solid #888888; padding: 2pt 4pt; white-space: nowrap; }
.page { break-before: page; }
"""
FILLER = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)  # six lines
FULL_PAGE = f"<p>{FILLER}</p>" * 5  # about two thirds of a page


def _pdf(tmp_path: Path, body: str, name: str = "control.pdf") -> Path:
    import weasyprint

    path = tmp_path / name
    html = f"<!DOCTYPE html><html lang='en'><head><style>{CONTROL_CSS}</style></head><body>{body}</body></html>"
    weasyprint.HTML(string=html).write_pdf(path)
    return path


def _png_uri() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 114, 178)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def test_overflow_checker_reports_a_table_and_an_image_wider_than_the_page(tmp_path):
    cells = "".join(f"<td>column {i} holds a long value</td>" for i in range(12))
    pdf = _pdf(tmp_path, f"<p>{FILLER}</p><table><tr>{cells}</tr><tr>{cells}</tr></table>"
                         f"<p>An image 25 cm wide:</p><img alt='wide' src='{_png_uri()}' style='width: 25cm'>")
    found = page_overflows(pdf)
    kinds = {o.kind for o in found}
    assert {"text", "image", "line"} <= kinds, _overflow_summary(found)
    assert all(o.page == 1 and o.left == pytest.approx(CSS_SIDE_MARGIN_PT, abs=TOLERANCE_PT) for o in found)
    assert all(o.x1 > o.right + TOLERANCE_PT for o in found)  # past the right edge, nothing on the left
    assert any(o.kind == "text" and o.text.endswith("column 11 holds a long value") for o in found)
    assert not any("quick brown fox" in o.text for o in found)  # the paragraph wraps inside the block
    image = next(o for o in found if o.kind == "image")
    assert image.x1 - image.x0 == pytest.approx(25 / 2.54 * 72, abs=1)


def test_overflow_checker_passes_a_table_that_fits(tmp_path):
    cells = "".join(f"<td>c{i}</td>" for i in range(6))
    pdf = _pdf(tmp_path, f"<p>{FILLER}</p><table><tr>{cells}</tr></table>"
                         f"<img alt='small' src='{_png_uri()}' style='width: 100%'>")
    assert page_overflows(pdf) == []


def test_sparse_checker_reports_a_middle_page_holding_one_line(tmp_path):
    pdf = _pdf(tmp_path, FULL_PAGE + "<p class='page'>A single line on its own page.</p>"
               + f"<div class='page'>{FULL_PAGE}</div>" + "<p class='page'>The last page may hold one line.</p>")
    found = sparse_pages(pdf)
    assert [(s.page, s.first_text) for s in found] == [(2, "A single line on its own page.")]
    assert found[0].fill < 0.05


def test_sparse_checker_lets_a_part_end_on_a_short_page(tmp_path):
    """The same short page, now followed by a page that opens with an h2 (15 pt): a part ends on it."""
    pdf = _pdf(tmp_path, FULL_PAGE + "<p class='page'>A single line on its own page.</p>"
               + "<h2 class='page'>The next part</h2>" + FULL_PAGE)
    check = check_layout(pdf)
    assert check.sparse() == []
    assert [(s.page, s.ends_part) for s in check.sparse(include_part_ends=True)] == [(2, True)]
    assert [f.starts_part for f in check.pages] == [False, False, True]
