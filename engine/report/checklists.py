"""Reporting checklists filled from the run: CLAIM 2024 and TRIPOD+AI.

What a reviewer checks an imaging-AI paper against is a reporting guideline:

- CLAIM 2024: Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in
  Medical Imaging (CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300. 44 items.
- TRIPOD+AI: Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement: updated guidance for
  reporting clinical prediction models that use regression or machine learning methods. BMJ
  2024;385:e078378. 27 main items (sub-items a, b, c are answered together under their item).

Each item maps to where its answer comes from (a value in results.json, a manifest key, a
``[study]`` key) and gets one status:

- ``from-run``: answered with the run's own numbers and a link to the report section that shows
  them; also an answer the authors gave in ``[study]`` (the source says so);
- ``drafted``: a first answer written from the run that only the authors can confirm;
- ``author-input``: the run cannot know; the answer names the ``[study]`` key that answers it;
- ``not-applicable``: with the reason (a ``[study]`` answer that begins "Not applicable" gives one).

Item wording is ours and short, with the guideline's own number; the papers have the full text.
The checklist is a value apart from its display: ``Checklist`` serialises once into results.json
(``checklists``), and the Markdown, the CSV and the report section are three renderings of it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.integrity.audit import LEAKAGE_WARN_FRACTION
from engine.report.explanations import label as method_label, localisation_of
from engine.report.facts import architecture_name
from engine.report.study import StudyConfig
from engine.report.values import count_of, display_path, percent_text
from engine.results import BackboneResult, Calibration, RunResults
from engine.results import number as _num

FROM_RUN, DRAFTED, AUTHOR, NOT_APPLICABLE = "from-run", "drafted", "author-input", "not-applicable"
STATUSES = (FROM_RUN, DRAFTED, AUTHOR, NOT_APPLICABLE)
#: How the report and the Markdown name each status.
STATUS_LABELS = {FROM_RUN: "From the run", DRAFTED: "Drafted from the run: author to confirm",
                 AUTHOR: "Author input needed", NOT_APPLICABLE: "Not applicable"}
#: The report's own file, which every section link points into.
REPORT_FILE = "report.html"
CSV_COLUMNS = ("item", "status", "answer", "section")


@dataclass(frozen=True)
class Answer:
    status: str
    text: str
    #: the report section (its element id) that shows the evidence; None where none does
    section: str | None = None
    #: where the answer comes from: "results.json ...", "manifest [training]", "[study] funding"
    source: str = "results.json"


@dataclass(frozen=True)
class ChecklistItem:
    item: str
    part: str
    topic: str
    status: str
    answer: str
    section: str | None
    section_title: str | None
    source: str

    @property
    def status_label(self) -> str:
        if self.status == FROM_RUN and self.source.startswith("[study]"):
            return "Stated by the authors"
        return STATUS_LABELS[self.status]

    @property
    def link(self) -> str | None:
        return f"{REPORT_FILE}#{self.section}" if self.section else None


@dataclass(frozen=True)
class Checklist:
    key: str
    title: str
    citation: str
    items: list[ChecklistItem]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(1 for i in self.items if i.status == s) for s in STATUSES}

    @property
    def answered_from_run(self) -> int:
        """Items the run answered or drafted: what an auditrun run saves its authors."""
        counts = self.counts
        return counts[FROM_RUN] + counts[DRAFTED]

    @property
    def anchor(self) -> str:
        return f"checklist-{self.key}"

    @property
    def summary(self) -> str:
        c = self.counts
        return (f"{self.title}: {c[FROM_RUN]} of {len(self.items)} items from the run, {c[DRAFTED]} drafted for the "
                f"authors to confirm, {c[AUTHOR]} need the authors' input, {c[NOT_APPLICABLE]} not applicable")

    @classmethod
    def from_result(cls, block, sections: dict[str, str]) -> "Checklist":
        """A checklist stored in results.json (``checklists``), for a report rendered without the
        run's settings: shown as it was filled."""
        items = [ChecklistItem(str(e.item), e.part or "", e.topic or "", e.status, e.answer,
                               e.section if e.section in sections else None,
                               sections.get(e.section) if e.section else None, e.source or "results.json")
                 for e in block.items]
        return cls(block.key, block.title or block.key, block.citation or "", items)

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "citation": self.citation, "counts": self.counts,
                "items": [{"item": i.item, "part": i.part, "topic": i.topic, "status": i.status, "answer": i.answer,
                           "section": i.section, "source": i.source} for i in self.items]}


# ------------------------------------------------------------------------------------------------
# What the run knows, gathered once for every item


@dataclass
class _Run:
    results: RunResults
    #: the run's engine.manifest.Manifest (read by the caller: the report never imports the manifest,
    #: whose registries reach TensorFlow); only its plain settings are read here
    settings: Any
    #: report section id -> heading, for the sections this report has
    sections: dict[str, str]
    study: StudyConfig = field(init=False)
    best: BackboneResult | None = field(init=False)

    def __post_init__(self) -> None:
        self.study = self.settings.study
        name = self.results.best_backbone.name if self.results.best_backbone is not None else None
        self.best = self.results.backbone(name or "")

    def at(self, *anchors: str) -> str | None:
        """The first of ``anchors`` this report has."""
        return next((a for a in anchors if a in self.sections), None)

    # ---------------------------------------------------------------- facts several items share
    @property
    def finished(self) -> list[BackboneResult]:
        return self.results.finished()

    @property
    def architectures(self) -> str:
        names = sorted({architecture_name(b) for b in self.finished})
        return ", ".join(names) or "none finished"

    @property
    def data_name(self) -> str:
        data = self.results.data
        return display_path(data.root) if data is not None and data.root else "the data folder"

    def split_total(self, split: str) -> int | None:
        data = self.results.data
        if data is None or split not in (data.counts or {}):
            return None
        return sum(count_of(v) or 0 for v in data.split_counts(split).values())

    def split_text(self) -> str:
        data = self.results.data
        if data is None or not data.counts:
            return "image counts not recorded"
        parts = []
        for split, label in (("train", "training"), ("val", "validation"), ("test", "test")):
            if split in data.counts:
                per = data.split_counts(split)
                parts.append(f"{label} {self.split_total(split):,} ("
                             + ", ".join(f"{c} {count_of(per.get(c)) or 0:,}" for c in self.results.class_names) + ")")
        return "; ".join(parts)

    def best_line(self) -> str:
        """'EfficientNet-Lite0_ft: test accuracy 0.746 (95 % CI ...), macro-F1 ...; leakage-free ...'."""
        b = self.best
        if b is None or b.test is None:
            return "no backbone was chosen"
        boot, free_boot = _boot(b)
        text = (f"{b.label}: test accuracy {_f(b.test.accuracy)}{_ci(boot, 'accuracy')}, macro-F1 "
                f"{_f(b.test.macro_f1)}{_ci(boot, 'macro_f1')} on {b.test.n_images} images")
        if b.leakage_free is not None:
            text += (f"; leakage-free subset ({b.leakage_free.n_images} images) accuracy {_f(b.leakage_free.accuracy)}"
                     f"{_ci(free_boot, 'accuracy')}, macro-F1 {_f(b.leakage_free.macro_f1)}{_ci(free_boot, 'macro_f1')}")
        return text

    def leakage_text(self) -> str | None:
        integ = self.results.integrity
        if integ is None:
            return None
        leaked, n_test = count_of(integ.cross_split_near), count_of(integ.n_test)
        if leaked is None or not n_test:
            return None
        return (f"{leaked} of {n_test} test images ({percent_text(leaked / n_test)}) have an exact or near copy in "
                f"training (perceptual hash, Hamming distance at most {integ.near_threshold})")


