"""Layout checks of a printed report, read back from the PDF itself.

The report's print CSS (templates/report.css) promises a text block: ``@page { margin: 2cm 1.6cm }``
on every page, A4 portrait or (a named landscape page, when the template uses one) landscape. Whether a table or figure really
fits in it is a fact of the laid-out pages, not of the HTML, so these helpers open the PDF with
pdfplumber and look at what WeasyPrint drew: every character, image, rectangle, line and curve.

Two checks, both pure functions of a PDF file (tests/test_report_layout.py runs them on the smoke
report, on a five-backbone report and on small control documents that must fail them):

``page_overflows``
    Every object must lie horizontally inside the page's text block ``[left, width - left]``. The
    left edge is read from the page, not assumed: it is the smallest ``x0`` of the page's
    characters. Paragraphs, headings, captions, the running header (``@top-left``) and the footer
    (``@bottom-left``: "Run ...") all start there, while tables and figures overflow to the right
    (their width grows from the left edge), so a right overflow cannot move it; a left overflow of
    text would, which is why tests/test_report_layout.py also checks each page's left edge against
    the CSS margin (``CSS_SIDE_MARGIN_PT``). The margins are symmetric in the CSS, so the right edge
    is ``page.width - left`` (the footer's "Page N of M", right-aligned in ``@bottom-right``, ends
    there). The running header and footer are checked like everything else: they sit in the top and
    bottom margin boxes, horizontally inside the block.

``sparse_pages``
    A page must be at least ``MIN_FILL`` (a quarter) full, unless a part ends on it. Fill is the
    height from the top of the page's first body object to the bottom of its last, over the height
    of the text block. Body objects are those that reach into the band between the top and bottom
    page margins (``CSS_TOP_MARGIN_PT``/``CSS_BOTTOM_MARGIN_PT``): the running header and the footer
    live entirely in the margins (their margin boxes are centred in the 2 cm) and so never count.
    A part ends on a page when it is the document's last page or the next page starts a part; a page
    starts a part when its first body text line is set at least at the part-heading size
    (``PART_HEADING_PT``: the print h2, 15 pt; the title page's h1 is 20 pt) and no image lies above
    that line. Each major section starts on a new page with its h2 (``.major { break-before: page }``)
    and headings never end a page alone (``break-after: avoid``), so an h2-sized first line is
    exactly a section start. tests/test_report_layout.py cross-checks this against the PDF's
    bookmarks: every level-2 bookmark (an h2) that points at the top of a page marks a page this
    rule finds, and no other page.

``check_layout`` runs both in one pdfplumber pass (the slow part: about 1 s per 25 pages) and keeps
each page's facts (``PageFacts``) for the tests that look closer; ``page_overflows`` and
``sparse_pages`` are its two halves. ``heading_bookmarks`` and ``structure_elements`` read the
PDF's outline and tagged structure tree with pypdf.

Geometry is pdfplumber's: points, ``top``/``bottom`` measured down from the top of the page. For a
stroked object the ink reaches half the line width beyond its path, so that is part of its extent
(a horizontal rule's butt ends do not, so its x extent is its path's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

CM = 72 / 2.54
#: @page margin left and right (1.6 cm): what the page's own left edge should come out at.
CSS_SIDE_MARGIN_PT = 1.6 * CM
#: @page margin top and bottom (2 cm): the running header and footer live inside these bands.
CSS_TOP_MARGIN_PT = 2 * CM
CSS_BOTTOM_MARGIN_PT = 2 * CM
#: How far an object may reach past the text block before it counts (rounding, glyph side bearings).
TOLERANCE_PT = 0.5
#: The least share of the text block's height a page must fill unless a part ends on it.
MIN_FILL = 0.25
#: The print size of h2, the heading every part (major section) starts its first page with.
PART_HEADING_PT = 15.0
#: Object kinds checked, in pdfplumber's names (``page.chars``, ``page.images``, ...).
KINDS = ("char", "image", "rect", "line", "curve")


@dataclass(frozen=True)
class Overflow:
    """An object (for text: the run of a line's words) outside its page's text block."""

    page: int  # 1-based
    kind: str  # "text" (characters), "image", "rect", "line" or "curve"
    text: str  # the words, or a description of the drawing
    x0: float
    x1: float
    left: float  # the text block the page allows
    right: float

    def __str__(self) -> str:
        where = []
        if self.x0 < self.left - TOLERANCE_PT:
            where.append(f"x0 {self.x0:.1f} < left {self.left:.1f}")
        if self.x1 > self.right + TOLERANCE_PT:
            where.append(f"x1 {self.x1:.1f} > right {self.right:.1f}")
        return f"page {self.page}: {self.kind} {self.text!r}: {', '.join(where)}"


@dataclass(frozen=True)
class SparsePage:
    """A page that fills less than ``MIN_FILL`` of its text block (and, unless asked for with
    ``include_part_ends``, does not end a part)."""

    page: int  # 1-based
    fill: float  # content height / text block height
    first_text: str  # the page's first body line, to find it in the report
    ends_part: bool = False

    def __str__(self) -> str:
        end = " (a part ends there)" if self.ends_part else ""
        return f"page {self.page}: {self.fill:.0%} full, starts {self.first_text!r}{end}"


@dataclass(frozen=True)
class PageFacts:
    """What the checks read of one page."""

    number: int
    width: float
    height: float
    left: float  # the text block's left edge, from the page's characters
    right: float
    body_top: float  # the band between the top and bottom margins
    body_bottom: float
    content_top: float | None  # first / last body object; None on a page with no body object
    content_bottom: float | None
    first_line: str  # the first body text line ("" when the page has no body text)
    first_line_size: float  # its largest font size (0 when none)
    image_above_first_line: bool
    images: int  # images drawn on the page
    header: str  # text entirely inside the top margin (the running header)
    footer: str  # text entirely inside the bottom margin ("Run ..." and "Page N of M")
    footer_x1: float | None  # right end of the footer's last word ("M" of "Page N of M")
    margin_sizes: tuple[float, ...]  # font sizes of the header and footer characters
    margin_drawings: int  # images, rects, lines and curves entirely inside the top or bottom margin

    @property
    def fill(self) -> float:
        if self.content_top is None or self.content_bottom is None:
            return 0.0
        return (self.content_bottom - self.content_top) / (self.body_bottom - self.body_top)

    @property
    def starts_part(self) -> bool:
        return self.first_line_size >= PART_HEADING_PT - 0.25 and not self.image_above_first_line


@dataclass(frozen=True)
class LayoutCheck:
    """Both checks of one PDF, from one pass over its pages (pdfplumber is the slow part)."""

    pages: list[PageFacts]
    overflows: list[Overflow]

    def sparse(self, min_fill: float = MIN_FILL, *, include_part_ends: bool = False) -> list[SparsePage]:
        """Pages under ``min_fill`` where no part ends (and, with ``include_part_ends``, those
        where one does, marked ``ends_part``). A part ends on the last page and on every page whose
        next page starts a part (``PageFacts.starts_part``)."""
        found = []
        for i, facts in enumerate(self.pages):
            ends_part = i == len(self.pages) - 1 or self.pages[i + 1].starts_part
            if facts.fill < min_fill and (include_part_ends or not ends_part):
                found.append(SparsePage(facts.number, facts.fill, facts.first_line, ends_part))
        return found

    @property
    def images(self) -> int:
        return sum(p.images for p in self.pages)

    def __repr__(self) -> str:  # what pytest shows of a fixture value: not 50 pages of facts
        return f"LayoutCheck({len(self.pages)} pages, {len(self.overflows)} overflows)"


def _pdfplumber():
    try:
        import pdfplumber
    except ImportError as exc:  # the test module skips first; this names the cause for other callers
        raise ImportError("the PDF layout checks need pdfplumber (pip install 'auditrun[test]')") from exc
    return pdfplumber


def objects(page) -> Iterator[tuple[str, dict]]:
    """(kind, object) for every character, image, rectangle, line and curve pdfplumber finds."""
    for kind in KINDS:
        for obj in getattr(page, kind + "s"):
            yield kind, obj


def ink_x(kind: str, obj: dict) -> tuple[float, float]:
    """The horizontal extent of an object's ink: its box, widened by half the line width for a
    stroke that is not a horizontal rule (a vertical border, a stroked box, a curve)."""
    x0, x1 = float(obj["x0"]), float(obj["x1"])
    if kind in ("rect", "line", "curve") and obj.get("stroke"):
        horizontal = kind == "line" and abs(float(obj["bottom"]) - float(obj["top"])) < 0.01
        if not horizontal:
            half = float(obj.get("linewidth") or 0) / 2
            x0, x1 = x0 - half, x1 + half
    return x0, x1


def left_edge(page) -> float:
    """The page's text block left edge: the smallest x0 of its characters (every line of body text,
    and the header and footer, start there); the CSS margin on a page without characters."""
    xs = [float(c["x0"]) for c in page.chars]
    return min(xs) if xs else CSS_SIDE_MARGIN_PT


def _lines(chars: Iterable[dict]) -> list[list[dict]]:
    """Characters grouped into text lines, top to bottom: a character joins the current line when
    it overlaps that line's first character vertically (sizes differ on a line; baselines align)."""
    lines: list[list[dict]] = []
    for c in sorted(chars, key=lambda c: (round(float(c["top"]), 1), float(c["x0"]))):
        if lines and float(c["top"]) < float(lines[-1][0]["bottom"]) - 0.5:
            lines[-1].append(c)
        else:
            lines.append([c])
    return [sorted(line, key=lambda c: float(c["x0"])) for line in lines]


