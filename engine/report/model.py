"""The report as one typed object, assembled from ``results.json`` (Model Card Toolkit style).

``build_report`` calls one builder per report section (summary, backbone, integrity, ethics,
comparisons, nightly, external, provenance: a module each beside this one) and gathers the
warnings shown first. The views hold machine values (``Metric.value``) apart from their display
(``Metric.text``), so the template only lays things out and tests can check the numbers without
parsing HTML. Nothing here imports TensorFlow or reads a model: ``auditrun render`` must work on a
run directory whose models were deleted.

Optional blocks written by later stages (integrity, leakage_free, calibration, uncertainty,
gradcam, comparisons, gates, trend, external) become ``None`` / empty when absent; the template
skips their sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from engine.report.backbone import BackboneSection, backbone_section
from engine.report.checklists import Checklist, build_checklists
from engine.report.study import StudyConfig
from engine.report.comparisons import ComparisonRow, comparison_rows
from engine.report.ethics import EthicsView, ethics_view
from engine.report.external import ExternalView, external_views
from engine.report.facts import ModelFacts, model_facts
from engine.report.integrity import IntegrityView, integrity_view
from engine.report.nightly import GatesView, TrendView, gates_view, trend_view
from engine.report.provenance import Provenance, provenance_view
from engine.report.explanations import localisation_line
from engine.report.summary import SummaryRow, best_label, best_sentence, run_status_warning, summary_row
from engine.results import BestBackbone, RunResults, as_run_results


@dataclass(frozen=True)
class LocalisationLine:
    """One first-page sentence on localisation; ``verdict`` "tumour", "elsewhere" or "not measured"."""

    text: str
    verdict: str

    @property
    def warn(self) -> bool:
        return self.verdict == "elsewhere"


@dataclass
class Report:
    title: str
    author: str
    language: str
    experiment: str
    description: str
    run_id: str
    run_status: str
    generated_at: str
    generated_iso: str
    class_names: list[str]
    best_sentence: str | None
    warnings: list[str]
    summary: list[SummaryRow]
    failed: list[SummaryRow]
    backbones: list[BackboneSection]
    integrity: IntegrityView | None
    comparisons: list[ComparisonRow]
    gates: GatesView | None
    trend: TrendView | None
    external: list[ExternalView]
    ethics: EthicsView
    provenance: Provenance
    extra: dict[str, Any] = field(default_factory=dict)
    #: first-page sentences where a backbone's explanations localise near chance (unfaithful maps,
    #: or a model that relies on regions outside the tumour)
    explanation_notes: list[str] = field(default_factory=list)
    #: the first page's localisation sentence per model (or one for all when none was measured)
    localisation_lines: list["LocalisationLine"] = field(default_factory=list)
    #: page 2: the validation-chosen model on one page (engine.report.facts); None when none was chosen
    model_facts: ModelFacts | None = None
    #: the reporting checklists of ``[report] checklists`` (engine.report.checklists)
    checklists: list[Checklist] = field(default_factory=list)
    #: the report's sections in order: element id -> heading (the contents list and the checklist links)
    sections: dict[str, str] = field(default_factory=dict)


def _warnings(results: RunResults, summary: list[SummaryRow], failed: list[SummaryRow],
              integrity: IntegrityView | None, gates: GatesView | None) -> list[str]:
    """What the reader must see before any number: an unfinished run, data problems, leakage,
    failed backbones, failed gates (in that order)."""
    warnings = [w for w in [run_status_warning(results.run)] if w]
    for text in results.data.warnings if results.data is not None else []:
        text = str(text).strip()
        if text:
            warnings.append("Warning: " + text + ("" if text.endswith(".") else "."))
    if integrity and integrity.warning:
        warnings.append(integrity.warning)
    if failed:
        warnings.append(f"Backbones that failed and have no results ({len(failed)} of {len(summary)}): "
                        + ", ".join(r.display_name for r in failed) + ".")
    if gates and gates.status == "FAIL":
        warnings.append(f"Regression gates failed ({gates.counts}).")
    return warnings


def _utc(now: datetime | None) -> datetime:
    """The "generated at" clock in UTC; a naive time is taken to be UTC already."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


