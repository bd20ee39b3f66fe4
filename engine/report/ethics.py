"""The ethics section: how many tumour images each backbone called "no tumour" (the costly
error), per tumour class, on the test split and the leakage-free subset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.report.values import Metric, percent_text
from engine.results import BackboneResult, Metrics


#: The class whose prediction for a tumour image is the costly error (a missed tumour).
NO_TUMOUR_CLASS = "no_tumor"


@dataclass(frozen=True)
class MissRow:
    """Tumour images the model called no_tumor, from the confusion matrix."""

    display_name: str
    per_class: list[tuple[str, int, int]]  # tumour class, called no_tumor, images of that class
    missed: int
    total: int
    rate: Metric
    lf_rate: Metric | None
    sentence: str


@dataclass(frozen=True)
class EthicsView:
    no_tumour_class_present: bool
    tumour_classes: list[str]
    rows: list[MissRow]


def tumour_miss_counts(cm: Sequence[Sequence[int]], class_names: Sequence[str],
                       no_tumour: str = NO_TUMOUR_CLASS) -> tuple[list[tuple[str, int, int]], int, int] | None:
    """Tumour images predicted as ``no_tumour``, from a confusion matrix (rows true, columns predicted).

    Returns ([(tumour class, called no_tumour, images of that class)], missed, tumour images), or
    None when the class list has no ``no_tumour`` class or the matrix does not match it.
    """
    names = list(class_names)
    if no_tumour not in names or not cm or len(cm) != len(names):
        return None
    j = names.index(no_tumour)
    rows = []
    for i, cls in enumerate(names):
        if i == j:
            continue
        rows.append((cls, int(cm[i][j]), int(sum(cm[i]))))
    return rows, sum(r[1] for r in rows), sum(r[2] for r in rows)


def _confusion(block: Metrics | None) -> list[list[int]] | None:
    return block.confusion_matrix if isinstance(block, Metrics) else None


def ethics_view(backbones: Sequence[BackboneResult], class_names: Sequence[str]) -> EthicsView:
    present = NO_TUMOUR_CLASS in class_names
    rows = []
    for b in backbones:
        if not b.ok:
            continue
        counts = tumour_miss_counts(_confusion(b.test), class_names)
        if counts is None:
            continue
        per_class, missed, total = counts
        rate = Metric(missed / total if total else None)
        lf_rate = None
        lf_counts = tumour_miss_counts(_confusion(b.leakage_free), class_names)
        if lf_counts is not None and lf_counts[2]:
            lf_rate = Metric(lf_counts[1] / lf_counts[2])
        sentence = (f"{b.label} called {missed} of {total} tumour images in the test split "
                    f"{NO_TUMOUR_CLASS} ({percent_text(rate.value)})"
                    + (f"; on the leakage-free subset {lf_counts[1]} of {lf_counts[2]} ({percent_text(lf_rate.value)})"
                       if lf_rate else "") + ".")
        rows.append(MissRow(b.label, per_class, missed, total, rate, lf_rate, sentence))
    tumour_classes = [c for c in class_names if c != NO_TUMOUR_CLASS]
    return EthicsView(present, tumour_classes, rows)