def _words(chars: list[dict]) -> list[list[dict]]:
    """One line's characters split into words: at a space, or a gap wider than a fifth of the size."""
    words: list[list[dict]] = []
    prev = None
    for c in chars:
        if not c["text"].strip():
            prev = None
            if words and words[-1]:
                words.append([])
            continue
        gap = prev is not None and float(c["x0"]) - float(prev["x1"]) > 0.2 * float(c["size"])
        if not words or gap:
            words.append([])
        words[-1].append(c)
        prev = c
    return [w for w in words if w]


def _text(chars: list[dict]) -> str:
    return " ".join("".join(c["text"] for c in word) for word in _words(chars))


def _describe(kind: str, obj: dict) -> str:
    top = float(obj["top"])
    size = f"{float(obj['x1']) - float(obj['x0']):.0f} x {float(obj['bottom']) - top:.0f} pt"
    if kind == "image":
        return f"image {obj.get('name') or ''} {size} at y {top:.0f}".replace("  ", " ")
    if kind == "line":
        shape = "horizontal rule" if abs(float(obj["bottom"]) - top) < 0.01 else "rule"
        return f"{shape} ({float(obj.get('linewidth') or 0):g} pt) {size} at y {top:.0f}"
    paint = ("filled " if obj.get("fill") else "") + ("stroked " if obj.get("stroke") else "")
    return f"{paint}{kind} {size} at y {top:.0f}"


