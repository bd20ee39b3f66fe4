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
from engine.results import number as _num

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


def _with_ci(value: Any, ci: Any) -> Metric:
    ci = ci if isinstance(ci, dict) else {}
    return Metric(_num(value), _num(ci.get("low")), _num(ci.get("high")))


def _row(entry: dict, recall_classes: list[str]) -> SubgroupRow:
    ci = entry.get("ci") if isinstance(entry.get("ci"), dict) else {}
    recall, recall_ci = entry.get("recall") or {}, ci.get("recall") or {}
    recalls = [_with_ci(recall.get(c), recall_ci.get(c)) for c in recall_classes]
    recalls = [r if r.known else Metric(None, missing="no images") for r in recalls]
    return SubgroupRow(str(entry.get("group", "?")), count_of(entry.get("n")),
                       _with_ci(entry.get("accuracy"), ci.get("accuracy")),
                       _with_ci(entry.get("macro_f1"), ci.get("macro_f1")), recalls,
                       [str(g) for g in entry.get("pooled") or []])


def _interval_text(low: float | None, high: float | None, confidence: float) -> str:
    if low is None or high is None:
        return "no interval (no bootstrap, or too few images)"
    return f"{confidence * 100:.0f} % CI {low:.3f} to {high:.3f}"


def _side(side: dict) -> str:
    f1 = _num(side.get("macro_f1"))
    return f"{side.get('group')} ({'n/a' if f1 is None else f'{f1:.3f}'}, {side.get('n')} images)"


def gap_sentence(label: str, gap: dict | None, confidence: float) -> str:
    """The gap of one attribute in words: which two groups, by how much, with its interval and what
    the interval says (excludes 0: a real difference; includes 0: they may perform alike)."""
    gap = gap if isinstance(gap, dict) else {}
    value = _num(gap.get("gap"))
    if value is None:
        return f"{label}: no gap measured ({gap.get('note') or 'no subgroup results'})."
    low, high = _num(gap.get("ci_low")), _num(gap.get("ci_high"))
    sentence = (f"{label}: macro-F1 is {value:.3f} higher for {_side(gap.get('higher') or {})} than for "
                f"{_side(gap.get('lower') or {})}; {_interval_text(low, high, confidence)}.")
    if low is not None and high is not None:
        sentence += (" The interval excludes 0: the groups differ beyond what resampling explains." if low > 0 else
                     " The interval includes 0: the groups may perform alike.")
    if gap.get("note"):
        sentence += f" Note: {gap['note']}."
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


def subgroup_view(backbone: dict) -> SubgroupView | None:
    """The view of one backbone's subgroup results; None when the run measured none."""
    groups, gap = backbone.get("subgroups"), backbone.get("subgroup_gap")
    if not isinstance(groups, dict) or not groups:
        return None
    gap = gap if isinstance(gap, dict) else {}
    confidence = _num(gap.get("confidence")) or 0.95
    min_n = count_of(gap.get("min_n"))
    recall_classes: list[str] = []
    for entries in groups.values():
        for entry in entries or []:
            recall_classes += [str(c) for c in (entry.get("recall") or {}) if str(c) not in recall_classes]
    gap_of = gap.get("attributes") or {}
    tables, unavailable = [], []
    for attribute, entries in groups.items():
        label = attribute_label(attribute)
        if not entries:
            unavailable.append(label.lower())
            continue
        rows = [_row(e, recall_classes) for e in entries]
        tables.append(SubgroupTable(attribute, label, rows, gap_sentence(label, gap_of.get(attribute), confidence),
                                    _pooled_note(label, rows, min_n)))
    note = (f"Not available: no test image records its {', '.join(unavailable)} (plain images carry no such "
            "header), so those attributes are not split." if unavailable else None)
    largest = gap.get("largest")
    largest_sentence = None
    if isinstance(largest, dict) and _num(largest.get("gap")) is not None:
        largest_sentence = "Largest gap between subgroups, by " + gap_sentence(
            attribute_label(str(largest.get("attribute"))).lower(), largest, confidence)
    return SubgroupView(recall_classes, tables, note, largest_sentence, confidence, min_n)


__all__ = ["SubgroupRow", "SubgroupTable", "SubgroupView", "attribute_label", "gap_sentence", "subgroup_view"]