def _f(value) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:.3f}"


def _boot(b: BackboneResult):
    if b.uncertainty is None:
        return None, None
    test, free = b.uncertainty.blocks()
    return test, free


def _ci(boot, key: str) -> str:
    est = getattr(boot, key, None) if boot is not None else None
    low, high = (_num(getattr(est, "lower", None)), _num(getattr(est, "upper", None))) if est is not None else (None, None)
    return "" if low is None or high is None else f" (95 % CI {low:.3f}–{high:.3f})"


def _join(*parts: str | None) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def _study(run: _Run, key: str, *, measured: str | None = None, section: str | None = None,
           fallback: Answer | None = None) -> Answer:
    """An item only the authors can answer: their ``[study]`` text, else ``fallback``, else a
    request naming the key; what the run measured on the topic is kept in front either way."""
    text = str(getattr(run.study, key) or "").strip()
    source = f"[study] {key}"
    if text:
        lowered = text.lower()
        if lowered.startswith("not applicable"):
            reason = text[len("not applicable"):].lstrip(" :;,.-–—") or "stated by the authors"
            return Answer(NOT_APPLICABLE, _join(measured, f"Not applicable: {reason}"), section, source)
        return Answer(FROM_RUN, _join(measured, text), section, source)
    if fallback is not None:
        return fallback
    return Answer(AUTHOR, _join(measured, f"Author input needed: [study] {key}."), section, source)


def _studies(run: _Run, keys: Sequence[tuple[str, str]], *, measured: str | None = None,
             section: str | None = None, drafted_if_some: bool = False) -> Answer:
    """An item several ``[study]`` keys answer together (TRIPOD+AI 18: funding, conflicts, ...)."""
    given, missing = [], []
    for key, label in keys:
        text = str(getattr(run.study, key) or "").strip()
        (given if text else missing).append((key, label, text))
    parts = [f"{label}: {text.rstrip('.')}." for _, label, text in given]
    source = "[study] " + ", ".join(k for k, _ in keys)
    if not missing:
        return Answer(FROM_RUN, _join(measured, *parts), section, source)
    ask = "Author input needed: " + ", ".join(f"[study] {k}" for k, _, _ in missing) + "."
    status = DRAFTED if (measured and drafted_if_some) else AUTHOR
    return Answer(status, _join(measured, *parts, ask), section, source)


# ------------------------------------------------------------------------------------------------
# Answers the run measures (shared by both guidelines)


def _title(run: _Run) -> Answer:
    return Answer(DRAFTED, f"Deep learning: convolutional neural networks ({run.architectures}) fitted by transfer "
                           f"learning to classify brain MRI slices into {', '.join(run.results.class_names)}. The "
                           "paper's title should name the method and the task.", run.at("summary"),
                  "results.json backbones")


def _abstract(run: _Run) -> Answer:
    n = len(run.finished)
    leak = run.leakage_text()
    return Answer(DRAFTED, _join(
        f"Design: retrospective development and internal test of {n} classifier{'s' if n != 1 else ''} on "
        f"{run.data_name} ({run.split_text()}).",
        f"Model chosen on validation only. Result: {run.best_line()}.",
        f"{leak[0].upper() + leak[1:]}." if leak else None,
        "Conclusion: for the authors."), run.at("model-facts", "summary"), "results.json")


def _background(run: _Run) -> Answer:
    default = Answer(DRAFTED, "Research audit of image classifiers that sort brain MRI slices by tumour type, for "
                              "engineers, researchers and reviewers; not a diagnostic device (report section "
                              "“Ethics and intended use”). The clinical background is the authors' to write.",
                     run.at("ethics"), "auditrun's stated intended use")
    return _study(run, "intended_use", section=run.at("ethics"), fallback=default)


def _objectives(run: _Run) -> Answer:
    goal = _goal_text(run)
    return _study(run, "objectives", section=run.at("summary"),
                  fallback=Answer(DRAFTED, f"{goal} No hypothesis was stated in the manifest.", run.at("summary"),
                                  "results.json backbones, best_backbone"))


def _goal_text(run: _Run) -> str:
    imported = [b for b in run.finished if b.source == "imported"]
    trained = [b for b in run.finished if b.source != "imported"]
    parts = []
    if trained:
        parts.append(f"model creation: {len(trained)} backbone{'s' if len(trained) != 1 else ''} trained and compared")
    if imported:
        parts.append(f"evaluation of {len(imported)} model{'s' if len(imported) != 1 else ''} trained elsewhere")
    if run.results.external:
        parts.append("testing on external data")
    return "Study goal: " + ("; ".join(parts) or "no model finished") + "."


def _design(run: _Run) -> Answer:
    return _study(run, "study_design", fallback=Answer(
        DRAFTED, f"Retrospective: the run read an existing image collection ({run.data_name}); no data were collected "
                 "for it.", run.at("provenance"), "results.json data"))


def _goal(run: _Run) -> Answer:
    return Answer(DRAFTED, _goal_text(run), run.at("summary"), "results.json backbones")


def _sources(run: _Run) -> Answer:
    data = run.results.data
    measured = (f"Images read from {run.data_name} (layout “{data.layout if data else 'n/a'}”, dataset "
                f"fingerprint {((data.fingerprint if data else None) or 'not recorded')[:16]}…): {run.split_text()}.")
    return _study(run, "data_source", measured=measured, section=run.at("provenance"),
                  fallback=Answer(DRAFTED, _join(measured, "Where and when the images were acquired: [study] "
                                                           "data_source."), run.at("provenance"), "results.json data"))