def overflows_of(page, tolerance: float = TOLERANCE_PT) -> list[Overflow]:
    """The objects of one pdfplumber page that reach past its text block by more than ``tolerance``.

    Characters are reported per text line, as the words that reach outside (a word does when one of
    its characters does), so a table column past the margin reads as its cell texts; drawings one by
    one, described.
    """
    left = left_edge(page)
    right = float(page.width) - left
    found: list[Overflow] = []

    def outside(x0: float, x1: float) -> bool:
        return x0 < left - tolerance or x1 > right + tolerance

    for line in _lines(page.chars):
        bad = [w for w in _words(line)
               if outside(min(ink_x("char", c)[0] for c in w), max(ink_x("char", c)[1] for c in w))]
        if bad:
            chars = [c for w in bad for c in w]
            found.append(Overflow(page.page_number, "text", _text(chars), min(float(c["x0"]) for c in chars),
                                  max(float(c["x1"]) for c in chars), left, right))
    for kind, obj in objects(page):
        if kind != "char":
            x0, x1 = ink_x(kind, obj)
            if outside(x0, x1):
                found.append(Overflow(page.page_number, kind, _describe(kind, obj), x0, x1, left, right))
    return found


def page_facts(page, *, top_margin: float = CSS_TOP_MARGIN_PT,
               bottom_margin: float = CSS_BOTTOM_MARGIN_PT) -> PageFacts:
    """Text block, body extent, first body line and margin contents of one pdfplumber page."""
    width, height = float(page.width), float(page.height)
    left = left_edge(page)
    body_top, body_bottom = top_margin, height - bottom_margin

    def in_body(obj: dict) -> bool:  # reaches into the band between the margins
        return float(obj["bottom"]) > body_top and float(obj["top"]) < body_bottom

    everything = list(objects(page))
    body = [obj for _, obj in everything if in_body(obj)]
    chars = [c for c in page.chars if c["text"].strip()]
    lines = _lines(c for c in chars if in_body(c))
    first = lines[0] if lines else []
    first_top = min((float(c["top"]) for c in first), default=None)
    head = [c for c in chars if float(c["bottom"]) <= body_top]
    foot = [c for c in chars if float(c["top"]) >= body_bottom]
    return PageFacts(
        number=page.page_number, width=width, height=height, left=left, right=width - left,
        body_top=body_top, body_bottom=body_bottom,
        content_top=max(body_top, min(float(o["top"]) for o in body)) if body else None,
        content_bottom=min(body_bottom, max(float(o["bottom"]) for o in body)) if body else None,
        first_line=_text(first)[:80],
        first_line_size=max((float(c["size"]) for c in first), default=0.0),
        image_above_first_line=first_top is not None and any(
            in_body(i) and float(i["bottom"]) <= first_top for i in page.images),
        images=len(page.images),
        header=" / ".join(_text(line) for line in _lines(head)),
        footer=" / ".join(_text(line) for line in _lines(foot)),
        footer_x1=max((float(c["x1"]) for c in foot), default=None),
        margin_sizes=tuple(sorted({round(float(c["size"]), 2) for c in head + foot})),
        margin_drawings=sum(1 for kind, o in everything if kind != "char" and not in_body(o)),
    )


