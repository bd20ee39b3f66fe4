"""The report's opening: the summary table (one row per backbone, the best one marked in words),
the sentence naming the best backbone, and the warning when the run did not reach its end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.report.explanations import summary_cell
from engine.report.values import (Metric, as_metric, class_metric, format_duration, input_size_text,
                                  macro_note, weights_text)
from engine.results import BackboneResult, Metrics, RunInfo, RunResults, ValidationMetrics
from engine.results import number as _num


@dataclass(frozen=True)
class SummaryRow:
    name: str
    display_name: str
    status: str
    error: str | None
    best: bool
    best_label: str
    validation_macro_f1: Metric
    accuracy: Metric
    accuracy_lf: Metric | None
    macro_f1: Metric
    macro_f1_lf: Metric | None
    per_class_f1: list[Metric]
    weights: str
    input_size: str
    training_time: str
    baseline_note: str | None
    #: which classes macro-F1 averaged, where one is absent (see macro_note); None when all are in
    macro_note: str | None = None
    macro_note_lf: str | None = None
    #: explanation reliability per method in words (engine.report.explanations.summary_cell)
    explanation: str | None = None


def run_status_warning(run: RunInfo) -> str | None:
    """First thing a reader sees when the run did not reach its end."""
    status, error = run.status, run.error
    because = f" ({error})" if error else ""
    if status == "failed":
        return f"This run failed and did not finish{because}. Every section below is incomplete."
    if status == "interrupted":
        command = run.resume_command
        return (f"This run was interrupted{because} and did not finish; every section below is incomplete."
                + (f" Continue it with: {command}" if command else ""))
    if status == "running":
        return "This run had not finished when this report was rendered; every section below is incomplete."
    return None


def _training_seconds(backbone: BackboneResult) -> float | None:
    train_s = _num(backbone.train_s)
    if train_s is not None:
        return train_s
    times = [_num(s.time_s) for s in backbone.stages]
    return sum(t for t in times if t is not None) if backbone.stages else None


def best_label(selected_by: str | None) -> str:
    """'best (validation macro-F1)': the words that mark the best row, never colour alone."""
    basis = (selected_by or "validation macro_f1").replace("macro_f1", "macro-F1").replace("_", " ")
    return f"best ({basis})"


def _macro_f1(block: Metrics | None) -> float | None:
    return _num(block.macro_f1) if isinstance(block, Metrics) else None


def summary_row(backbone: BackboneResult, class_names: Sequence[str], best_name: str | None, label: str,
                results: RunResults) -> SummaryRow:
    ok = backbone.ok
    test = (backbone.test or Metrics()) if ok else Metrics()
    free = backbone.leakage_free if ok else None
    baseline_note = None
    parent = results.backbone(backbone.fine_tuned_from or "")
    if ok and parent is not None and parent.ok:
        mine, theirs = _macro_f1(test), _macro_f1(parent.test)
        if mine is not None and theirs is not None:
            diff = mine - theirs
            word = "gain" if diff > 0 else "loss" if diff < 0 else "no change"
            baseline_note = (f"{word} of {abs(diff):.3f} test macro-F1 against the frozen baseline {parent.label}"
                             if diff else f"same test macro-F1 as the frozen baseline {parent.label}")
    validation = backbone.validation
    return SummaryRow(
        name=backbone.name,
        display_name=backbone.label,
        status=backbone.status or "unknown",
        error=backbone.error,
        best=backbone.name == best_name,
        best_label=label,
        validation_macro_f1=as_metric(validation.macro_f1 if isinstance(validation, ValidationMetrics) else None),
        accuracy=as_metric(test.accuracy),
        accuracy_lf=as_metric(free.accuracy) if free else None,
        macro_f1=as_metric(test.macro_f1),
        macro_f1_lf=as_metric(free.macro_f1) if free else None,
        per_class_f1=[class_metric(test.of_class(c), "f1") for c in class_names],
        weights=weights_text(backbone),
        input_size=input_size_text(backbone),
        training_time=format_duration(_training_seconds(backbone)) if ok else "n/a",
        baseline_note=baseline_note,
        macro_note=macro_note(test, class_names, "the test split") if ok else None,
        macro_note_lf=macro_note(free, class_names) if free else None,
        explanation=summary_cell(backbone) if ok else None,
    )


def best_sentence(rows: Sequence[SummaryRow], best_name: str | None, label: str) -> str | None:
    """'The best backbone, chosen by validation macro-F1, is ...', with its test (and leakage-free) figures."""
    if not best_name:
        return None
    row = next(r for r in rows if r.name == best_name)
    return (f"The best backbone, chosen by {label[6:-1]}, is {row.display_name}: test accuracy "
            f"{row.accuracy.text}, macro-F1 {row.macro_f1.text}"
            + (f" ({row.macro_note})" if row.macro_note else "")
            + (f" (leakage-free: accuracy {row.accuracy_lf.text}, macro-F1 {row.macro_f1_lf.text}"
               + (f" over {row.macro_note_lf}" if row.macro_note_lf else "") + ")"
               if row.macro_f1_lf else "") + ".")