def _skipped(run: _Run) -> tuple[int, int | None]:
    data = run.results.data
    skipped = len(data.skipped) if data is not None else 0
    integ = run.results.integrity
    unreadable = len(integ.unreadable) if integ is not None else None
    return skipped, unreadable


def _eligibility(run: _Run) -> Answer:
    skipped, _ = _skipped(run)
    measured = (f"Every readable image in a class folder of {run.data_name} was included; {skipped} file"
                f"{'s' if skipped != 1 else ''} could not be used and {'is' if skipped == 1 else 'are'} listed with the "
                "reason.")
    return _study(run, "eligibility", measured=measured, section=run.at("provenance"),
                  fallback=Answer(DRAFTED, _join(measured, "Clinical inclusion criteria: [study] eligibility."),
                                  run.at("provenance"), "results.json data.skipped"))


def _preprocessing(run: _Run) -> Answer:
    per = "; ".join(f"{b.label}: resized to {b.input_size}×{b.input_size} px, preprocessing "
                    f"“{b.preprocessing or 'n/a'}”" for b in run.finished) or "no backbone finished"
    aug = run.settings.training.augmentation
    used = [k if getattr(aug, k) is True else f"{k} {getattr(aug, k)}"
            for k in ("flip", "rotation", "shift", "zoom", "brightness", "contrast") if getattr(aug, k)]
    aug_text = ("training augmentation: " + ", ".join(used)) if aug.enabled and used else "no augmentation"
    return Answer(FROM_RUN, f"Each image is decoded to RGB and resized; {per}; {aug_text}.",
                  run.at("curves"), "results.json backbones[].preprocessing, manifest [training.augmentation]")


def _subsets(run: _Run) -> Answer:
    data = run.results.data
    frac = _num(data.validation_fraction) if data is not None else None
    grouped = []
    if data is not None and data.validation_grouped_by_duplicates:
        grouped.append("duplicate groups")
    if data is not None and data.validation_grouped_by_patient:
        grouped.append("patients")
    text = (f"Validation: {percent_text(frac)} of the training folder, carved before training"
            + (f", grouped by {' and '.join(grouped)} so no group straddles training and validation" if grouped else "")
            + ". The test folder is used once, after model selection.")
    if run.best is not None and run.best.leakage_free is not None:
        text += (f" Leakage-free test subset: the {run.best.leakage_free.n_images} test images with no exact or near "
                 "copy in training, reported beside every headline metric.")
    return Answer(FROM_RUN, text, run.at("integrity", "summary"), "results.json data, backbones[].leakage_free")


def _deidentification(run: _Run) -> Answer:
    return _study(run, "de_identification", measured="No patient identifier appears in this report or its files; "
                                                     "images are named by neutral references where the data carry "
                                                     "patient ids.", section=None)


def _missing(run: _Run) -> Answer:
    skipped, unreadable = _skipped(run)
    integ = run.results.integrity
    text = (f"{skipped} image file{'s' if skipped != 1 else ''} could not be read or labelled and {'was' if skipped == 1 else 'were'} "
            "left out (listed with the reason); no value was imputed.")
    if integ is not None:
        text += f" The integrity audit read {count_of(integ.n_readable) or 0:,} of {count_of(integ.n_files) or 0:,} files."
    return Answer(FROM_RUN, text, run.at("integrity", "provenance"), "results.json data.skipped, integrity")


def _image_facts(run: _Run) -> str | None:
    integ = run.results.integrity
    stats = (integ.image_stats or {}) if integ is not None else {}
    if not stats:
        return None
    parts = []
    for split, block in stats.items():
        if not isinstance(block, dict):
            continue
        sizes = block.get("most_common_sizes") or []
        top = sizes[0] if sizes else None
        top_text = (f", most often {top[0][0]}×{top[0][1]}" if isinstance(top, (list, tuple)) and top
                    and isinstance(top[0], (list, tuple)) and len(top[0]) == 2 else "")
        formats = ", ".join(sorted((block.get("formats") or {}).keys()))
        parts.append(f"{split}: {block.get('n_distinct_sizes', 'n/a')} distinct image sizes{top_text}"
                     + (f", format {formats}" if formats else ""))
    return "Measured from the files: " + "; ".join(parts) + "." if parts else None


def _acquisition(run: _Run) -> Answer:
    return _study(run, "acquisition", measured=_image_facts(run), section=run.at("integrity"))


def _reference(run: _Run) -> Answer:
    data = run.results.data
    layout = data.layout if data is not None else None
    measured = ("Labels are the class folder names of the data" if layout in ("kaggle", "imagefolder")
                else "Labels are read from the data's labels file" if layout == "csv" else "Labels come with the data")
    return _study(run, "reference_standard", measured=measured + ".", section=run.at("provenance"))


def _conflicts_text(run: _Run) -> str | None:
    integ = run.results.integrity
    if integ is None:
        return None
    n = len(integ.label_conflicts)
    return (f"The integrity audit found {n} group{'s' if n != 1 else ''} of identical or near-identical images with "
            "different labels.")


def _test_annotation(run: _Run) -> Answer:
    return _study(run, "annotation_method", measured=_conflicts_text(run), section=run.at("integrity"))


def _variability(run: _Run) -> Answer:
    return _study(run, "annotation_disagreements", measured=_conflicts_text(run), section=run.at("integrity"))


def _partitions(run: _Run) -> Answer:
    data = run.results.data
    frac = _num(data.validation_fraction) if data is not None else None
    return Answer(FROM_RUN, f"Training and test as the data's own folders; validation {percent_text(frac)} of training "
                            f"with the run's seed {run.results.experiment.seed}. Images: {run.split_text()}.",
                  run.at("provenance"), "results.json data.counts, data.validation_fraction")


def _disjoint(run: _Run) -> Answer:
    integ = run.results.integrity
    leak = run.leakage_text()
    if integ is not None and integ.patients:
        level = (f"Patient level: {count_of(integ.cross_split_patients) or 0} patients have images in both training "
                 "and test.")
    else:
        level = "Image level only: the data carry no patient identifiers, so patient overlap cannot be ruled out."
    return Answer(FROM_RUN, _join(level, f"{leak[0].upper() + leak[1:]}." if leak else
                                  "Copies across splits were not measured ([integrity] off)."),
                  run.at("integrity", "provenance"), "results.json integrity")


