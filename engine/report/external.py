"""The external-validation section: each finished backbone scored on labelled data from another
source (engine.evaluation.external), one table per external data set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.report.values import Metric, as_metric, class_metric, count_of, macro_note
from engine.results import number as _num


@dataclass(frozen=True)
class ExternalRow:
    display_name: str
    n_images: int | None
    accuracy: Metric
    balanced_accuracy: Metric
    macro_f1: Metric
    pointing_game: str | None
    recall_text: str
    macro_note: str | None = None


@dataclass(frozen=True)
class ExternalView:
    data: str
    rows: list[ExternalRow]


def external_views(results: dict, display: dict[str, str], class_names: Sequence[str]) -> list[ExternalView]:
    views = []
    for entry in results.get("external") or []:
        rows = []
        for b in entry.get("backbones") or []:
            pg = b.get("pointing_game")
            pointing = None
            if isinstance(pg, dict) and pg.get("total"):
                pointing = f"{pg.get('hits')} of {pg.get('total')} ({as_metric(pg.get('rate'), 2).text})"
            elif _num(pg) is not None:
                pointing = as_metric(pg, 2).text
            per_class = b.get("per_class") or {}
            recall = ", ".join(f"{c} {class_metric(per_class.get(c), 'recall', 2, 'no images').text}"
                               for c in class_names if c in per_class)
            rows.append(ExternalRow(display.get(b.get("name"), str(b.get("name"))), count_of(b.get("n_images")),
                                    as_metric(b.get("accuracy")), as_metric(b.get("balanced_accuracy")),
                                    as_metric(b.get("macro_f1")), pointing, recall or "n/a",
                                    macro_note(b, class_names, "this data")))
        views.append(ExternalView(str(entry.get("data", "external data")), rows))
    return views
