"""The report as one typed object, built from ``results.json`` (Model Card Toolkit style).

``build_report`` turns the run's results dict into dataclasses that hold machine values
(``Metric.value``) apart from their display (``Metric.text``), so the template only lays things
out and tests can check the numbers without parsing HTML. Nothing here imports TensorFlow or
reads a model: ``auditrun render`` must work on a run directory whose models were deleted.

Optional blocks written by later stages (integrity, leakage_free, calibration, uncertainty,
gradcam, comparisons, gates, trend, external) become ``None`` / empty when absent; the template
skips their sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from engine.report.backbone import BackboneSection, _section
from engine.report.comparisons import ComparisonRow, _comparisons
from engine.report.ethics import EthicsView, _ethics_view
from engine.report.external import ExternalView, _external
from engine.report.integrity import IntegrityView, _integrity_view
from engine.report.nightly import GatesView, TrendView, _gates, _trend
from engine.report.summary import SummaryRow, _run_status_warning, _summary_row, best_label, best_sentence
from engine.report.values import _count, _display, _listed, _metric, _unreadable_text, format_duration


# ------------------------------------------------------------------------------------------------
# Report sections


@dataclass(frozen=True)
class Provenance:
    manifest_file: str
    manifest_text: str | None
    manifest_sha256: str | None
    seed: Any
    run_rows: list[tuple[str, str]]
    environment_rows: list[tuple[str, str]]
    packages: list[tuple[str, str]]
    splits: list[str]
    class_names: list[str]
    counts: list[tuple[str, list[int], int]]  # split, per-class counts, total
    count_totals: list[int]
    data_rows: list[tuple[str, str]]
    skipped: list[str]
    skipped_more: int
    timing_rows: list[tuple[str, str]]


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


# ------------------------------------------------------------------------------------------------
# Builders


def _provenance(results: dict, manifest_text: str | None, class_names: Sequence[str]) -> Provenance:
    experiment = results.get("experiment") or {}
    run = results.get("run") or {}
    env = results.get("environment") or {}
    data = results.get("data") or {}
    counts = data.get("counts") or {}
    splits = [s for s in ("train", "val", "test") if s in counts] + [s for s in counts if s not in ("train", "val", "test")]
    count_rows = []
    for split in splits:
        per = [_count((counts.get(split) or {}).get(c)) or 0 for c in class_names]
        count_rows.append((split, per, sum(per)))
    totals = [sum(row[1][i] for row in count_rows) for i in range(len(class_names))]
    run_rows = [
        ("Run id", str(run.get("id", "n/a"))),
        ("Status", str(run.get("status", "n/a"))),
        ("Started (UTC)", str(run.get("started_at", "n/a"))),
        ("Finished (UTC)", str(run.get("finished_at", "n/a"))),
        ("Wall time", format_duration(run.get("wall_time_s"))),
        ("Seed", str(experiment.get("seed", "n/a"))),
        ("Results schema version", str(results.get("schema_version", "n/a"))),
    ]
    env_rows = [
        ("auditrun", str(env.get("auditrun") or "n/a")),
        ("Git commit", str(env.get("git_commit") or "not recorded (not run from a git checkout)")),
        ("Python", str(env.get("python") or "n/a")),
        ("Platform", str(env.get("platform") or "n/a")),
    ]
    data_rows = [
        ("Data root", str(data.get("root", "n/a"))),
        ("Layout", str(data.get("layout", "n/a"))),
        ("Validation fraction", _metric(data.get("validation_fraction"), 2).text),
    ]
    if data.get("fingerprint"):
        data_rows.append(("Dataset fingerprint (SHA-256)", str(data["fingerprint"])))
    skipped, skipped_more = _listed(data.get("skipped"), _unreadable_text)
    timings = results.get("timings") or {}
    timing_rows = [(label, format_duration(timings.get(key))) for key, label in
                   (("data_s", "Data discovery and decoding"), ("integrity_s", "Integrity audit"),
                    ("shift_s", "Distribution-shift check (decodes the first backbone's images)"),
                    ("total_s", "Whole run")) if key in timings]
    for b in results.get("backbones") or []:
        t = b.get("timings") or {}
        if t:
            timing_rows.append((_display(b), f"training {format_duration(t.get('train_s'))}, evaluation "
                                             f"{format_duration(t.get('evaluate_s'))}"))
    return Provenance(
        manifest_file=str(experiment.get("manifest_file") or "manifest.toml"),
        manifest_text=manifest_text,
        manifest_sha256=experiment.get("manifest_sha256"),
        seed=experiment.get("seed"),
        run_rows=run_rows,
        environment_rows=env_rows,
        packages=sorted((str(k), str(v)) for k, v in (env.get("packages") or {}).items()),
        splits=splits,
        class_names=list(class_names),
        counts=count_rows,
        count_totals=totals,
        data_rows=data_rows,
        skipped=skipped,
        skipped_more=skipped_more,
        timing_rows=timing_rows,
    )


def build_report(results: dict, *, manifest_text: str | None = None, now: datetime | None = None,
                 title: str | None = None, author: str | None = None) -> Report:
    """The typed report for one run's ``results.json`` dict. Figures are attached by the caller."""
    if not isinstance(results, dict) or not isinstance(results.get("backbones"), list):
        raise ValueError("results has no 'backbones' list")
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    experiment = results.get("experiment") or {}
    run = results.get("run") or {}
    class_names = list((results.get("data") or {}).get("class_names") or [])
    backbones = results["backbones"]
    by_name = {b["name"]: b for b in backbones}
    display = {b["name"]: _display(b) for b in backbones}
    best = results.get("best_backbone") or {}
    best_name = best.get("name") if best.get("name") in by_name else None
    label = best_label(best.get("selected_by"))
    rows = [_summary_row(b, class_names, best_name, label, by_name) for b in backbones]
    failed = [r for r in rows if r.status != "ok"]
    sections = [_section(b, class_names) for b in backbones if b.get("status") == "ok"]
    integrity = _integrity_view(results, class_names)

    warnings = [w for w in [_run_status_warning(run)] if w]
    for text in (results.get("data") or {}).get("warnings") or []:
        text = str(text).strip()
        if text:
            warnings.append("Warning: " + text + ("" if text.endswith(".") else "."))
    if integrity and integrity.warning:
        warnings.append(integrity.warning)
    if failed:
        warnings.append(f"Backbones that failed and have no results ({len(failed)} of {len(rows)}): "
                        + ", ".join(r.display_name for r in failed) + ".")
    gates = _gates(results, display)
    if gates and gates.status == "FAIL":
        warnings.append(f"Regression gates failed ({gates.counts}).")
    trend = _trend(results, display)
    name = experiment.get("name") or "unnamed experiment"
    return Report(
        title=title or f"Audit report: {name}",
        author=author or "auditrun",
        language="en",
        experiment=name,
        description=str(experiment.get("description") or ""),
        run_id=str(run.get("id", "n/a")),
        run_status=str(run.get("status", "n/a")),
        generated_at=now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        generated_iso=now.astimezone(timezone.utc).isoformat(timespec="seconds"),
        class_names=class_names,
        best_sentence=best_sentence(rows, best_name, label),
        warnings=warnings,
        summary=rows,
        failed=failed,
        backbones=sections,
        integrity=integrity,
        comparisons=_comparisons(results, display),
        gates=gates,
        trend=trend,
        external=_external(results, display, class_names),
        ethics=_ethics_view(backbones, class_names),
        provenance=_provenance(results, manifest_text, class_names),
    )