def _sample_size(run: _Run) -> Answer:
    b = run.best
    measured = None
    if b is not None and b.test is not None:
        boot, _ = _boot(b)
        ci = _ci(boot, "accuracy")
        measured = (f"No sample size was planned by the run; the test split's {b.test.n_images} images give "
                    f"{b.label} an accuracy of {_f(b.test.accuracy)}{ci}.")
    return _study(run, "sample_size", measured=measured, section=run.at("per-class"))


def _model(run: _Run) -> Answer:
    parts = []
    for b in run.finished:
        p = b.parameters if not isinstance(b.parameters, dict) else None
        params = (f", {p.total:,} parameters ({p.trainable:,} trainable)"
                  if p is not None and isinstance(p.total, int) and isinstance(p.trainable, int) else "")
        parts.append(f"{b.label}: {architecture_name(b)} at {b.input_size}×{b.input_size} px{params}")
    head = run.settings.training
    return Answer(FROM_RUN, "; ".join(parts) + f". Each backbone feeds a classification head (dense layer of "
                            f"{head.head_units} units, dropout {head.dropout}) ending in a softmax over "
                            f"{len(run.results.class_names)} classes.",
                  run.at("curves"), "results.json backbones[].parameters, manifest [training]")


def _software(run: _Run) -> Answer:
    env = run.results.environment
    packages = ", ".join(f"{k} {v}" for k, v in sorted((env.packages or {}).items()) if v)
    return Answer(FROM_RUN, f"Python {env.python or 'n/a'}; auditrun {env.auditrun or 'n/a'}"
                            + (f" (commit {env.git_commit[:12]})" if env.git_commit else "") + f"; {packages}.",
                  run.at("provenance"), "results.json environment")


def _initialisation(run: _Run) -> Answer:
    from engine.report.values import weights_text

    text = "; ".join(f"{b.label}: {weights_text(b)}" for b in run.finished) or "no backbone finished"
    return Answer(FROM_RUN, f"{text}. The classification head starts from random weights drawn with the run's seed.",
                  run.at("summary"), "results.json backbones[].weights")


def _training(run: _Run) -> Answer:
    t = run.settings.training
    stages = []
    for b in run.finished:
        for s in b.stages:
            stages.append(f"{b.label} {s.name or '?'} {s.epochs_run if s.epochs_run is not None else '?'} epochs"
                          + (" (stopped early)" if s.stopped_early else ""))
    return Answer(FROM_RUN, f"Up to {t.epochs} epochs, batch size {t.batch_size}, learning rate {t.learning_rate}, "
                            f"early stopping after {t.early_stopping_patience} epochs without validation gain, class "
                            f"weights “{t.class_weights}”; {len(run.finished)} model"
                            f"{'s' if len(run.finished) != 1 else ''} trained or imported"
                            + (": " + "; ".join(stages) if stages else "") + ".",
                  run.at("curves"), "manifest [training], results.json backbones[].stages")


def _selection(run: _Run) -> Answer:
    best = run.results.best_backbone
    if best is None or not best.name:
        return Answer(FROM_RUN, "No final model was chosen (no backbone finished).", run.at("summary"),
                      "results.json best_backbone")
    basis = (best.selected_by or "validation macro_f1").replace("macro_f1", "macro-F1")
    return Answer(FROM_RUN, f"{run.results.label_of(best.name) or best.name}, the highest {basis} of "
                            f"{len(run.finished)} candidates; the test split played no part in the choice.",
                  run.at("summary"), "results.json best_backbone")


def _ensembling(run: _Run) -> Answer:
    tta = " Test-time flip averaging is on ([evaluation] tta_flip)." if run.settings.evaluation.tta_flip else ""
    return Answer(NOT_APPLICABLE, "Not applicable: no ensemble; every model is evaluated on its own." + tta, None,
                  "manifest [evaluation]")


def _metrics(run: _Run) -> Answer:
    return Answer(FROM_RUN, "Accuracy, balanced accuracy, macro- and weighted F1, per-class precision, recall (sensitivity) "
                            "and F1, one-vs-rest ROC-AUC, the confusion matrix, the rate of tumours called no_tumor, "
                            "expected calibration error and log-loss; each on the test split and the leakage-free "
                            "subset.", run.at("per-class"), "results.json backbones[].test")


def _uncertainty(run: _Run) -> Answer:
    e = run.settings.evaluation
    text = (f"Percentile-bootstrap {e.confidence:.0%} intervals ({e.bootstrap_resamples} resamples, the run's seed) "
            "for accuracy, macro-F1 and per-class recall.")
    if run.results.comparisons:
        text += " Backbones compared pairwise by McNemar's exact test, Holm-adjusted."
    return Answer(FROM_RUN, text, run.at("per-class"), "manifest [evaluation], results.json backbones[].uncertainty")


def _robustness(run: _Run) -> Answer:
    parts = []
    if run.best is not None and run.best.leakage_free is not None:
        parts.append(f"every metric recomputed on the leakage-free subset ({run.best.leakage_free.n_images} images)")
    integ = run.results.integrity
    if integ is not None and integ.shift is not None:
        parts.append("a distribution-shift check of leakage-free test against training images")
    if any(b.subgroups for b in run.finished):
        parts.append("performance by subgroup")
    if any(isinstance(b.calibration, Calibration) for b in run.finished):
        parts.append("calibration before and after temperature scaling")
    if run.results.external:
        parts.append("testing on external data")
    if not parts:
        return Answer(AUTHOR, "No robustness analysis was run. Author input needed.", None, "results.json")
    return Answer(FROM_RUN, "Sensitivity analyses: " + "; ".join(parts) + ".", run.at("integrity", "calibration"),
                  "results.json integrity, backbones[].leakage_free")


