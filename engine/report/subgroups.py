"""The "Performance by subgroup" part of a backbone's section: per attribute (site, scanner, sex,
age band) a table of its groups (n, accuracy, macro-F1, the tumour classes' recall, each with its
bootstrap interval), the largest macro-F1 gap between two groups in words, which groups were pooled
into "other", and which attributes no test image records. Read from a backbone's ``subgroups`` and
``subgroup_gap`` blocks (engine.evaluation.subgroups); the forest plot is drawn by
engine.report.figures.subgroup_forest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.report.figures import FigureRecord
from engine.report.values import Metric, count_of
from engine.results import (BackboneResult, Interval, LargestGap, Subgroup, SubgroupGap, SubgroupGapEntry,
                            SubgroupIntervals, SubgroupSide, as_backbone_result, number as _num)

#: How the report names an attribute of ``[subgroups] by``.
ATTRIBUTE_LABELS = {"site": "Site", "scanner": "Scanner", "sex": "Sex", "age_band": "Age band"}
OTHER = "other"


@dataclass(frozen=True)
class SubgroupRow:
    group: str
    n: int | None
    accuracy: Metric
    macro_f1: Metric
    recalls: list[Metric]  # in SubgroupView.recall_classes order
    pooled: list[str]


@dataclass(frozen=True)
class SubgroupTable:
    attribute: str
    label: str
    rows: list[SubgroupRow]
    gap_sentence: str
    pooled_note: str | None


@dataclass
class SubgroupView:
    recall_classes: list[str]
    tables: list[SubgroupTable]
    unavailable_note: str | None
    largest_sentence: str | None
    confidence: float
    min_n: int | None
    forest: FigureRecord | None = None


def attribute_label(attribute: str) -> str:
    return ATTRIBUTE_LABELS.get(attribute, attribute.replace("_", " ").capitalize())


def _with_ci(value: Any, ci: Interval | None) -> Metric:
    ci = ci if isinstance(ci, Interval) else Interval()
    return Metric(_num(value), _num(ci.low), _num(ci.high))


def _row(entry: Subgroup, recall_classes: list[str]) -> SubgroupRow:
    ci = entry.ci if isinstance(entry.ci, SubgroupIntervals) else SubgroupIntervals()
    recalls = [_with_ci(entry.recall_of(c), ci.recall_of(c)) for c in recall_classes]
    recalls = [r if r.known else Metric(None, missing="no images") for r in recalls]
    return SubgroupRow(str(entry.group), count_of(entry.n), _with_ci(entry.accuracy, ci.accuracy),
                       _with_ci(entry.macro_f1, ci.macro_f1), recalls, [str(g) for g in entry.pooled or []])


def _interval_text(low: float | None, high: float | None, confidence: float) -> str:
    if low is None or high is None:
        return "no interval (no bootstrap, or too few images)"
    return f"{confidence * 100:.0f} % CI {low:.3f} to {high:.3f}"


def _side(side: SubgroupSide) -> str:
    f1 = _num(side.macro_f1)
    return f"{side.group} ({'n/a' if f1 is None else f'{f1:.3f}'}, {side.n} images)"


def gap_sentence(label: str, gap: SubgroupGapEntry | LargestGap | None, confidence: float) -> str:
    """The gap of one attribute in words: which two groups, by how much, with its interval and what
    the interval says (excludes 0: a real difference; includes 0: they may perform alike)."""
    gap = gap if isinstance(gap, (SubgroupGapEntry, LargestGap)) else SubgroupGapEntry()
    value = _num(gap.gap)
    if value is None:
        return f"{label}: no gap measured ({gap.note or 'no subgroup results'})."
    low, high = _num(gap.ci_low), _num(gap.ci_high)
    sentence = (f"{label}: macro-F1 is {value:.3f} higher for {_side(gap.higher or SubgroupSide.from_json({}))} "
                f"than for {_side(gap.lower or SubgroupSide.from_json({}))}; {_interval_text(low, high, confidence)}.")
    if low is not None and high is not None:
        sentence += (" The interval excludes 0: the groups differ beyond what resampling explains." if low > 0 else
                     " The interval includes 0: the groups may perform alike.")
    if gap.note:
        sentence += f" Note: {gap.note}."
    return sentence


def _pooled_note(label: str, rows: list[SubgroupRow], min_n: int | None) -> str | None:
    other = next((r for r in rows if r.group == OTHER), None)
    if other is None or not other.pooled:
        return None
    below = f"fewer than {min_n}" if min_n else "too few"
    note = (f"{label} groups with {below} test images are pooled into “other” ({other.n} images): "
            + ", ".join(other.pooled) + ".")
    if min_n and other.n is not None and other.n < min_n:
        note += f" “other” itself has fewer than {min_n} images, so it is left out of the gap."
    return note


def subgroup_view(backbone: BackboneResult | dict) -> SubgroupView | None:
    """The view of one backbone's subgroup results; None when the run measured none."""
    backbone = as_backbone_result(backbone)
    groups = backbone.subgroups
    if not isinstance(groups, dict) or not groups:
        return None
    gap = backbone.subgroup_gap if isinstance(backbone.subgroup_gap, SubgroupGap) else SubgroupGap()
    confidence = _num(gap.confidence) or 0.95
    min_n = count_of(gap.min_n)
    recall_classes: list[str] = []
    for entries in groups.values():
        for entry in entries or []:
            recall_classes += [str(c) for c in entry.recall if str(c) not in recall_classes]
    tables, unavailable = [], []
    for attribute, entries in groups.items():
        label = attribute_label(attribute)
        if not entries:
            unavailable.append(label.lower())
            continue
        rows = [_row(e, recall_classes) for e in entries]
        tables.append(SubgroupTable(attribute, label, rows, gap_sentence(label, gap.of_attribute(attribute), confidence),
                                    _pooled_note(label, rows, min_n)))
    note = (f"Not available: no test image records its {', '.join(unavailable)} (plain images carry no such "
            "header), so those attributes are not split." if unavailable else None)
    largest = gap.largest
    largest_sentence = None
    if isinstance(largest, LargestGap) and _num(largest.gap) is not None:
        largest_sentence = "Largest gap between subgroups, by " + gap_sentence(
            attribute_label(str(largest.attribute)).lower(), largest, confidence)
    return SubgroupView(recall_classes, tables, note, largest_sentence, confidence, min_n)


__all__ = ["SubgroupRow", "SubgroupTable", "SubgroupView", "attribute_label", "gap_sentence", "subgroup_view"]
