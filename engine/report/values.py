"""Values shared by every report section: numbers with their display, image references, and the
small formatting rules (durations, counts, percentages, names) that all sections write alike.

Each section module builds its view from ``results.json`` with these, so one number reads the same
wherever the report shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from engine.results import number as _num

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


def interval_metric(block: dict | None, digits: int = 3) -> Metric | None:
    """``{"value","low","high"}`` or engine.evaluation.uncertainty's ``{"value","ci_low","ci_high"}``."""
    if not isinstance(block, dict):
        return None
    low = block.get("ci_low", block.get("low"))
    high = block.get("ci_high", block.get("high"))
    return Metric(_num(block.get("value")), _num(low), _num(high), digits)


#: Display of a per-class metric that is undefined (docs/metrics.md): no true image of the class in
#: the subset (recall, F1), or the class was never predicted (precision).
NO_IMAGES = "no test images"
NEVER_PREDICTED = "never predicted"


def class_metric(entry: Any, key: str, digits: int = 3, no_images: str = NO_IMAGES) -> Metric:
    """A per-class metric of engine.evaluation.metrics' ``per_class`` entry, saying why it is undefined.

    Support 0 means no image of the class: its recall and F1 are undefined, also in results.json
    written before they were null (which stored 0.0 for them).
    """
    if not isinstance(entry, dict):
        return as_metric(None, digits)
    if key in ("recall", "f1") and count_of(entry.get("support")) == 0:
        return Metric(None, digits=digits, missing=no_images)
    if key == "precision" and key in entry and _num(entry[key]) is None:
        return Metric(None, digits=digits, missing=NEVER_PREDICTED)
    return as_metric(entry.get(key), digits)


def macro_classes(block: Any, class_names: Sequence[str]) -> list[str]:
    """The classes a metrics block's macro averages cover: ``classes_in_macro``, or for results
    that lack it the classes with images (support > 0; unknown support counts as present)."""
    if not isinstance(block, dict):
        return list(class_names)
    stored = block.get("classes_in_macro")
    if isinstance(stored, list):
        return [str(c) for c in stored]
    per_class = block.get("per_class") or {}
    return [c for c in class_names if count_of((per_class.get(c) or {}).get("support")) != 0]


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


def backbone_display(backbone: dict) -> str:
    return backbone.get("display_name") or backbone.get("name") or "unnamed backbone"


def anchor_id(name: str) -> str:
    return "bb-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def weights_text(backbone: dict) -> str:
    weights = backbone.get("weights") or {}
    used = weights.get("used")
    requested = weights.get("requested")
    if used == "imagenet":
        text = "ImageNet"
    elif used == "random":
        text = "random initialisation"
        if requested == "imagenet":
            text += " (ImageNet requested but unavailable)"
    elif used == "file":
        text = "from file " + (backbone.get("file") or "").rsplit("/", 1)[-1]
    else:
        text = used or "not recorded"
    return text


def input_size_text(backbone: dict) -> str:
    size = backbone.get("input_size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return f"{size[0]}×{size[1]}"
    if isinstance(size, int):
        return f"{size}×{size}"
    return "n/a"


def listed_items(items: Any, render) -> tuple[list[str], int]:
    """The first MAX_LISTED items rendered, and how many more there are."""
    items = list(items) if isinstance(items, (list, tuple)) else []
    return [render(x) for x in items[:MAX_LISTED]], max(0, len(items) - MAX_LISTED)


def unreadable_text(entry: Any) -> str:
    """'path: reason' of a file the integrity audit or data discovery could not use."""
    if isinstance(entry, dict):
        return f"{entry.get('path', '?')}: {entry.get('reason', 'unreadable')}"
    return str(entry)