def _sections(results: RunResults, facts: ModelFacts | None, integrity: IntegrityView | None,
              backbones: list[BackboneSection], comparisons: list, external: list, gates, trend,
              checklists: bool) -> dict[str, str]:
    """Element id -> heading of every part this report has, in reading order."""
    parts = [("model-facts", "Model facts", facts is not None),
             ("summary", "Summary of all backbones", True),
             ("integrity", "Data integrity and leakage", integrity is not None),
             ("curves", "Training curves", True),
             ("confusion", "Confusion matrices", True),
             ("per-class", "Per-class metrics", True),
             ("subgroups", "Performance by subgroup", any(b.subgroups for b in backbones)),
             ("calibration", "Calibration", any(b.calibration for b in backbones)),
             ("gradcam", "Grad-CAM explanations", any(b.gradcam for b in backbones)),
             ("comparisons", "Comparing backbones", bool(comparisons)),
             ("external", "External validation", bool(external)),
             ("gates", "Regression gates and trend", bool(gates or trend)),
             ("ethics", "Ethics and intended use", True),
             ("checklists", "Reporting checklist", checklists),
             ("provenance", "Provenance", True)]
    return {anchor: heading for anchor, heading, present in parts if present}


def build_report(results: RunResults | dict, *, manifest_text: str | None = None, now: datetime | None = None,
                 title: str | None = None, author: str | None = None, settings: Any = None) -> Report:
    """The typed report for one run's results (the typed tree, or results.json's dict). Figures
    are attached by the caller.

    ``settings``: the run's manifest (engine.manifest.Manifest; ``run_settings(run_dir)`` reads the
    run folder's copy) for ``[study]`` and ``[report] checklists``: the checklists are filled anew.
    Without it the report shows the checklists results.json holds, as they were filled.
    """
    if isinstance(results, dict) and not isinstance(results.get("backbones"), list):
        raise ValueError("results has no 'backbones' list")
    results = as_run_results(results)
    now = _utc(now)
    experiment, run = results.experiment, results.run
    class_names = results.class_names
    backbones = results.backbones
    best = results.best_backbone or BestBackbone()
    best_name = best.name if results.backbone(best.name) is not None else None
    label = best_label(best.selected_by)
    rows = [summary_row(b, class_names, best_name, label, results) for b in backbones]
    failed = [r for r in rows if r.status != "ok"]
    integrity = integrity_view(results, class_names)
    gates = gates_view(results)
    name = experiment.name or "unnamed experiment"
    finished = results.finished()
    study = settings.study if settings is not None else StudyConfig()
    sections = [backbone_section(b, class_names) for b in finished]
    comparisons = comparison_rows(results)
    external = external_views(results, class_names)
    ethics = ethics_view(backbones, class_names)
    trend = trend_view(results)
    lines = [localisation_line(b) for b in finished]
    notes = [text for verdict, text in lines if verdict == "elsewhere"]
    if lines and all(verdict == "not measured" for verdict, _ in lines):  # one line, not one per model
        lines = [("not measured", "Localisation not measured: no test image has a tumour outline, so the report "
                                  "cannot say whether the maps look at the tumour.")]
    facts = model_facts(results, sections, ethics.rows, integrity, external, explanation_notes=notes,
                        intended_use=study.intended_use, intended_users=study.intended_users,
                        clinical_setting=study.clinical_setting)
    wanted = settings.report.checklists if settings is not None else [c.key for c in results.checklists or []]
    anchors = _sections(results, facts, integrity, sections, comparisons, external, gates, trend, bool(wanted))
    checklists = (build_checklists(results, settings, anchors) if settings is not None
                  else [Checklist.from_result(c, anchors) for c in results.checklists or []])
    if facts is not None and checklists:
        facts.other.append(("Reporting", "; ".join(
            f"{c.title}: {c.answered_from_run} of {len(c.items)} items answered or drafted from the run"
            for c in checklists) + " (“Reporting checklist”)"))
    return Report(
        title=title or f"Audit report: {name}",
        author=author or "auditrun",
        language="en",
        experiment=name,
        description=str(experiment.description or ""),
        run_id=str(run.id),
        run_status=str(run.status),
        generated_at=now.strftime("%Y-%m-%d %H:%M UTC"),
        generated_iso=now.isoformat(timespec="seconds"),
        class_names=class_names,
        best_sentence=best_sentence(rows, best_name, label),
        warnings=_warnings(results, rows, failed, integrity, gates),
        summary=rows,
        failed=failed,
        backbones=sections,
        integrity=integrity,
        comparisons=comparisons,
        gates=gates,
        trend=trend,
        external=external,
        ethics=ethics,
        provenance=provenance_view(results, manifest_text, class_names),
        explanation_notes=notes,
        localisation_lines=[LocalisationLine(text, verdict) for verdict, text in lines],
        model_facts=facts,
        checklists=checklists,
        sections=anchors,
    )
