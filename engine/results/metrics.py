"""Typed metric blocks of a backbone entry: classification metrics (``test``, ``leakage_free``),
``validation``, ``calibration``, ``uncertainty``, ``subgroups`` and ``subgroup_gap``."""

from __future__ import annotations

from engine.results.record import Record, items, optional, record


@record
class ClassMetrics(Record):
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    support: int | None = None


@record
class RocAuc(Record):
    macro: float | None = None
    per_class: dict[str, float | None] = items(dict)


@record
class Metrics(Record):
    """engine.evaluation.metrics.ClassificationMetrics as results.json holds it."""

    n_images: int | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    weighted_f1: float | None = None
    classes_in_macro: list[str] | None = None
    per_class: dict[str, ClassMetrics] = items(dict)
    macro_avg: ClassMetrics | None = None
    weighted_avg: ClassMetrics | None = None
    confusion_matrix: list[list[int]] = items()
    roc_auc: RocAuc | None = None
    #: leakage-free twin only: the share of the test split it keeps
    fraction_of_test: float | None = optional()

    def class_metrics(self, cls: str) -> ClassMetrics | None:
        """``per_class[cls]``; None when the class is not listed (or its entry is not an object)."""
        found = self.per_class.get(cls) if isinstance(self.per_class, dict) else None
        return found if isinstance(found, ClassMetrics) else None


@record
class ValidationMetrics(Record):
    accuracy: float | None = None
    macro_f1: float | None = None
    log_loss: float | None = None


@record
class ReliabilityBin(Record):
    bin_lower: float | None = None
    bin_upper: float | None = None
    confidence: float | None = None
    accuracy: float | None = None
    count: int | None = None


@record
class Calibration(Record):
    """engine.evaluation.calibration.CalibrationResult as results.json holds it."""

    n_bins: int | None = None
    temperature: float | None = None
    temperature_at_bound: bool | None = None
    fitted_on: str | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    n_val: int | None = None
    n_test: int | None = None
    reliability_before: list[ReliabilityBin] = items()
    reliability_after: list[ReliabilityBin] = items()


@record
class Estimate(Record):
    """A bootstrap estimate: the value and its percentile interval."""

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    support: int | None = None
    n_resamples_defined: int | None = None


@record
class Bootstrap(Record):
    """engine.evaluation.uncertainty.bootstrap_summary for one set of images."""

    method: str | None = None
    n_resamples: int | None = None
    confidence: float | None = None
    seed: int | None = None
    n_images: int | None = None
    classes_in_macro: list[str] | None = None
    accuracy: Estimate | None = None
    macro_f1: Estimate | None = None
    per_class_recall: dict[str, Estimate] = items(dict)


@record
class Uncertainty(Record):
    test: Bootstrap | None = None
    leakage_free: Bootstrap | None = None


@record
class Interval(Record):
    low: float | None = None
    high: float | None = None
    n_resamples_defined: int | None = None


@record
class SubgroupIntervals(Record):
    accuracy: Interval | None = None
    macro_f1: Interval | None = None
    recall: dict[str, Interval] = items(dict)


@record
class Subgroup(Record):
    group: str = ""
    n: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    recall: dict[str, float | None] = items(dict)
    ci: SubgroupIntervals | None = None
    pooled: list[str] | None = None


@record
class SubgroupSide(Record):
    group: str = ""
    n: int = 0
    macro_f1: float | None = None
    classes_in_macro: list[str] | None = None


@record
class SubgroupGapEntry(Record):
    gap: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_resamples_defined: int | None = None
    higher: SubgroupSide | None = None
    lower: SubgroupSide | None = None
    groups_compared: list[str] | None = None
    note: str | None = None


@record
class LargestGap(Record):
    """The attribute with the largest gap, and that attribute's entry."""

    attribute: str | None = None
    gap: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_resamples_defined: int | None = None
    higher: SubgroupSide | None = None
    lower: SubgroupSide | None = None
    groups_compared: list[str] | None = None
    note: str | None = None


@record
class SubgroupGap(Record):
    metric: str | None = None
    method: str | None = None
    n_resamples: int | None = None
    confidence: float | None = None
    seed: int | None = None
    min_n: int | None = None
    attributes: dict[str, SubgroupGapEntry] = items(dict)
    largest: LargestGap | None = None
    unavailable: list[str] = items()

