"""Render a run directory's ``results.json`` into ``report.html`` and ``report.pdf``.

One Jinja template source (``templates/report.html.j2``, autoescape on) serves both formats: the
HTML is self-contained (CSS inline, images as ``data:`` URIs) and WeasyPrint prints that same HTML
to a tagged PDF/UA-1 file with the print rules of the stylesheet (running header, page numbers,
page breaks). Inputs are only ``results.json``, the manifest copy and image files already in the
run directory: no model and no TensorFlow, so ``auditrun render RUN_DIR`` works on a copied run
whose models were deleted.

Usage::

    from engine.report import render_report
    paths = render_report(run_dir)                   # {"html": .../report.html, "pdf": .../report.pdf}
    render_report(run_dir, formats=("html",), now=datetime(2025, 1, 1, tzinfo=timezone.utc))
"""

from __future__ import annotations

import base64
import logging
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import jinja2
from markupsafe import Markup

from engine.atomic import write_bytes, write_text
from engine.errors import InputError
from engine.report import figures
from engine.report.model import Report, TrendView, build_report
# the integrity stage's pair thumbnails: the report's figures, drawn when the run audits its data
from engine.report.thumbnails import add_pair_thumbnails  # noqa: F401 - public name of the stage
from engine.report.checklists import remove_stale_checklists, write_checklists
from engine.results import RunResults, as_run_results, read_results, write_results

log = logging.getLogger(__name__)

FORMATS = ("html", "pdf")
TEMPLATE = "report.html.j2"
#: templates/ at the repository root, beside the engine package.
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif", ".webp": "image/webp"}

__all__ = ["FORMATS", "build_report", "load_results", "make_environment", "prepare_report", "render_html",
           "render_pdf", "render_report"]


def load_results(run_dir: Path) -> dict:
    """``run_dir/results.json``, read and schema-checked by engine.results.read_results (the one
    reader), so a broken file is an InputError naming the file and the failing JSON path."""
    return read_results(run_dir)


def _manifest(run_dir: Path, results: RunResults) -> tuple[str | None, dict]:
    """The manifest copy's text (for provenance) and its ``[report]`` table (title, author)."""
    path = Path(run_dir) / (results.experiment.manifest_file or "manifest.toml")
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        log.warning("%s: manifest copy missing or unreadable; the report's provenance will say so", path)
        return None, {}
    try:
        section = tomllib.loads(text).get("report") or {}
    except tomllib.TOMLDecodeError:
        section = {}
    return text, section if isinstance(section, dict) else {}


@dataclass(frozen=True)
class _Embedder:
    """Jinja filter: a run-directory-relative image path -> ``data:`` URI (the HTML travels alone)."""

    run_dir: Path

    def __call__(self, rel: str) -> str:
        path = (self.run_dir / rel).resolve()
        if self.run_dir.resolve() not in path.parents:
            raise InputError(f"image path {rel!r} in results.json points outside the run directory")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{path}: image named in results.json is missing from the run directory") from None
        mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
        return Markup(f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}")


def make_environment(run_dir: Path, templates_dir: Path | None = None) -> jinja2.Environment:
    """The Jinja environment: autoescape ON for every template, undefined names are errors."""
    directory = Path(templates_dir or TEMPLATES_DIR)
    if not (directory / TEMPLATE).is_file():
        raise InputError(f"report template {directory / TEMPLATE} not found")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        autoescape=True,  # every template, whatever its extension: results carry user-supplied text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["data_uri"] = _Embedder(Path(run_dir))
    return env


def _attach_figures(report: Report, results: RunResults, run_dir: Path) -> None:
    class_names = report.class_names
    by_name = {b.name: b for b in results.backbones}
    for section in report.backbones:
        backbone = by_name[section.name]
        section.curves = figures.training_curves(backbone, run_dir)
        section.confusion = figures.confusion_matrix_counts(backbone, class_names, run_dir)
        section.confusion_normalised = figures.confusion_matrix_normalised(backbone, class_names, run_dir)
        section.reliability = figures.reliability_diagram(backbone, run_dir)
        if section.subgroups is not None:
            section.subgroups.forest = figures.subgroup_forest(backbone, run_dir)
    facts = report.model_facts
    if facts is not None:
        section = next((s for s in report.backbones if s.anchor == facts.anchor), None)
        facts.figure = section.confusion_normalised if section is not None else None
    if isinstance(report.trend, TrendView):
        report.trend.figure = figures.trend_plot(report.trend.series, results.display_names(), run_dir)


