"""Values shared by every report section: numbers with their display, image references, and the
small formatting rules (durations, counts, percentages, names) that all sections write alike.

Each section module builds its view from ``results.json`` with these, so one number reads the same
wherever the report shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from engine.results import (BackboneResult, ClassMetrics, Estimate, Metrics, Record, SkippedImage, WeightsInfo,
                            as_backbone_result, number as _num)

#: At most this many file names are listed in the provenance / integrity tables (the rest counted).
MAX_LISTED = 20


@dataclass(frozen=True)
class Metric:
    """A number with an optional confidence interval; ``text`` is its display form."""

    value: float | None
    low: float | None = None
    high: float | None = None
    digits: int = 3
    #: shown instead of the number when there is none: why, e.g. "no test images"
    missing: str = "n/a"

    @property
    def known(self) -> bool:
        return self.value is not None

    @property
    def text(self) -> str:
        return self.missing if self.value is None else f"{self.value:.{self.digits}f}"

    @property
    def ci_text(self) -> str:
        if self.low is None or self.high is None:
            return ""
        return f"{self.low:.{self.digits}f}–{self.high:.{self.digits}f}"


@dataclass(frozen=True)
class ImageRef:
    """An image stored in the run directory (``path`` relative to it) with its alt text."""

    path: str
    alt: str
    label: str = ""


def as_metric(value: Any, digits: int = 3) -> Metric:
    return Metric(_num(value), digits=digits)


def interval_metric(block: Estimate | None, digits: int = 3) -> Metric | None:
    """A bootstrap estimate (engine.evaluation.uncertainty's ``value``, ``ci_low``, ``ci_high``) as a Metric."""
    if not isinstance(block, Estimate):
        return None
    return Metric(_num(block.value), _num(block.lower), _num(block.upper), digits)


#: Display of a per-class metric that is undefined (docs/metrics.md): no true image of the class in
#: the subset (recall, F1), or the class was never predicted (precision).
NO_IMAGES = "no test images"
NEVER_PREDICTED = "never predicted"


def class_metric(entry: ClassMetrics | dict | None, key: str, digits: int = 3, no_images: str = NO_IMAGES) -> Metric:
    """A per-class metric of engine.evaluation.metrics' ``per_class`` entry, saying why it is undefined.

    Support 0 means no image of the class: its recall and F1 are undefined, also in results.json
    written before they were null (which stored 0.0 for them).
    """
    if isinstance(entry, dict):
        entry = ClassMetrics.from_json(entry)
    if not isinstance(entry, ClassMetrics):
        return as_metric(None, digits)
    if key in ("recall", "f1") and count_of(entry.support) == 0:
        return Metric(None, digits=digits, missing=no_images)
    if key == "precision" and entry.never_predicted():
        return Metric(None, digits=digits, missing=NEVER_PREDICTED)
    value = {"precision": entry.precision, "recall": entry.recall, "f1": entry.f1, "support": entry.support}[key]
    return as_metric(value, digits)


def _as_metrics(block: Any) -> Metrics | None:
    """A metrics block as ``Metrics``: the typed block, or a dict or another record with the same
    keys (an external evaluation's backbone entry holds ``per_class`` and ``classes_in_macro`` too)."""
    if isinstance(block, Metrics):
        return block
    if isinstance(block, Record):
        return Metrics.from_json(block.to_json())
    if isinstance(block, dict):
        return Metrics.from_json(block)
    return None


def macro_classes(block: Any, class_names: Sequence[str]) -> list[str]:
    """The classes a metrics block's macro averages cover: ``classes_in_macro``, or for results
    that lack it the classes with images (support > 0; unknown support counts as present)."""
    metrics = _as_metrics(block)
    if metrics is None:
        return list(class_names)
    if isinstance(metrics.classes_in_macro, list):
        return [str(c) for c in metrics.classes_in_macro]
    return [c for c in class_names if count_of(_support(metrics.of_class(c))) != 0]


def _support(entry: ClassMetrics | None) -> int | None:
    return None if entry is None else entry.support


def macro_note(block: Any, class_names: Sequence[str], where: str = "this subset") -> str | None:
    """'3 classes: no no_tumor image in this subset' where a class is left out of macro averages."""
    covered = macro_classes(block, class_names)
    absent = [c for c in class_names if c not in covered]
    if not absent or not covered:
        return None
    return f"{len(covered)} classes: no {' or '.join(absent)} image in {where}"


def format_duration(seconds: Any) -> str:
    """45 s, 2 min 05 s, 1 h 02 min; "n/a" when unknown."""
    s = _num(seconds)
    if s is None:
        return "n/a"
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    minutes, sec = divmod(int(round(s)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def count_of(value: Any) -> int | None:
    """Integrity counts arrive as numbers or as the list of offending items."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    number = _num(value)
    return None if number is None else int(number)


def percent_text(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.1f} %"


def backbone_display(backbone: BackboneResult | dict) -> str:
    return as_backbone_result(backbone).label or "unnamed backbone"


def display_path(path: Any) -> str:
    """How the report names a folder or file given by an absolute path: by its name. A machine's own
    paths (``/home/alice/...``) tell a reader nothing and may say who ran the audit; a relative path
    (already relative to the data root or the run folder) is kept."""
    if path is None:
        return "n/a"
    text = str(path).rstrip("/\\")
    if text.startswith(("/", "\\")) or (len(text) > 2 and text[1] == ":" and text[2] in "/\\"):
        name = text.replace("\\", "/").rsplit("/", 1)[-1]
        return name or text
    return text


def file_name(path: Any) -> str:
    """A model or weights file by its name alone: where it lay on the machine that ran the audit
    is provenance, not something a reader can open."""
    return str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] if path else "n/a"


def anchor_id(name: str) -> str:
    return "bb-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def weights_text(backbone: BackboneResult | dict) -> str:
    backbone = as_backbone_result(backbone)
    weights = backbone.weights if isinstance(backbone.weights, WeightsInfo) else WeightsInfo()
    used, requested = weights.used, weights.requested
    if used == "imagenet":
        text = "ImageNet"
    elif used == "random":
        text = "random initialisation"
        if requested == "imagenet":
            text += " (ImageNet requested but unavailable)"
    elif used == "file":
        text = "from file " + file_name(backbone.file or "")
    else:
        text = used or "not recorded"
    return text


def input_size_text(backbone: BackboneResult | dict) -> str:
    backbone = as_backbone_result(backbone)
    if not backbone.input_size_known:
        return "n/a"
    return f"{backbone.input_size}×{backbone.input_size}"


def listed_items(items: Any, render) -> tuple[list[str], int]:
    """The first MAX_LISTED items rendered, and how many more there are."""
    items = list(items) if isinstance(items, (list, tuple)) else []
    return [render(x) for x in items[:MAX_LISTED]], max(0, len(items) - MAX_LISTED)


def unreadable_text(entry: SkippedImage | dict | str) -> str:
    """'path: reason' of a file the integrity audit or data discovery could not use."""
    if isinstance(entry, dict):
        entry = SkippedImage.from_json(entry)
    if isinstance(entry, SkippedImage):
        return f"{'?' if entry.path is None else entry.path}: {'unreadable' if entry.reason is None else entry.reason}"
    return str(entry)