def _explainability(run: _Run) -> Answer:
    explained = [b for b in run.finished if b.gradcam is not None or b.explanations]
    if not explained:
        return Answer(NOT_APPLICABLE, "Not applicable: no explanation method was run ([gradcam] enabled = false).",
                      None, "manifest [gradcam]")
    methods = sorted({method_label(e.method) for b in explained for e in (b.explanations or []) if e.method}
                     | {method_label(b.gradcam.method or "gradcam") for b in explained if b.gradcam is not None})
    boxes = False
    checks = []
    for b in explained:
        for e in b.explanations or []:
            if e.error:
                continue
            game, rand = localisation_of(b, e.method), e.randomisation
            bits = []
            if game is not None and game.rate is not None:
                boxes = True
                bits.append(f"pointing game {_f(game.rate)} (chance {_f(game.chance_rate)}, n = {game.total})"
                            + (f", energy {_f(game.energy)}" if game.energy is not None else ""))
            if rand is not None and rand.passed is not None:
                bits.append("randomisation " + ("passed" if rand.passed else "failed"))
            if e.faithfulness is not None and e.faithfulness.beats_baselines is not None:
                bits.append("deletion " + ("beats" if e.faithfulness.beats_baselines else "does not beat")
                            + " baselines")
            if bits:
                checks.append(f"{b.label} {method_label(e.method)}: " + ", ".join(bits))
    text = (f"{', '.join(methods)} maps of correct and misclassified test images."
            + (" Checked by weight randomisation, deletion against baselines"
               + (" and localisation on the tumour outlines" if boxes else
                  " (the data have no tumour outlines, so localisation was not measured)")
               + ": " + "; ".join(checks) + "." if checks else " The maps were not checked."))
    return Answer(FROM_RUN, text, run.at("gradcam"), "results.json backbones[].gradcam, explanations")


def _internal(run: _Run) -> Answer:
    return Answer(FROM_RUN, f"The data's own test folder: {run.best_line()}.", run.at("per-class"),
                  "results.json backbones[].test")


def _external(run: _Run) -> Answer:
    if run.results.external:
        parts = []
        for ext in run.results.external:
            rows = [f"{run.results.label_of(b.name) or b.name} accuracy {_f(b.accuracy)}" for b in ext.backbones]
            parts.append(f"{display_path(ext.data)}: " + ", ".join(rows))
        return Answer(FROM_RUN, "Tested on data from another source with auditrun evaluate: " + "; ".join(parts) + ".",
                      run.at("external"), "results.json external")
    return Answer(DRAFTED, "Not done in this run: no external test set was evaluated (auditrun evaluate RUN DATA adds "
                           "one). State it as a limitation if none was used.", run.at("model-facts", "ethics"),
                  "results.json external")


def _registration(run: _Run) -> Answer:
    return _study(run, "registration")


def _flow(run: _Run) -> Answer:
    skipped, _ = _skipped(run)
    integ = run.results.integrity
    files = f"{count_of(integ.n_files) or 0:,} files found, " if integ is not None else ""
    patients = (f" {sum(count_of(v) or 0 for v in integ.patients.values())} patients."
                if integ is not None and integ.patients else " Patients: not identified in the data.")
    return Answer(FROM_RUN, f"{files}{skipped} excluded as unusable; {run.split_text()}.{patients}",
                  run.at("provenance"), "results.json data.counts, integrity")


def _demographics(run: _Run) -> Answer:
    by = run.settings.subgroups.by
    measured = (f"Performance by {', '.join(by)} is reported where the images carry it." if by else
                "The images carry no demographic or clinical attributes the run could read ([subgroups] by is empty); "
                "per-partition class counts are in the provenance.")
    section = run.at("subgroups", "provenance")
    if by and any(b.subgroups for b in run.finished):
        return _study(run, "population", measured=measured, section=section,
                      fallback=Answer(FROM_RUN, measured, section, "results.json backbones[].subgroups"))
    return _study(run, "population", measured=measured, section=section)


def _performance(run: _Run) -> Answer:
    return Answer(FROM_RUN, f"{run.best_line()}. All backbones on the training, validation and test splits: the "
                            "training curves and the summary table.", run.at("per-class", "summary"),
                  "results.json backbones[].test, leakage_free, uncertainty")


def _diagnostic(run: _Run) -> Answer:
    b = run.best
    if b is None or b.test is None:
        return Answer(FROM_RUN, "No backbone finished.", run.at("per-class"), "results.json")
    boot, _ = _boot(b)
    parts = []
    for cls in run.results.class_names:
        entry = b.test.of_class(cls)
        if entry is None:
            continue
        est = boot.recall_interval(cls) if boot is not None and hasattr(boot, "recall_interval") else None
        ci = ""
        if est is not None and _num(est.lower) is not None and _num(est.upper) is not None:
            ci = f" ({_num(est.lower):.3f}–{_num(est.upper):.3f})"
        parts.append(f"{cls} {_f(entry.recall)}{ci}")
    return Answer(FROM_RUN, f"Sensitivity (recall) per class of {b.label} on the test split, 95 % CI: "
                            + ", ".join(parts) + ". Missed tumours are counted in “Ethics and intended use”.",
                  run.at("per-class"), "results.json backbones[].test.per_class, uncertainty")


def _failures(run: _Run) -> Answer:
    b = run.best
    parts = ["confusion matrices of every backbone"]
    if b is not None and b.gradcam is not None and b.gradcam.items:
        wrong = sum(1 for i in b.gradcam.items if i.correct is False)
        parts.append(f"Grad-CAM of {wrong} misclassified test images of {b.label}")
    parts.append("the tumours each model called no_tumor")
    integ = run.results.integrity
    if integ is not None and integ.label_conflicts:
        parts.append(f"{len(integ.label_conflicts)} label conflicts among near-identical images")
    return Answer(FROM_RUN, "Errors analysed through " + "; ".join(parts) + ".", run.at("confusion"),
                  "results.json backbones[].test.confusion_matrix, gradcam")


def _limitations_measured(run: _Run) -> list[str]:
    out = []
    leak = run.leakage_text()
    integ = run.results.integrity
    if leak and integ is not None and (_num(integ.cross_split_near_fraction) or 0) > LEAKAGE_WARN_FRACTION:
        out.append(f"leakage: {leak}")
    if integ is not None and integ.shift is not None:
        aucs = [(c, _num(e.auc)) for c, e in integ.shift.per_class.items() if _num(e.auc) is not None]
        if aucs:
            c, a = max(aucs, key=lambda t: t[1])
            out.append(f"distribution shift between leakage-free test and training images up to ROC AUC {a:.2f} ({c})")
    if not run.results.external:
        out.append("no external test set")
    if integ is None or not integ.patients:
        out.append("no patient identifiers, so splits are disjoint by image only")
    b = run.best
    if b is not None and b.leakage_free is not None:
        small = [f"{c} ({e.support})" for c in run.results.class_names
                 if (e := b.leakage_free.of_class(c)) is not None and isinstance(e.support, int) and e.support < 10]
        if small:
            out.append("few leakage-free test images for " + ", ".join(small))
    return out