def prepare_report(run_dir: Path, *, now: datetime | None = None, settings: Any = None) -> Report:
    """Load ``run_dir/results.json`` and the manifest copy, build the typed report and draw its
    figures under ``run_dir/figures/`` (the step before any output format). ``settings``: see
    render_report."""
    run_dir = Path(run_dir)
    results = as_run_results(load_results(run_dir))
    manifest_text, report_options = _manifest(run_dir, results)
    title, author = report_options.get("title"), report_options.get("author")
    report = build_report(results, manifest_text=manifest_text, now=now,
                          title=title if isinstance(title, str) and title else None,
                          author=author if isinstance(author, str) and author else None,
                          settings=settings)
    _attach_figures(report, results, run_dir)
    return report


def render_html(report: Report, run_dir: Path, templates_dir: Path | None = None) -> str:
    """The report's HTML text (images embedded from ``run_dir``)."""
    env = make_environment(run_dir, templates_dir)
    return env.get_template(TEMPLATE).render(report=report)


def render_pdf(html: str, run_dir: Path) -> bytes:
    """Tagged PDF/UA-1 bytes of the report HTML, printed by WeasyPrint with the print CSS."""
    import weasyprint  # lazy: only PDF output needs pango

    # Only data: URIs may be fetched: the report must never reach the network or the file system.
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"})
    document = weasyprint.HTML(string=html, base_url=str(run_dir), url_fetcher=fetcher)
    # pdf/ua-1 turns on tagging (structure tree, alt text, language) and PDF 1.7.
    return document.write_pdf(pdf_variant="pdf/ua-1", custom_metadata=False)


def _store_checklists(report: Report, run_dir: Path) -> None:
    """results.json's ``checklists`` block, rewritten when the checklists differ from it (they are
    derived from the rest of the file and the manifest copy, so rendering again refreshes them)."""
    data = load_results(run_dir)
    block = [c.to_json() for c in report.checklists]
    if data.get("checklists") == block or (not block and "checklists" not in data):
        return
    if block:
        data["checklists"] = block
    else:
        data.pop("checklists", None)
    RunResults.checked(data, Path(run_dir) / "results.json")
    write_results(run_dir, data)


def render_report(run_dir: Path, formats: Iterable[str] = FORMATS, *, now: datetime | None = None,
                  templates_dir: Path | None = None, settings: Any = None) -> dict[str, Path]:
    """Render ``report.html`` and/or ``report.pdf`` into ``run_dir`` from its ``results.json``.

    Args:
        run_dir: a run directory (results.json, manifest.toml, gradcam/ and figures images).
        formats: any of "html", "pdf".
        now: the "generated at" clock (tests pass a fixed one); default: the current UTC time.
        templates_dir: override of the template folder (default: the repository's ``templates/``).
        settings: the run's manifest (engine.manifest.Manifest; ``run_settings(run_dir)`` reads the
            run folder's copy): its ``[study]`` and ``[report] checklists`` fill the reporting
            checklists anew. Without it the report shows the checklists results.json holds. (The
            report never reads a manifest itself: the manifest's registries reach TensorFlow.)

    Also writes ``checklist-<key>.md`` / ``.csv`` for each ``[report] checklists`` entry (keyed by
    file name in the returned dict) and refreshes results.json's ``checklists`` block.

    Returns {format or file name: path written}. Figures are (re)drawn under ``run_dir/figures/`` from the
    numbers in results.json; every file is written atomically (tmp file + os.replace).
    """
    run_dir = Path(run_dir)
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InputError(f"report formats {unknown} are not supported; use {list(FORMATS)}")
    report = prepare_report(run_dir, now=now, settings=settings)
    html = render_html(report, run_dir, templates_dir)
    written: dict[str, Path] = {}
    if settings is not None:  # filled anew: results.json and the run folder keep what they now say
        _store_checklists(report, run_dir)
        remove_stale_checklists(report.checklists, run_dir)
    for path in write_checklists(report.checklists, run_dir, run_id=report.run_id, experiment=report.experiment):
        written[path.name] = path
    if "html" in formats:
        written["html"] = write_text(run_dir / "report.html", html)
    if "pdf" in formats:
        written["pdf"] = write_bytes(run_dir / "report.pdf", render_pdf(html, run_dir))
    return written
