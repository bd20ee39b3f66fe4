"""The external-validation section: each finished backbone scored on labelled data from another
source (engine.evaluation.external), one table per external data set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.report.values import Metric, as_metric, class_metric, count_of, display_path, macro_note
from engine.results import Localisation, PointingGame, RunResults, method_label
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


def _localised(locs) -> str | None:
    """Per method: the strict pointing game, energy and IoU with n (the folder's one localisation)."""
    parts = [f"{method_label(loc.method)}: pointing game {loc.hits} of {loc.total} ({as_metric(loc.rate, 2).text}), "
             f"energy {as_metric(loc.energy, 2).text}, IoU {as_metric(loc.iou, 2).text}"
             for loc in locs or [] if isinstance(loc, Localisation) and not loc.error and loc.total]
    return "; ".join(parts) or None


def _pointing(pg: PointingGame | float | None) -> str | None:
    if isinstance(pg, PointingGame):
        return f"{pg.hits} of {pg.total} ({as_metric(pg.rate, 2).text})" if pg.total else None
    return as_metric(pg, 2).text if _num(pg) is not None else None


def external_views(results: RunResults, class_names: Sequence[str]) -> list[ExternalView]:
    views = []
    for entry in results.external or []:
        rows = []
        for b in entry.backbones or []:
            per_class = b.per_class or {}
            recall = ", ".join(f"{c} {class_metric(per_class[c], 'recall', 2, 'no images').text}"
                               for c in class_names if c in per_class)
            rows.append(ExternalRow(results.label_of(b.name) or str(b.name), count_of(b.n_images),
                                    as_metric(b.accuracy), as_metric(b.balanced_accuracy),
                                    as_metric(b.macro_f1), _localised(b.localisation) or _pointing(b.pointing_game),
                                    recall or "n/a",
                                    macro_note(b, class_names, "this data")))
        views.append(ExternalView(display_path(entry.data) if entry.data else "external data", rows))
    return views