def _limitations(run: _Run) -> Answer:
    measured = _limitations_measured(run)
    text = ("Measured by the run: " + "; ".join(measured) + ".") if measured else "The run measured no limitation."
    authors = str(run.study.limitations or "").strip()
    return Answer(DRAFTED, _join(text, authors or "Bias and generalisability beyond these: for the authors."),
                  run.at("model-facts", "integrity"), "results.json" + (", [study] limitations" if authors else ""))


def _implications(run: _Run) -> Answer:
    return _study(run, "intended_use", section=run.at("ethics"), fallback=Answer(
        DRAFTED, "None for clinical practice yet: a research audit; any clinical use would need prospective validation "
                 "on the intended population and regulatory approval (report section “Ethics and intended use”).",
        run.at("ethics"), "auditrun's stated intended use"))


def _protocol(run: _Run) -> Answer:
    exp = run.results.experiment
    measured = (f"Technical details: the manifest copy {exp.manifest_file or 'manifest.toml'} (SHA-256 "
                f"{(exp.manifest_sha256 or 'n/a')[:16]}…) and results.json in the run folder.")
    return _study(run, "protocol", measured=measured, section=run.at("provenance"),
                  fallback=Answer(FROM_RUN, measured, run.at("provenance"), "results.json experiment"))


def _software_line(run: _Run) -> str:
    env = run.results.environment
    return (f"Software: auditrun {env.auditrun or 'n/a'}" + (f", commit {env.git_commit[:12]}" if env.git_commit else "")
            + "; trained models saved in the run folder's models/.")


def _availability(run: _Run) -> Answer:
    return _studies(run, (("code_availability", "Code"), ("data_availability", "Data")), measured=_software_line(run),
                    section=run.at("provenance"), drafted_if_some=True)


def _funding(run: _Run) -> Answer:
    return _study(run, "funding")


# ------------------------------------------------------------------------------------------------
# TRIPOD+AI's own items


def _tripod_background(run: _Run) -> Answer:
    return _studies(run, (("intended_use", "Intended use"), ("intended_users", "Intended users"),
                          ("clinical_setting", "Setting"), ("health_inequalities", "Health inequalities")),
                    measured="auditrun's stated use: a research audit, not a diagnostic device.",
                    section=run.at("ethics"), drafted_if_some=True)


def _tripod_objectives(run: _Run) -> Answer:
    return _study(run, "objectives", section=run.at("summary"), fallback=Answer(
        DRAFTED, f"{_goal_text(run)} Development and internal evaluation (test split touched once).",
        run.at("summary"), "results.json"))


def _tripod_sources(run: _Run) -> Answer:
    return _sources(run)


def _participants(run: _Run) -> Answer:
    skipped, _ = _skipped(run)
    return _studies(run, (("clinical_setting", "Setting"), ("eligibility", "Eligibility")),
                    measured=f"All readable images of {run.data_name} were used; {skipped} unusable files excluded. "
                             "Treatments: not recorded in the data.", section=run.at("provenance"))


def _data_preparation(run: _Run) -> Answer:
    prep = _preprocessing(run)
    integ = run.results.integrity
    quality = (" Quality checks: unreadable files, exact and near duplicates within and across splits, label "
               "conflicts, image sizes and formats." if integ is not None else "")
    return Answer(FROM_RUN, prep.text + quality, run.at("integrity", "curves"), prep.source + ", results.json integrity")


def _outcome(run: _Run) -> Answer:
    classes = ", ".join(run.results.class_names)
    return _study(run, "reference_standard", measured=f"Outcome: the image's class, one of {classes}, predicted "
                                                      "from that image alone.", section=run.at("summary"))


def _predictors(run: _Run) -> Answer:
    sizes = sorted({b.input_size for b in run.finished})
    return Answer(FROM_RUN, "The only predictor is the image slice itself (pixels resized to "
                            + ", ".join(f"{s}×{s}" for s in sizes) + " px); no clinical variable is used.",
                  run.at("curves"), "results.json backbones[].input_size")


def _analysis(run: _Run) -> Answer:
    return Answer(FROM_RUN, _join(_partitions(run).text, _training(run).text, _selection(run).text,
                                  _uncertainty(run).text), run.at("summary"),
                  "manifest [training], [evaluation]; results.json")


def _imbalance(run: _Run) -> Answer:
    t = run.settings.training
    how = ("class weights inversely proportional to class frequency in training" if t.class_weights == "balanced"
           else "no reweighting")
    return Answer(FROM_RUN, f"Training images per class: {run.split_text().split(';')[0]}; handled by {how}. Balanced "
                            "accuracy and macro-F1 weigh every class equally.", run.at("provenance"),
                  "manifest [training] class_weights, results.json data.counts")


def _fairness(run: _Run) -> Answer:
    if any(b.subgroups for b in run.finished):
        gaps = [f"{b.label} largest macro-F1 gap {_f(b.subgroup_gap.gap) if hasattr(b.subgroup_gap, 'gap') else 'n/a'}"
                for b in run.finished if b.subgroup_gap is not None]
        return Answer(FROM_RUN, "Performance by subgroup ([subgroups] by = " + ", ".join(run.settings.subgroups.by)
                      + ") with bootstrap intervals" + ("; " + "; ".join(gaps) if gaps else "") + ".",
                      run.at("subgroups"), "results.json backbones[].subgroups")
    return _study(run, "health_inequalities", fallback=Answer(
        DRAFTED, "Not assessed: the images carry no demographic attributes ([subgroups] by is empty), so no subgroup "
                 "could be compared.", None, "manifest [subgroups]"))


def _output(run: _Run) -> Answer:
    b = run.best
    cal = b.calibration if b is not None and isinstance(b.calibration, Calibration) else None
    text = "A probability per class (softmax); the prediction is the most probable class, with no threshold."
    if cal is not None:
        text += (f" Temperature scaling (T = {_f(cal.temperature)}) fitted on validation; test ECE "
                 f"{_f(cal.ece_before)} before, {_f(cal.ece_after)} after.")
    return Answer(FROM_RUN, text, run.at("calibration", "per-class"), "results.json backbones[].calibration")


def _train_vs_eval(run: _Run) -> Answer:
    parts = [p for p in (run.leakage_text(),) if p]
    integ = run.results.integrity
    if integ is not None and integ.shift is not None:
        aucs = [(c, _num(e.auc)) for c, e in integ.shift.per_class.items() if _num(e.auc) is not None]
        if aucs:
            parts.append("a domain classifier tells leakage-free test from training images with ROC AUC "
                         + ", ".join(f"{a:.2f} ({c})" for c, a in aucs))
    if not parts:
        return Answer(DRAFTED, "The test folder comes from the same source as training; differences were not "
                               "measured ([integrity] off).", run.at("provenance"), "results.json")
    return Answer(FROM_RUN, "Same source for development and test; " + "; ".join(parts) + ".",
                  run.at("integrity"), "results.json integrity")


