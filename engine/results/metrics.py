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

    def never_predicted(self) -> bool:
        """Precision stored as null: the class was never predicted (absent: not recorded)."""
        return self.precision is None and "precision" not in self._absent


@record
class RocAuc(Record):
    macro: float | None = None
    per_class: dict[str, float | None] = items(dict)

    def of_class(self, cls: str) -> float | None:
        return self.per_class.get(cls) if isinstance(self.per_class, dict) else None


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

    def of_class(self, cls: str) -> ClassMetrics | None:
        """The ``per_class`` entry of ``cls``; None where the block has none."""
        entry = self.per_class.get(cls) if isinstance(self.per_class, dict) else None
        return entry if isinstance(entry, ClassMetrics) else None


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
    #: why temperature scaling was skipped (too few validation images); absent when it was fitted
    not_fitted: str | None = optional()

    @property
    def bins(self) -> int | None:
        """The number of bins: ``n_bins``, or where results.json lacks it the bins it lists."""
        return len(self.reliability_before) if "n_bins" in self._absent else self.n_bins


@record
class Estimate(Record):
    """A bootstrap estimate: the value and its percentile interval."""

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    support: int | None = None
    n_resamples_defined: int | None = None
    #: results.json of older auditruns named the bounds ``low``/``high``
    low: float | None = optional()
    high: float | None = optional()

    @property
    def lower(self) -> float | None:
        return self.ci_low if self.ci_low is not None else self.low

    @property
    def upper(self) -> float | None:
        return self.ci_high if self.ci_high is not None else self.high


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
    #: the per-class recall intervals as older auditruns named them
    recall: dict[str, Estimate] | None = optional()

    def recall_interval(self, cls: str) -> Estimate | None:
        """The recall interval of ``cls``, under either name results.json has used for them."""
        return (self.per_class_recall or self.recall or {}).get(cls)


@record
class Uncertainty(Record):
    """``{"test": Bootstrap, "leakage_free": Bootstrap}``; results.json of older auditruns held the
    test split's bootstrap block itself here, not nested (see ``blocks``)."""

    test: Bootstrap | None = None
    leakage_free: Bootstrap | None = None

    def blocks(self) -> tuple[Bootstrap | None, Bootstrap | None]:
        """(test, leakage_free) bootstrap blocks, whether nested or in the older flat shape."""
        if "accuracy" in self.extra or "macro_f1" in self.extra:
            return Bootstrap.from_json(self.to_json()), None
        return self.test, self.leakage_free


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

    def recall_of(self, cls: str) -> Interval | None:
        return self.recall.get(cls) if isinstance(self.recall, dict) else None


@record
class Subgroup(Record):
    group: str = ""
    n: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    recall: dict[str, float | None] = items(dict)
    ci: SubgroupIntervals | None = None
    pooled: list[str] | None = None

    def recall_of(self, cls: str) -> float | None:
        """The group's recall of ``cls``; None where it has no image of the class."""
        return self.recall.get(cls) if isinstance(self.recall, dict) else None


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
class LargestGap(SubgroupGapEntry):
    """The attribute with the largest gap, and that attribute's entry."""

    attribute: str | None = None

    def to_json(self) -> dict:
        out = super().to_json()
        # the stage writes {"attribute": ..., **entry}: the attribute leads
        return {"attribute": out.pop("attribute"), **out} if "attribute" in out else out


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

    def of_attribute(self, attribute: str) -> SubgroupGapEntry | None:
        return self.attributes.get(attribute) if isinstance(self.attributes, dict) else None

