"""One report section per backbone that finished: facts, headline metrics with bootstrap
intervals and their leakage-free twins, per-class rows, ROC-AUC, calibration, performance by
subgroup (engine.report.subgroups) and the Grad-CAM gallery. Figures are attached afterwards by the renderer (engine.report.prepare_report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from engine.report.explanations import ExplanationView, LocalisationView, explanation_views, localisation_views, most_faithful
from engine.report.figures import FigureRecord
from engine.results import (BackboneResult, Bootstrap, Calibration, ClassMetrics, Estimate, Gradcam, Imported, Metrics,
                            Parameters, PointingGame, Record, RocAuc, Uncertainty, ValidationMetrics, WeightsInfo,
                            as_backbone_result, gallery_method_name, number as _num)
from engine.report.subgroups import SubgroupView, subgroup_view
from engine.report.values import (ImageRef, Metric, anchor_id, as_metric, backbone_display, class_metric, count_of,
                                  file_name, format_duration, input_size_text, interval_metric, macro_classes, macro_note,
                                  weights_text)


@dataclass(frozen=True)
class PerClassRow:
    cls: str
    precision: Metric
    recall: Metric
    f1: Metric
    support: int | None
    recall_ci: Metric | None = None
    lf_precision: Metric | None = None
    lf_recall: Metric | None = None
    lf_f1: Metric | None = None
    lf_support: int | None = None


@dataclass(frozen=True)
class HeadlineRow:
    """One headline metric with its leakage-free twin and bootstrap intervals when measured."""

    label: str
    test: Metric
    leakage_free: Metric | None
    test_note: str | None = None
    leakage_free_note: str | None = None


@dataclass(frozen=True)
class GradcamItem:
    true_class: str
    predicted_class: str
    probability: Metric
    correct: bool
    description: str
    images: list[ImageRef]


@dataclass(frozen=True)
class GradcamGallery:
    layer: str
    images_per_class: int | None
    pointing_game: str | None
    pointing_rate: Metric | None
    items: list[GradcamItem]
    #: Why this backbone has no gallery: the explanation stage failed for it (the run went on).
    error: str | None = None
    #: The explanation method as captions name it ("Grad-CAM", "Occlusion sensitivity").
    method: str = "Grad-CAM"


@dataclass(frozen=True)
class CalibrationView:
    n_bins: int | None
    temperature: Metric
    ece_before: Metric
    ece_after: Metric
    sentence: str


@dataclass
class BackboneSection:
    name: str
    display_name: str
    anchor: str
    facts: list[tuple[str, str]]
    headline: list[HeadlineRow]
    per_class: list[PerClassRow]
    has_leakage_free: bool
    n_test: int | None
    n_leakage_free: int | None
    roc_auc: str | None
    curves: FigureRecord | None = None
    confusion: FigureRecord | None = None
    confusion_normalised: FigureRecord | None = None
    reliability: FigureRecord | None = None
    calibration: CalibrationView | None = None
    gradcam: GradcamGallery | None = None
    uncertainty_note: str | None = None
    #: stored intervals not shown because they were not computed around the value shown
    interval_notes: list[str] = field(default_factory=list)
    #: performance by subgroup (with ``[subgroups] by``); its forest plot is attached with the figures
    subgroups: SubgroupView | None = None
    #: explanation reliability per method (engine.report.explanations), shown with the Grad-CAM gallery
    explanations: list[ExplanationView] = field(default_factory=list)
    most_faithful: str | None = None
    #: localisation on the tumour outlines, one table per method (engine.report.explanations)
    localisation: list[LocalisationView] = field(default_factory=list)
    #: an imported model's (``[[models]]``) checks that failed, shown first in its section
    warnings: list[str] = field(default_factory=list)
    #: what the reader must know about an imported model (its training data is unknown)
    notes: list[str] = field(default_factory=list)


def _uncertainty_blocks(backbone: BackboneResult) -> tuple[Bootstrap | None, Bootstrap | None]:
    """(test, leakage_free) bootstrap blocks, whether nested under test/leakage_free or not."""
    if not isinstance(backbone.uncertainty, Uncertainty):
        return None, None
    test, free = backbone.uncertainty.blocks()
    return _measured(test), _measured(free)


def _measured(block: Record | None) -> Any:
    """The block, or None where results.json holds none or an empty one (a stage that measured nothing)."""
    return block if isinstance(block, Record) and block.to_json() else None


#: Largest gap between a stored bootstrap value and the point value for the interval to count as
#: computed around it: results.json rounds metrics to 6 decimals, intervals are stored unrounded.
_SAME_POINT = 1e-6


#: Headline metrics: (results.json key, label, name in a sentence, whether it averages over classes).
_HEADLINE = (("accuracy", "Accuracy", "accuracy", False),
             ("balanced_accuracy", "Balanced accuracy", "balanced accuracy", True),
             ("macro_f1", "Macro-F1", "macro-F1", True), ("weighted_f1", "Weighted F1", "weighted F1", False))


def _with_interval(point: Any, boot: Estimate | None, classes: list[str],
                   boot_classes: Any) -> tuple[Metric, float | None]:
    """The point value with the bootstrap interval when that interval was computed around it.

    Returns (metric, the stored bootstrap value when it was not: the report says so instead of
    showing an interval around another number).
    """
    value = _num(point)
    interval = interval_metric(boot)
    if value is None or interval is None or interval.value is None:
        return as_metric(point), None
    same_classes = not isinstance(boot_classes, list) or [str(c) for c in boot_classes] == classes
    if abs(interval.value - value) > _SAME_POINT or not same_classes:
        return as_metric(point), interval.value
    return Metric(value, interval.low, interval.high), None


def _headline_value(block: Metrics, key: str) -> Any:
    return {"accuracy": block.accuracy, "balanced_accuracy": block.balanced_accuracy, "macro_f1": block.macro_f1,
            "weighted_f1": block.weighted_f1}[key]


def _boot_estimate(boot: Bootstrap | None, key: str) -> Estimate | None:
    """The bootstrap estimate of a headline metric; the bootstrap measures accuracy and macro-F1 only."""
    if boot is None or key not in ("accuracy", "macro_f1"):
        return None
    return boot.accuracy if key == "accuracy" else boot.macro_f1


def _headline_rows(backbone: BackboneResult, class_names: Sequence[str]) -> tuple[list[HeadlineRow], list[str]]:
    """Rows of the headline table, and a note per stored interval left out (see _with_interval)."""
    test = backbone.test or Metrics()
    free = _measured(backbone.leakage_free)
    u_test, u_free = _uncertainty_blocks(backbone)
    rows, dropped = [], []
    for key, label, name, is_macro in _HEADLINE:
        if _headline_value(test, key) is None:
            continue
        cells = []
        for block, boot, where in ((test, u_test, "the test split"), (free, u_free, "the leakage-free subset")):
            if block is None:
                cells.append((None, None))
                continue
            metric, other = _with_interval(_headline_value(block, key), _boot_estimate(boot, key),
                                           macro_classes(block, class_names),
                                           boot.classes_in_macro if is_macro and boot else None)
            if other is not None:
                dropped.append(f"The stored bootstrap interval of {name} "
                               f"on {where} was computed around {other:.3f}, not the {metric.text} shown: results.json "
                               "from an auditrun that defined the metric differently. It is not shown; rerun the "
                               "audit for an interval around the value shown.")
            cells.append((metric, macro_note(block, class_names, "the test split" if block is test else "this subset")
                           if is_macro else None))
        (t, t_note), (lf, lf_note) = cells
        rows.append(HeadlineRow(label, t, lf, t_note, lf_note))
    return rows, dropped


def _per_class_rows(backbone: BackboneResult, class_names: Sequence[str]) -> list[PerClassRow]:
    test, free = backbone.test or Metrics(), backbone.leakage_free or Metrics()
    u_test, _ = _uncertainty_blocks(backbone)
    rows = []
    for cls in class_names:
        pc = test.of_class(cls) or ClassMetrics.from_json({})
        fpc = free.of_class(cls)
        recall = class_metric(pc, "recall")
        interval, _ = _with_interval(recall.value, u_test.recall_interval(cls) if u_test else None, [], None)
        rows.append(PerClassRow(
            cls=cls,
            precision=class_metric(pc, "precision"),
            recall=recall,
            f1=class_metric(pc, "f1"),
            support=count_of(pc.support),
            recall_ci=interval if recall.known else None,
            lf_precision=class_metric(fpc, "precision") if fpc is not None else None,
            lf_recall=class_metric(fpc, "recall") if fpc is not None else None,
            lf_f1=class_metric(fpc, "f1") if fpc is not None else None,
            lf_support=count_of(fpc.support) if fpc is not None else None,
        ))
    return rows


def _or_na(value: Any) -> Any:
    return "n/a" if value is None else value


def _facts(backbone: BackboneResult) -> list[tuple[str, str]]:
    weights = backbone.weights or WeightsInfo()
    params = backbone.parameters
    facts = [
        ("Architecture", str(backbone.architecture or "n/a")
         + (f" (file {file_name(backbone.file)})" if backbone.file else "")),
        ("Weights", weights_text(backbone) + (f" — {weights.note}" if weights.note else "")),
        ("Input size", input_size_text(backbone)),
        ("Preprocessing", str(backbone.preprocessing or "n/a")),
    ]
    if isinstance(params, Parameters) and params.to_json():
        total, trainable = params.total, params.trainable
        facts.append(("Parameters", f"{total:,} total, {trainable:,} trainable"
                      if isinstance(total, int) and isinstance(trainable, int) else "n/a"))
    if backbone.fine_tuned_from:
        facts.append(("Fine-tuned from", str(backbone.fine_tuned_from)))
    if backbone.source == "imported":
        facts.append(("Source", "imported (trained elsewhere; training data unknown)"))
    for stage in backbone.stages:
        text = (f"{_or_na(stage.epochs_run)} epochs run, best epoch {_or_na(stage.best_epoch)}"
                + (", stopped early" if stage.stopped_early else "")
                + f", {format_duration(stage.time_s)}")
        facts.append((f"Stage {'?' if stage.name is None else stage.name}", text))
    validation = backbone.validation
    if isinstance(validation, ValidationMetrics) and validation.to_json():
        facts.append(("Validation", f"accuracy {as_metric(validation.accuracy).text}, macro-F1 "
                                    f"{as_metric(validation.macro_f1).text}"))
    if backbone.timings:
        facts.append(("Time", f"training {format_duration(backbone.train_s)}, evaluation "
                              f"{format_duration(backbone.evaluate_s)}, total {format_duration(backbone.total_s)}"))
    return facts


def _roc_text(test: Metrics, class_names: Sequence[str]) -> str | None:
    roc = test.roc_auc
    if not isinstance(roc, RocAuc) or not roc.to_json():
        return None
    parts = [f"macro {as_metric(roc.macro).text}"]
    parts += [f"{c} {as_metric(roc.of_class(c)).text}" for c in class_names if c in roc.per_class]
    return "One-vs-rest ROC-AUC: " + ", ".join(parts) + "."


def _calibration_view(backbone: BackboneResult) -> CalibrationView | None:
    cal = backbone.calibration
    if not isinstance(cal, Calibration):
        return None
    before, after = as_metric(cal.ece_before), as_metric(cal.ece_after)
    t = as_metric(cal.temperature, 2)
    bins = "n/a" if cal.n_bins is None else cal.n_bins
    if cal.not_fitted:
        sentence = (f"Expected calibration error ({bins} bins) on the test split: {before.text}. "
                    f"Temperature scaling was not fitted: {cal.not_fitted}.")
        return CalibrationView(cal.n_bins, t, before, after, sentence)
    sentence = (f"Expected calibration error ({bins} bins) on the test split: {before.text} "
                f"before and {after.text} after temperature scaling with T = {t.text}, fitted on the validation split.")
    if cal.temperature_at_bound:
        sentence += " The fitted temperature sits at the edge of its search range; treat it with care."
    return CalibrationView(cal.n_bins, t, before, after, sentence)


def _gradcam_gallery(backbone: BackboneResult) -> GradcamGallery | None:
    block = backbone.gradcam
    if not isinstance(block, Gradcam):
        return None
    method = gallery_method_name(block.method)
    if block.error:
        return GradcamGallery("n/a", None, None, None, [], error=str(block.error), method=method)
    name = backbone_display(backbone)
    items = []
    for item in block.items:
        true = "?" if item.true_class is None else item.true_class
        pred = "?" if item.predicted_class is None else item.predicted_class
        prob = as_metric(item.probability, 2)
        correct = bool(true == pred if item.correct is None else item.correct)
        verdict = "correct" if correct else "misclassified"
        facts = []
        peak = item.peak
        if isinstance(peak, (list, tuple)) and len(peak) == 2 and None not in peak:
            facts.append(f"heatmap peak at {float(peak[0]) * 100:.0f} % from the top and "
                         f"{float(peak[1]) * 100:.0f} % from the left")
        else:
            facts.append("the heatmap is empty (no positive evidence)")
        if item.peak_in_box is True:
            facts.append("inside the tumour box")
        elif item.peak_in_box is False:
            facts.append("outside the tumour box")
        area = _num(item.top20_area_fraction)
        if area is not None:
            facts.append(f"the top 20 % of the heatmap covers {area * 100:.0f} % of the image")
        what = f"{true} image predicted {pred} with probability {prob.text} ({verdict})"
        description = what[0].upper() + what[1:] + "; " + ", ".join(facts) + "."
        if block.method:
            description = f"{method}: {description}"
        images = []
        for key, label, alt in (
            ("original", "original", f"Test image of true class {true} ({'unnamed' if item.image is None else item.image})."),
            ("heatmap", "heatmap", f"{method} heatmap of {name} for a {what}: " + ", ".join(facts) + "."),
            ("overlay", "overlay", f"{method} overlay with contour lines of {name} on the {true} image: "
                                   + ", ".join(facts) + "."),
        ):
            path = item.file(key)
            if path:
                images.append(ImageRef(str(path), alt, label))
        items.append(GradcamItem(true, pred, prob, correct, description, images))
    pg = block.pointing_game or PointingGame.from_json({})
    pointing, rate = None, None
    if pg.total:
        rate = as_metric(pg.rate, 2)
        chance = _num(pg.chance_rate)
        pointing = (f"Pointing game: the heatmap peak fell inside the tumour box on {pg.hits} of "
                    f"{pg.total} tumour images (hit rate {rate.text}"
                    + (f"; a random peak would hit {chance:.2f}" if chance is not None else "")
                    + ").")
    elif pg.to_json():
        pointing = "Pointing game: no test image in the gallery had a tumour box, so no hit rate was measured."
    vg = block.pointing_game_validation or PointingGame.from_json({})
    if pointing and vg.total:
        pointing += (f" On the validation split's boxed images: {vg.hits} of {vg.total} "
                     f"(hit rate {as_metric(vg.rate, 2).text}).")
    elif vg.total:  # the test split's localisation has its own table; this one is for tuning
        pointing = (f"On the validation split's annotated tumour images, the heatmap peak fell inside the outline on "
                    f"{vg.hits} of {vg.total} (hit rate {as_metric(vg.rate, 2).text}): a figure for choosing "
                    "Grad-CAM settings without the test split.")
    return GradcamGallery(str(block.layer or "n/a"), block.images_per_class, pointing, rate, items, method=method)


def backbone_section(backbone: BackboneResult | dict, class_names: Sequence[str]) -> BackboneSection:
    backbone = as_backbone_result(backbone)
    test = backbone.test or Metrics()
    free = _measured(backbone.leakage_free)
    u_test, u_free = _uncertainty_blocks(backbone)
    note = None
    if u_test:
        n = u_test.n_resamples
        conf = u_test.confidence or 0.95
        note = (f"Intervals are {conf * 100:.0f} % percentile-bootstrap confidence intervals"
                + (f" over {n:,} resamples" if isinstance(n, int) else "") + " of the test images.")
        for block, where in ((u_test, "the test split"), (u_free, "the leakage-free subset")):
            macro = (block.macro_f1 if block else None) or Estimate()
            kept, total = count_of(macro.n_resamples_defined), count_of(block.n_resamples if block else None)
            if kept is not None and total and kept < total:
                note += (f" The macro-F1 interval on {where} rests on {kept:,} of {total:,} resamples: the others "
                         "drew no image of one of its classes, where macro-F1 over those classes is undefined.")
    headline, dropped = _headline_rows(backbone, class_names)
    return BackboneSection(
        name=backbone.name,
        display_name=backbone_display(backbone),
        anchor=anchor_id(backbone.name),
        facts=_facts(backbone),
        headline=headline,
        per_class=_per_class_rows(backbone, class_names),
        has_leakage_free=bool(free),
        n_test=count_of(test.n_images),
        n_leakage_free=count_of(free.n_images) if free else None,
        roc_auc=_roc_text(test, class_names),
        calibration=_calibration_view(backbone),
        gradcam=_gradcam_gallery(backbone),
        uncertainty_note=note,
        interval_notes=dropped,
        subgroups=subgroup_view(backbone),
        explanations=explanation_views(backbone),
        most_faithful=most_faithful(backbone),
        localisation=localisation_views(backbone),
        warnings=[str(w) for w in (backbone.imported.warnings if backbone.imported else [])],
        notes=_imported_notes(backbone),
    )


def _imported_notes(backbone: BackboneResult) -> list[str]:
    """What a reader of an imported model's section must know: where it came from and that its
    training data is unknown, so the leakage-free column cannot vouch for the test split."""
    block = backbone.imported
    if backbone.source != "imported" or not isinstance(block, Imported):
        return []
    return [f"Imported {'model' if block.format is None else block.format} model "
            f"{'' if block.file is None else file_name(block.file)}, not trained by this audit; "
            f"class order {', '.join(map(str, block.class_order or []))}; "
            f"explained by {backbone.explanation_method or 'n/a'}.",
            "Its training data is unknown: the leakage-free column removes only test images with a copy in this "
            "data set's training folder. Whether the test images were part of the model's own training data cannot "
            "be checked here, so its test metrics may be optimistic."]