def _ethics(run: _Run) -> Answer:
    return _study(run, "ethics_approval")


def _open_science(run: _Run) -> Answer:
    return _studies(run, (("funding", "Funding"), ("conflicts_of_interest", "Conflicts of interest"),
                          ("protocol", "Protocol"), ("registration", "Registration"),
                          ("data_availability", "Data"), ("code_availability", "Code")),
                    measured=_software_line(run),
                    section=run.at("provenance"), drafted_if_some=False)


def _involvement(run: _Run) -> Answer:
    return _study(run, "patient_involvement")


def _participants_results(run: _Run) -> Answer:
    return Answer(FROM_RUN, _join(_flow(run).text, _subsets(run).text), run.at("provenance"),
                  "results.json data, integrity")


def _development(run: _Run) -> Answer:
    return Answer(FROM_RUN, f"Images (outcome events) per class and analysis: {run.split_text()}.",
                  run.at("provenance"), "results.json data.counts")


def _specification(run: _Run) -> Answer:
    files = [f"{b.label}: {b.artifacts.get('model')}" for b in run.finished if b.artifacts.get("model")]
    return Answer(FROM_RUN, _join(_model(run).text, ("Saved models (run folder): " + "; ".join(files) + ".")
                                  if files else "The models were not saved."), run.at("curves"),
                  "results.json backbones[].artifacts")


def _tripod_performance(run: _Run) -> Answer:
    sub = " Performance by subgroup is reported." if any(b.subgroups for b in run.finished) else ""
    return Answer(FROM_RUN, f"{run.best_line()}.{sub}", run.at("per-class"), "results.json backbones[]")


def _updating(run: _Run) -> Answer:
    b = run.best
    if b is not None and isinstance(b.calibration, Calibration):
        return Answer(FROM_RUN, _output(run).text, run.at("calibration"), "results.json backbones[].calibration")
    return Answer(NOT_APPLICABLE, "Not applicable: no model was updated or recalibrated.", None, "results.json")


def _interpretation(run: _Run) -> Answer:
    return Answer(DRAFTED, _join(f"{run.best_line()}.", "Interpret the leakage-free figures as the better estimate."
                                 if run.leakage_text() else None, "Overall interpretation: for the authors."),
                  run.at("model-facts", "summary"), "results.json")


def _usability(run: _Run) -> Answer:
    users = str(run.study.intended_users or "").strip()
    return Answer(DRAFTED, _join("Unreadable or unlabelled inputs are refused and listed; every output needs review by "
                                 "a qualified reader.", f"Intended users: {users.rstrip('.')}." if users else None,
                                 "Future research: external and prospective validation."),
                  run.at("ethics"), "results.json" + (", [study] intended_users" if users else ""))


# ------------------------------------------------------------------------------------------------
# The two guidelines: (number, part, topic in our words, answer)

_Spec = tuple[str, str, str, Callable[[_Run], Answer]]

CLAIM_2024: tuple[_Spec, ...] = (
    ("1", "Title / Abstract", "Study of AI methodology, naming the kind of technology", _title),
    ("2", "Title / Abstract", "Structured summary of design, methods, results, conclusions", _abstract),
    ("3", "Introduction", "Background, intended use and role of the AI", _background),
    ("4", "Introduction", "Aims, objectives and hypotheses", _objectives),
    ("5", "Methods: study design", "Prospective or retrospective", _design),
    ("6", "Methods: study design", "Study goal", _goal),
    ("7", "Methods: data", "Data sources", _sources),
    ("8", "Methods: data", "Inclusion and exclusion criteria", _eligibility),
    ("9", "Methods: data", "Data pre-processing", _preprocessing),
    ("10", "Methods: data", "Selection of data subsets", _subsets),
    ("11", "Methods: data", "De-identification", _deidentification),
    ("12", "Methods: data", "Handling of missing data", _missing),
    ("13", "Methods: data", "Image acquisition protocol", _acquisition),
    ("14", "Methods: reference standard", "How the reference standard was obtained", _reference),
    ("15", "Methods: reference standard", "Why this reference standard",
     lambda run: _study(run, "reference_standard_rationale")),
    ("16", "Methods: reference standard", "Who annotated, and their qualifications",
     lambda run: _study(run, "annotators")),
    ("17", "Methods: reference standard", "How the test set was annotated", _test_annotation),
    ("18", "Methods: reference standard", "Inter- and intra-rater variability", _variability),
    ("19", "Methods: data partitions", "How data were assigned to partitions", _partitions),
    ("20", "Methods: data partitions", "Level at which partitions are disjoint", _disjoint),
    ("21", "Methods: testing data", "Intended sample size", _sample_size),
    ("22", "Methods: model", "Detailed description of the model", _model),
    ("23", "Methods: model", "Software libraries, frameworks and packages", _software),
    ("24", "Methods: model", "Initialisation of model parameters", _initialisation),
    ("25", "Methods: training", "Training approach and hyperparameters", _training),
    ("26", "Methods: training", "How the final model was selected", _selection),
    ("27", "Methods: training", "Ensembling", _ensembling),
    ("28", "Methods: evaluation", "Performance metrics", _metrics),
    ("29", "Methods: evaluation", "Statistical significance and uncertainty", _uncertainty),
    ("30", "Methods: evaluation", "Robustness or sensitivity analysis", _robustness),
    ("31", "Methods: evaluation", "Explainability methods and their validation", _explainability),
    ("32", "Methods: evaluation", "Evaluation on internal data", _internal),
    ("33", "Methods: evaluation", "Testing on external data", _external),
    ("34", "Methods: evaluation", "Clinical trial registration", _registration),
    ("35", "Results: data", "Patients or examinations included and excluded", _flow),
    ("36", "Results: data", "Demographic and clinical characteristics per partition", _demographics),
    ("37", "Results: model performance", "Performance metrics with statistical uncertainty", _performance),
    ("38", "Results: model performance", "Diagnostic performance and its precision", _diagnostic),
    ("39", "Results: model performance", "Failure analysis of incorrect results", _failures),
    ("40", "Discussion", "Study limitations", _limitations),
    ("41", "Discussion", "Implications for practice, intended use and clinical role", _implications),
    ("42", "Other information", "Full study protocol or further technical details", _protocol),
    ("43", "Other information", "Availability of software, trained model and data", _availability),
    ("44", "Other information", "Funding and the funders' role", _funding),
)

