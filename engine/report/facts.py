"""The "Model facts" page: one page for clinicians about the validation-chosen model, after the
label of Sendak et al. ("Presenting machine learning model information to clinical end-users with
model facts labels", npj Digital Medicine 2020): summary, mechanism, validation and performance, uses
and directions, warnings, other information, and one figure.

Every number comes from the views the rest of the report shows (the backbone section's headline
rows with their bootstrap intervals, the missed-tumour rows, calibration, external validation), so
the page and the sections it points to can never disagree. The warnings are the ones the run
measured: leakage, a distribution shift, explanation checks that failed, classes with few
leakage-free images, a fallback to random weights, miscalibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from engine.integrity.audit import LEAKAGE_WARN_FRACTION
from engine.report.backbone import BackboneSection, HeadlineRow
from engine.report.ethics import MissRow
from engine.report.external import ExternalView
from engine.report.figures import FigureRecord
from engine.report.integrity import SHIFTED_AUC, IntegrityView
from engine.report.values import Metric, as_metric, input_size_text, percent_text, weights_text
from engine.results import BackboneResult, Calibration, RunResults, Shift, ShiftClass
from engine.results import number as _num

#: A class with fewer leakage-free test images than this has no usable leakage-free estimate of its
#: own (the shift check's minimum, engine.integrity.shift.MIN_IMAGES, is the same judgement).
SMALL_CLASS = 10
#: Expected calibration error from which the page warns that probabilities are not probabilities.
MISCALIBRATED_ECE = 0.1


@dataclass(frozen=True)
class FactsRow:
    """One performance line: a metric on the test split and on the leakage-free subset."""

    label: str
    test: Metric
    leakage_free: Metric | None
    note: str | None = None


@dataclass
class ModelFacts:
    model: str
    anchor: str
    summary: str
    mechanism: list[tuple[str, str]]
    performance: list[FactsRow]
    n_test: int | None
    n_leakage_free: int | None
    validation_notes: list[str]
    uses: list[str]
    warnings: list[str]
    other: list[tuple[str, str]]
    figure: FigureRecord | None = None
    #: the results.json values behind every number on the page, for tests: label -> value
    values: dict[str, float] = field(default_factory=dict)


def _headline(section: BackboneSection, label: str) -> HeadlineRow | None:
    return next((r for r in section.headline if r.label == label), None)


def _performance(section: BackboneSection, miss: MissRow | None, calibration: Calibration | None
                 ) -> tuple[list[FactsRow], dict[str, float]]:
    rows, values = [], {}
    for label in ("Accuracy", "Balanced accuracy", "Macro-F1"):
        row = _headline(section, label)
        if row is None:
            continue
        rows.append(FactsRow(label, row.test, row.leakage_free, row.test_note))
        for where, metric in (("test", row.test), ("leakage-free", row.leakage_free)):
            if metric is not None and metric.value is not None:
                values[f"{label} ({where})"] = metric.value
    if miss is not None:
        rows.append(FactsRow("Tumours called no_tumor", miss.rate, miss.lf_rate,
                             f"{miss.missed} of {miss.total} tumour test images"))
        if miss.rate.value is not None:
            values["missed-tumour rate (test)"] = miss.rate.value
        if miss.lf_rate is not None and miss.lf_rate.value is not None:
            values["missed-tumour rate (leakage-free)"] = miss.lf_rate.value
    if isinstance(calibration, Calibration):
        before, after = _num(calibration.ece_before), _num(calibration.ece_after)
        if after is not None:
            rows.append(FactsRow("Calibration error (ECE), after temperature scaling", as_metric(after), None,
                                 f"{as_metric(before).text} before" if before is not None else None))
            values["ECE after"] = after
            if before is not None:
                values["ECE before"] = before
    return rows, values


def _warnings(results: RunResults, best: BackboneResult, integrity: IntegrityView | None,
              explanation_note: str | None) -> list[str]:
    """What the run measured that limits the headline numbers, most serious first."""
    out = []
    if results.run.status != "ok":
        out.append(f"The run ended with status “{results.run.status}”: some parts of this audit are missing.")
    if integrity is not None and integrity.fraction is not None and integrity.fraction > LEAKAGE_WARN_FRACTION:
        out.append(f"Leakage: {integrity.leaked} of {integrity.n_test} test images ({percent_text(integrity.fraction)}) "
                   "are copies or near-copies of training images; the leakage-free figures are the better estimate.")
    shift = results.integrity.shift if results.integrity is not None else None
    if isinstance(shift, Shift):
        shifted = [(c, _num(e.auc)) for c, e in shift.per_class.items()
                   if isinstance(e, ShiftClass) and _num(e.auc) is not None and _num(e.auc) >= SHIFTED_AUC]
        if shifted:
            out.append("Distribution shift: leakage-free test images are unlike the training images of their class "
                       "(domain ROC AUC " + ", ".join(f"{a:.2f} for {c}" for c, a in shifted) + "); validation "
                       "figures do not predict performance on such images.")
    if explanation_note:
        out.append("Explanations: " + explanation_note)
    elif best.explanations:
        failed = [e.method or "?" for e in best.explanations
                  if not e.error and e.randomisation is not None and e.randomisation.passed is False]
        if failed:
            out.append("Explanations: the maps of " + ", ".join(failed) + " barely change when the model's "
                       "learned weights are randomised, so they do not show what the model uses.")
    free = best.leakage_free
    if free is not None and results.data is not None:
        small = []
        for cls in results.class_names:
            entry = free.of_class(cls)
            n = entry.support if entry is not None else None
            if isinstance(n, int) and n < SMALL_CLASS:
                small.append(f"{cls} ({n})")
        if small:
            out.append("Small groups: fewer than {} leakage-free test images for {}; their leakage-free figures "
                       "are not estimates.".format(SMALL_CLASS, ", ".join(small)))
    weights = best.weights
    if weights is not None and weights.used == "random":
        out.append("Initialisation: the backbone was trained from random weights, not pretrained ones.")
    cal = best.calibration
    if isinstance(cal, Calibration) and (_num(cal.ece_after) or 0) > MISCALIBRATED_ECE:
        out.append(f"Calibration: the predicted probabilities are off by {_num(cal.ece_after):.3f} on average "
                   "(ECE after temperature scaling); do not read them as the chance of a tumour.")
    return out


def architecture_name(b: BackboneResult) -> str:
    """The network's name: its keras.applications architecture, or for a backbone loaded from a
    file (architecture "file") the display name it was given."""
    return b.architecture if b.architecture and b.architecture != "file" else (b.fine_tuned_from or b.label)


def model_facts(results: RunResults, sections: Sequence[BackboneSection], misses: Sequence[MissRow],
                integrity: IntegrityView | None, external: Sequence[ExternalView], *,
                explanation_notes: Sequence[str] = (), intended_use: str = "", intended_users: str = "",
                clinical_setting: str = "") -> ModelFacts | None:
    """The Model facts page for ``results.best_backbone``; None when no backbone was chosen."""
    best_name = results.best_backbone.name if results.best_backbone is not None else None
    best = results.backbone(best_name or "")
    section = next((s for s in sections if s.name == best_name), None)
    if best is None or section is None:
        return None
    basis = (results.best_backbone.selected_by or "validation macro_f1").replace("macro_f1", "macro-F1")
    candidates = len(results.finished())
    miss = next((m for m in misses if m.display_name == best.label), None)
    rows, values = _performance(section, miss, best.calibration)
    counts = results.data.counts if results.data is not None else {}
    n_train = sum((counts.get("train") or {}).values()) if counts else None
    n_val = sum((counts.get("val") or {}).values()) if counts else None
    accuracy = _headline(section, "Accuracy")
    summary = (f"{best.label} sorts one brain MRI slice into {', '.join(results.class_names)}. It was chosen by "
               f"{basis} from {candidates} model{'s' if candidates != 1 else ''} this run trained or imported; the "
               "test split was used once, after the choice."
               + (f" Test accuracy {accuracy.test.text}" + (f" (95 % CI {accuracy.test.ci_text})" if accuracy.test.ci_text else "")
                  + (f"; on test images with no copy in training {accuracy.leakage_free.text}" if accuracy.leakage_free else "")
                  + "." if accuracy else ""))
    mechanism = [
        ("Model", f"{architecture_name(best)}, a convolutional network; {weights_text(best)}"),
        ("Input", f"one slice image, resized to {input_size_text(best)} px (preprocessing: {best.preprocessing or 'n/a'})"),
        ("Output", "a probability for each class; the most probable class is the prediction"),
    ]
    if n_train is not None:
        mechanism.append(("Trained on", f"{n_train:,} training images; chosen on {n_val:,} validation images carved from "
                                        "the training folder"))
    notes = []
    for ext in external:
        row = next((r for r in ext.rows if r.display_name == best.label), None)
        if row is not None:
            notes.append(f"External data {ext.data}: {row.n_images} images, accuracy {row.accuracy.text}, "
                         f"macro-F1 {row.macro_f1.text}.")
            if row.accuracy.value is not None:
                values[f"external accuracy ({ext.data})"] = row.accuracy.value
            if row.macro_f1.value is not None:
                values[f"external macro-F1 ({ext.data})"] = row.macro_f1.value
    if not external:
        notes.append("External validation: none yet; auditrun evaluate measures the saved model on data from another "
                     "source.")
    uses = [intended_use or ("Research use: judging how this classifier behaves on held-out data. It is not a medical "
                             "device and must not be used to diagnose, triage or treat a patient."),
            ("Users: " + intended_users) if intended_users else
            "Users: machine-learning engineers, imaging researchers and the clinicians and reviewers who assess them.",
            ("Setting: " + clinical_setting) if clinical_setting else
            "Use only on slices like the test split (same kind of scanner, sequence and preprocessing); check every "
            "output against a qualified reader."]
    explanation_note = next((n for n in explanation_notes if n.startswith(best.label + ":")), None)
    env = results.environment
    other = [("Run", f"{results.run.id} ({results.run.status}), seed {results.experiment.seed}"),
             ("Software", f"auditrun {env.auditrun or 'n/a'}"
                          + (f", commit {env.git_commit[:12]}" if env.git_commit else "")),
             ]
    return ModelFacts(model=best.label, anchor=section.anchor, summary=summary, mechanism=mechanism,
                      performance=rows, n_test=section.n_test, n_leakage_free=section.n_leakage_free,
                      validation_notes=notes, uses=uses,
                      warnings=_warnings(results, best, integrity, explanation_note) or
                      ["None measured by this run; the limits under “Ethics and intended use” still apply."],
                      other=other, values=values)