def check_layout(pdf_path: Path | str, tolerance: float = TOLERANCE_PT) -> LayoutCheck:
    """``page_facts`` and ``overflows_of`` of every page of the PDF."""
    pages, overflows = [], []
    with _pdfplumber().open(str(pdf_path)) as pdf:
        for page in pdf.pages:
            pages.append(page_facts(page))
            overflows += overflows_of(page, tolerance)
            page.close()  # drop the page's parsed objects: a long report stays small in memory
    return LayoutCheck(pages, overflows)


def page_overflows(pdf_path: Path | str, tolerance: float = TOLERANCE_PT) -> list[Overflow]:
    """Every object of every page that reaches past the page's text block by more than ``tolerance``."""
    return check_layout(pdf_path, tolerance).overflows


def sparse_pages(pdf_path: Path | str, min_fill: float = MIN_FILL) -> list[SparsePage]:
    """Pages filled less than ``min_fill`` of their text block's height where no part ends."""
    return check_layout(pdf_path).sparse(min_fill)


# ------------------------------------------------------------------------------------------------
# The PDF's own structure (pypdf): bookmarks and the tagged structure tree


def heading_bookmarks(pdf_path: Path | str) -> list[tuple[int, str, int, float]]:
    """(level, title, 1-based page, distance from the top of the page in pt) of every bookmark.

    WeasyPrint makes one bookmark per h1-h6 (level = heading level) pointing at the heading's box.
    """
    from pypdf import PdfReader

    reader = PdfReader(str(pdf_path))
    out: list[tuple[int, str, int, float]] = []

    def walk(items, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            number = reader.get_destination_page_number(item)
            height = float(reader.pages[number].mediabox.height)
            top = height - float(item.top) if item.top is not None else 0.0
            out.append((level, str(item.title), number + 1, top))

    walk(reader.outline, 1)
    return out


def structure_elements(pdf_path: Path | str, role: str = "/Figure") -> list[dict]:
    """Every element of the tagged PDF's structure tree (/StructTreeRoot) with structure type
    ``role``, as pypdf dictionaries (their /Alt, /K, /Pg ...)."""
    from pypdf import PdfReader
    from pypdf.generic import ArrayObject, DictionaryObject

    reader = PdfReader(str(pdf_path))
    root = reader.trailer["/Root"]
    if "/StructTreeRoot" not in root:
        return []
    found: list[dict] = []

    def walk(node) -> None:  # down /K only: the tree has no cycles that way (/P points back up)
        node = node.get_object() if hasattr(node, "get_object") else node
        if not isinstance(node, DictionaryObject):
            return
        if node.get("/Type") in ("/MCR", "/OBJR"):  # marked-content / object references: leaves
            return
        if node.get("/S") == role:
            found.append(node)
        kids = node.get("/K")
        for kid in kids if isinstance(kids, ArrayObject) else [kids] if kids is not None else []:
            walk(kid)

    walk(root["/StructTreeRoot"])
    return found