TRIPOD_AI: tuple[_Spec, ...] = (
    ("1", "Title", "Development or evaluation of a prediction model; population, outcome, method", _title),
    ("2", "Abstract", "Structured summary (TRIPOD+AI for Abstracts)", _abstract),
    ("3", "Introduction", "Healthcare context, intended users, known health inequalities (3a–c)", _tripod_background),
    ("4", "Introduction", "Objectives: development, evaluation or both", _tripod_objectives),
    ("5", "Methods", "Data sources and dates (5a–b)", _tripod_sources),
    ("6", "Methods", "Participants: setting, eligibility, treatments (6a–c)", _participants),
    ("7", "Methods", "Data preparation and quality checks", _data_preparation),
    ("8", "Methods", "Outcome: definition and how it was assessed (8a–c)", _outcome),
    ("9", "Methods", "Predictors: what, why, how measured (9a–c)", _predictors),
    ("10", "Methods", "Sample size", _sample_size),
    ("11", "Methods", "Missing data", _missing),
    ("12", "Methods", "Analytical methods: data use, model, tuning, performance (12a–g)", _analysis),
    ("13", "Methods", "Class imbalance", _imbalance),
    ("14", "Methods", "Fairness", _fairness),
    ("15", "Methods", "Model output", _output),
    ("16", "Methods", "Differences between development and evaluation data", _train_vs_eval),
    ("17", "Methods", "Ethical approval", _ethics),
    ("18", "Open science", "Funding, conflicts, protocol, registration, data and code (18a–f)", _open_science),
    ("19", "Patient and public involvement", "Patient and public involvement", _involvement),
    ("20", "Results", "Participants: flow, characteristics, comparison (20a–c)", _participants_results),
    ("21", "Results", "Participants and outcome events in each analysis", _development),
    ("22", "Results", "Model specification", _specification),
    ("23", "Results", "Model performance, with uncertainty and by subgroup (23a–b)", _tripod_performance),
    ("24", "Results", "Model updating", _updating),
    ("25", "Discussion", "Interpretation", _interpretation),
    ("26", "Discussion", "Limitations", _limitations),
    ("27", "Discussion", "Usability in current care: inputs, users, future research (27a–c)", _usability),
)

GUIDELINES: dict[str, tuple[str, str, tuple[_Spec, ...]]] = {
    "claim-2024": ("CLAIM 2024", "Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in "
                                 "Medical Imaging (CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300. "
                                 "doi:10.1148/ryai.240300", CLAIM_2024),
    "tripod-ai": ("TRIPOD+AI", "Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement: updated guidance for "
                               "reporting clinical prediction models that use regression or machine learning methods. "
                               "BMJ 2024;385:e078378. doi:10.1136/bmj-2023-078378", TRIPOD_AI),
}


def build_checklists(results: RunResults, settings: Any, sections: dict[str, str],
                     keys: Sequence[str] | None = None) -> list[Checklist]:
    """The checklists ``keys`` (default: the manifest's ``[report] checklists``) filled from the run.

    ``settings`` is the run's manifest (engine.manifest.Manifest, as ``run_settings`` reads the run
    folder's copy). ``sections`` maps each section id the report has to its heading: an answer
    links only to a section that exists.
    """
    run = _Run(results, settings, dict(sections))
    out = []
    for key in (settings.report.checklists if keys is None else keys):
        title, citation, specs = GUIDELINES[key]
        items = []
        for number, part, topic, answer_of in specs:
            answer = answer_of(run)
            section = answer.section if answer.section in run.sections else None
            items.append(ChecklistItem(number, part, topic, answer.status, answer.text, section,
                                       run.sections.get(section) if section else None, answer.source))
        out.append(Checklist(key, title, citation, items))
    return out


# ------------------------------------------------------------------------------------------------
# Serialisers: the paper's supplement (Markdown and CSV); results.json takes Checklist.to_json


def checklist_csv(checklist: Checklist) -> str:
    """``item,status,answer,section``: the guideline's number, one of STATUSES, the answer, and the
    report link (``report.html#section``; empty where no section shows it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in checklist.items:
        writer.writerow([item.item, item.status, item.answer, item.link or ""])
    return buffer.getvalue()


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def checklist_markdown(checklist: Checklist, *, run_id: str, experiment: str) -> str:
    lines = [f"# {checklist.title} reporting checklist: {experiment}", "",
             f"Filled by auditrun from run `{run_id}`. {checklist.summary}.", "",
             f"Guideline: {checklist.citation}. Item wording here is a short paraphrase; the guideline has the full "
             "text.", "",
             "Status: *From the run* (measured by the run, or stated by the authors in `[study]`), *Drafted* (written "
             "from the run; the authors must confirm it), *Author input needed* (the `[study]` key named answers it), "
             "*Not applicable* (with why).", "",
             "| Item | Topic | Status | Answer | Report section |", "|---|---|---|---|---|"]
    for item in checklist.items:
        section = f"[{_md_cell(item.section_title or item.section)}]({item.link})" if item.link else "—"
        lines.append(f"| {item.item} | {_md_cell(item.topic)} | {item.status_label} | {_md_cell(item.answer)} | "
                     f"{section} |")
    return "\n".join(lines) + "\n"


def write_checklists(checklists: Sequence[Checklist], run_dir: Path, *, run_id: str, experiment: str) -> list[Path]:
    """``checklist-<key>.md`` and ``checklist-<key>.csv`` in the run folder, each written atomically."""
    from engine.atomic import write_text

    written = []
    for checklist in checklists:
        written.append(write_text(Path(run_dir) / f"checklist-{checklist.key}.md",
                                  checklist_markdown(checklist, run_id=run_id, experiment=experiment)))
        written.append(write_text(Path(run_dir) / f"checklist-{checklist.key}.csv", checklist_csv(checklist)))
    return written


def remove_stale_checklists(checklists: Sequence[Checklist], run_dir: Path) -> list[Path]:
    """Delete the run folder's ``checklist-<key>.*`` of guidelines no longer asked for, so the
    supplement files always match ``[report] checklists``. Only these names, only in the run folder."""
    from engine.report.study import CHECKLISTS

    wanted = {c.key for c in checklists}
    removed = []
    for key in CHECKLISTS:
        if key in wanted:
            continue
        for suffix in (".md", ".csv"):
            path = Path(run_dir) / f"checklist-{key}{suffix}"
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed
