"""Performance by subgroup (site, scanner, sex, age band) and the largest gap between subgroups.

For each attribute in ``[subgroups] by`` the test images are split by their value of it, and each
group gets its n, accuracy, macro-F1 and per-class recall, with percentile-bootstrap intervals.
Then, per attribute, the largest macro-F1 gap between two groups with an interval of that
difference; the ``max_subgroup_gap`` gate (engine.nightly.gates) reads it.

Definitions, the same as everywhere else in the report:

* Every metric is ``engine.evaluation.metrics``' own, computed on the group's rows alone: macro-F1
  averages the classes present in *that group's* true labels. Per-group point values go through
  Fairlearn's ``MetricFrame`` with those functions as its metrics, so a group's macro-F1 is exactly
  what ``classification_metrics`` gives on its rows (tested). Two groups with different classes
  present are then averaged over different classes; the gap block lists each side's
  ``classes_in_macro`` and adds a ``note`` when they differ.
* Groups smaller than ``min_n`` (default 20) are pooled into one group ``"other"``, whose entry lists
  them under ``"pooled"``: an estimate from a handful of images is mostly noise, and a group of three
  patients at one site is close to identifying them. A missing value (None, empty, NaN) is the group
  ``"unknown"``. Groups are listed by name, then ``"unknown"``, then ``"other"``.
* The gap of an attribute is in macro-F1, the headline metric (it weighs every tumour class
  equally, where accuracy follows the class mix, which differs from site to site): the group with
  the highest macro-F1 minus the group with the lowest, among groups with at least ``min_n``
  images (``"other"`` included when the pool reaches ``min_n``). Its interval is the percentile
  bootstrap of the difference between *those two groups*, so it can include 0 (and does, when
  the groups perform alike). The pair is picked on the data, so with many similar groups the
  point gap leans high; the interval does not correct for that choice.

The bootstrap: every group is resampled within itself (stratified: a resample keeps each group's
size, so a small group cannot vanish from a resample), with its own seeded stream
``numpy.random.default_rng([seed, crc32(attribute), crc32(group)])``, through
``engine.evaluation.uncertainty.resampled_confusion_matrices``. Resample b of every group together
is one stratified resample of the whole test set, so the gap's resample b is the difference of the
two groups' resample b (paired). A group's interval does not depend on which other groups exist.
A resample that lost one of a group's macro classes has no macro-F1 and is skipped, as in
``bootstrap_summary``; ``n_resamples_defined`` counts the rest.

Why not Fairlearn's own bootstrap (``MetricFrame(n_boot=...)``): it resamples the pooled rows, so a
group's size varies between resamples and a small one can be missing from some; its
``difference_ci`` is the interval of max minus min over each resample, which is never below 0 and so
cannot show that two groups perform alike; and it re-runs a pandas group-by per resample.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from engine.errors import InputError
from engine.evaluation.metrics import (
    accuracy_from_confusion,
    macro_f1_score,
    per_class_scores,
    present_labels,
    rounded,
)
from engine.evaluation.uncertainty import (
    DEFAULT_RESAMPLES,
    MIN_CI_IMAGES,
    metrics_from_confusion,
    percentile_ci,
    resampled_confusion_matrices,
)

#: Edges of the default ``[subgroups] age_bands``: <40, 40-59, 60+ (ages 0 to 199); the manifest's
#: default too (engine.manifest.SubgroupsConfig).
DEFAULT_AGE_BANDS = (0, 40, 60, 200)
#: Default ``[subgroups] min_n``: smaller groups are pooled into "other".
DEFAULT_MIN_N = 20


#: Subgroup attributes a manifest may name in ``[subgroups] by``.
SUBGROUP_ATTRIBUTES = ("site", "scanner", "sex", "age_band")
OTHER = "other"
UNKNOWN = "unknown"
#: The class left out of the default recall columns: recall of the tumour classes is what a
#: subgroup must not lose (a missed tumour is the costly error).
NO_TUMOUR_CLASS = "no_tumor"
GAP_METRIC = "macro_f1"
METHOD = "percentile bootstrap, stratified by group (each group resampled within itself); gap paired"


# ------------------------------------------------------------------------------------------------
# Age bands


def age_bands_problem(bands: Sequence[int]) -> str | None:
    """Why ``bands`` cannot be age-band edges, or None: at least two whole numbers, the first >= 0,
    strictly increasing."""
    values = list(bands)
    if len(values) < 2:
        return "must list at least two edges (the lowest and highest age), e.g. [0, 40, 60, 200]"
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        return f"must be whole numbers, got {values!r}"
    if values[0] < 0:
        return f"must start at 0 or above, got {values[0]}"
    if any(b <= a for a, b in zip(values, values[1:])):
        return f"must be strictly increasing, got {values!r}"
    return None


def age_band_labels(bands: Sequence[int] = DEFAULT_AGE_BANDS) -> list[str]:
    """The label of each band ``[bands[i], bands[i+1])``: ``"<40"`` for the first when it starts at
    0, ``"60+"`` for the last, ``"40-59"`` between (ages in whole years)."""
    problem = age_bands_problem(bands)
    if problem:
        raise ValueError(f"age bands {problem}")
    edges = [int(b) for b in bands]
    labels = []
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        if i == 0 and lo == 0:
            labels.append(f"<{hi}")
        elif i == len(edges) - 2:
            labels.append(f"{lo}+")
        else:
            labels.append(f"{lo}" if hi - 1 == lo else f"{lo}-{hi - 1}")
    return labels


def age_band(age: object, bands: Sequence[int] = DEFAULT_AGE_BANDS) -> str:
    """The band label of ``age`` in years (a number or a numeric string); ``"unknown"`` when it is
    missing (None, empty, NaN). An age that is not a number, or lies outside
    ``[bands[0], bands[-1])``, is an InputError: it is a data error to fix, not a band.
    """
    labels = age_band_labels(bands)
    if age is None:
        return UNKNOWN
    if isinstance(age, bool):
        raise InputError(f"age {age!r} is not a number")
    if isinstance(age, str):
        text = age.strip()
        if not text:
            return UNKNOWN
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"age {age!r} is not a number") from None
    elif isinstance(age, (int, float, np.integer, np.floating)):
        value = float(age)
    else:
        raise InputError(f"age {age!r} is not a number")
    if math.isnan(value):
        return UNKNOWN
    if not bands[0] <= value < bands[-1]:
        raise InputError(f"age {age!r} lies outside the age bands' range [{bands[0]}, {bands[-1]})")
    i = int(np.searchsorted(np.asarray(bands, dtype=float), value, side="right")) - 1
    return labels[i]


# ------------------------------------------------------------------------------------------------
# The analysis shared by subgroup_metrics and subgroup_gap


@dataclass
class _Group:
    name: str
    n: int
    point: dict  # "accuracy", "macro_f1", "recall" (k,)
    macro_labels: list[int]
    boot: dict | None  # metrics_from_confusion over the resamples, or None without a bootstrap
    pooled: list[str] = field(default_factory=list)


def _label(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    text = str(value).strip()
    return text if text else UNKNOWN


def _order(name: str) -> tuple:
    return ({UNKNOWN: 1, OTHER: 2}.get(name, 0), name)


def _pool(labels: np.ndarray, min_n: int) -> tuple[np.ndarray, list[str]]:
    """Labels with every group smaller than ``min_n`` renamed ``"other"``, and those groups' names."""
    names, counts = np.unique(labels, return_counts=True)
    small = sorted((str(g) for g, c in zip(names, counts) if c < min_n and g != OTHER), key=_order)
    if not small:
        return labels, []
    out = labels.copy()
    out[np.isin(labels, small)] = OTHER
    return out, small


def _stream(seed: int, attribute: str, group: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(attribute.encode("utf-8")),
                                  zlib.crc32(group.encode("utf-8"))])


def _point_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray, attribute: str, k: int):
    """Per-group accuracy, macro-F1 and recall per class with Fairlearn's MetricFrame, the metric
    functions being engine.evaluation.metrics' definitions (a DataFrame indexed by group)."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    def cm(yt, yp):
        yt, yp = np.asarray(yt, dtype=np.int64), np.asarray(yp, dtype=np.int64)
        return np.bincount(yt * k + yp, minlength=k * k).reshape(k, k)

    def recall_of(c):
        return lambda yt, yp: float(per_class_scores(cm(yt, yp))["recall"][c])

    metrics = {"accuracy": lambda yt, yp: float(accuracy_from_confusion(cm(yt, yp))),
               "macro_f1": lambda yt, yp: macro_f1_score(np.asarray(yt), np.asarray(yp), k)[0],
               **{f"recall_{c}": recall_of(c) for c in range(k)}}
    frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred,
                        sensitive_features=pd.Series(labels, name=attribute))
    return frame.by_group


def _check_inputs(y_true, y_pred, groups: Mapping[str, Sequence], k: int, min_n: int, n_resamples: int,
                  seed: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim != 1 or yp.shape != yt.shape or yt.size == 0:
        raise ValueError(f"y_true and y_pred must be 1-D, non-empty and of equal length, got {yt.shape} and {yp.shape}")
    for name, arr in (("y_true", yt), ("y_pred", yp)):
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= k:
            raise ValueError(f"{name} must hold integer class indices in 0..{k - 1}")
    for attribute, values in groups.items():
        if not isinstance(attribute, str) or not attribute:
            raise ValueError(f"subgroup attribute names must be non-empty strings, got {attribute!r}")
        if len(values) != len(yt):
            raise ValueError(f"subgroup attribute {attribute!r} has {len(values)} values for {len(yt)} images")
    if isinstance(min_n, bool) or int(min_n) != min_n or min_n < 1:
        raise ValueError(f"min_n must be a positive integer, got {min_n!r}")
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 0:
        raise ValueError(f"n_resamples must be an integer >= 0, got {n_resamples!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return yt.astype(np.int64), yp.astype(np.int64)


def _analyse(y_true, y_pred, groups, class_names, min_n, n_resamples, seed, confidence) -> dict[str, list[_Group]]:
    k = len(class_names)
    if k < 2:
        raise ValueError(f"need at least 2 class names, got {list(class_names)!r}")
    yt, yp = _check_inputs(y_true, y_pred, groups, k, min_n, n_resamples, seed, confidence)
    out: dict[str, list[_Group]] = {}
    for attribute, values in groups.items():
        labels, pooled = _pool(np.array([_label(v) for v in values], dtype=object), int(min_n))
        by_group = _point_metrics(yt, yp, labels, attribute, k)
        entries = []
        for name in sorted(set(labels.tolist()), key=_order):
            rows = labels == name
            g_true, g_pred = yt[rows], yp[rows]
            macro_labels = present_labels(g_true, k)
            row = by_group.loc[name]
            point = {"accuracy": float(row["accuracy"]), "macro_f1": float(row["macro_f1"]),
                     "recall": np.array([float(row[f"recall_{c}"]) for c in range(k)])}
            boot = None
            if n_resamples:
                cms = resampled_confusion_matrices(g_true, g_pred, k, int(n_resamples),
                                                   _stream(seed, attribute, name))
                boot = metrics_from_confusion(cms, macro_labels)
            entries.append(_Group(name, int(rows.sum()), point, macro_labels, boot,
                                  pooled if name == OTHER else []))
        out[attribute] = entries
    return out


# ------------------------------------------------------------------------------------------------
# Results


def _ci(stats: np.ndarray | None, n: int, confidence: float, *, count: bool = False) -> dict:
    """``{"low", "high"}`` (and ``n_resamples_defined``) of one statistic; None bounds without a
    bootstrap or for fewer than MIN_CI_IMAGES images."""
    if stats is None or n < MIN_CI_IMAGES:
        out = {"low": None, "high": None}
    else:
        lo, hi = percentile_ci(stats, confidence)
        out = {"low": rounded(lo) if lo is not None else None, "high": rounded(hi) if hi is not None else None}
    if count:
        out["n_resamples_defined"] = 0 if stats is None else int(np.count_nonzero(~np.isnan(stats)))
    return out


def _recall_indices(class_names: Sequence[str], recall_classes: Sequence[str] | None) -> list[int]:
    names = list(class_names)
    if recall_classes is None:
        return [i for i, c in enumerate(names) if c != NO_TUMOUR_CLASS]
    unknown = [c for c in recall_classes if c not in names]
    if unknown:
        raise ValueError(f"recall_classes {unknown!r} are not among the classes {names!r}")
    return [names.index(c) for c in recall_classes]


def _entry(g: _Group, class_names: Sequence[str], recall_idx: list[int], confidence: float) -> dict:
    boot = g.boot
    entry = {
        "group": g.name,
        "n": g.n,
        "accuracy": rounded(g.point["accuracy"]),
        "macro_f1": rounded(g.point["macro_f1"]),
        "recall": {class_names[c]: rounded(g.point["recall"][c]) for c in recall_idx},
        "ci": {
            "accuracy": _ci(None if boot is None else boot["accuracy"], g.n, confidence),
            "macro_f1": _ci(None if boot is None else boot["macro_f1"], g.n, confidence, count=True),
            "recall": {class_names[c]: _ci(None if boot is None or np.isnan(g.point["recall"][c])
                                           else boot["recall"][:, c], g.n, confidence)
                       for c in recall_idx},
        },
    }
    if g.name == OTHER:
        entry["pooled"] = list(g.pooled)
    return entry


def subgroup_metrics(
    y_true,
    y_pred,
    groups: Mapping[str, Sequence[str | None]],
    class_names: Sequence[str],
    *,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    recall_classes: Sequence[str] | None = None,
) -> dict:
    """Per attribute, per group: n, accuracy, macro-F1, recall per class and their intervals.

    Args:
        y_true, y_pred: (n,) int class indices into ``class_names`` (the test split).
        groups: attribute -> (n,) group value of each image (``{"site": [...], "age_band": [...]}``;
            None or "" is ``"unknown"``; use :func:`age_band` for ages).
        min_n: groups with fewer images are pooled into ``"other"``.
        n_resamples, seed, confidence: the bootstrap (0 resamples: every interval is None).
        recall_classes: the classes whose recall is listed; default every class but ``no_tumor``
            (the tumour classes).

    Returns (JSON-ready; ``backbones[].subgroups`` of results.json)::

        {attribute: [{"group": str, "n": int, "accuracy": f, "macro_f1": f,
                      "recall": {class: f | None},
                      "ci": {"accuracy": {"low": f, "high": f},
                             "macro_f1": {"low": f, "high": f, "n_resamples_defined": int},
                             "recall": {class: {"low": f, "high": f}}},
                      # on the "other" entry only: the groups pooled into it
                      "pooled": [str, ...]}, ...]}

    Recall is None (interval too) for a class with no image in the group; an interval is None for a
    group of fewer than 2 images.
    """
    analysis = _analyse(y_true, y_pred, groups, class_names, min_n, n_resamples, seed, confidence)
    return _metrics_block(analysis, class_names, recall_classes, confidence)


def _metrics_block(analysis: dict[str, list[_Group]], class_names: Sequence[str],
                   recall_classes: Sequence[str] | None, confidence: float) -> dict:
    recall_idx = _recall_indices(class_names, recall_classes)
    names = list(class_names)
    return {attribute: [_entry(g, names, recall_idx, confidence) for g in entries]
            for attribute, entries in analysis.items()}


def _gap(entries: list[_Group], class_names: list[str], min_n: int, confidence: float) -> dict:
    eligible = [g for g in entries if g.n >= min_n]
    compared = [g.name for g in eligible]
    if len(eligible) < 2:
        return {"gap": None, "ci_low": None, "ci_high": None, "n_resamples_defined": 0, "higher": None,
                "lower": None, "groups_compared": compared,
                "note": f"fewer than two groups with at least {min_n} images"}
    higher = max(eligible, key=lambda g: g.point["macro_f1"])  # first of equals, in group order
    lower = min((g for g in eligible if g is not higher), key=lambda g: g.point["macro_f1"])
    gap = higher.point["macro_f1"] - lower.point["macro_f1"]
    if higher.boot is None:
        lo = hi = None
        defined = 0
    else:
        diff = higher.boot["macro_f1"] - lower.boot["macro_f1"]  # NaN where either side is undefined
        lo, hi = percentile_ci(diff, confidence)
        defined = int(np.count_nonzero(~np.isnan(diff)))

    def side(g: _Group) -> dict:
        return {"group": g.name, "n": g.n, "macro_f1": rounded(g.point["macro_f1"]),
                "classes_in_macro": [class_names[c] for c in g.macro_labels]}

    out = {"gap": rounded(gap), "ci_low": rounded(lo) if lo is not None else None,
           "ci_high": rounded(hi) if hi is not None else None, "n_resamples_defined": defined,
           "higher": side(higher), "lower": side(lower), "groups_compared": compared}
    if higher.macro_labels != lower.macro_labels:
        out["note"] = ("the two groups' macro-F1 average different classes "
                       f"({', '.join(out['higher']['classes_in_macro'])} vs "
                       f"{', '.join(out['lower']['classes_in_macro'])})")
    return out


def _gap_block(analysis: dict[str, list[_Group]], class_names: Sequence[str], min_n: int, n_resamples: int,
               seed: int, confidence: float) -> dict:
    names = list(class_names)
    attributes = {attribute: _gap(entries, names, int(min_n), confidence) for attribute, entries in analysis.items()}
    measured = [(a, e) for a, e in attributes.items() if e["gap"] is not None]
    largest = None
    if measured:
        attribute, entry = max(measured, key=lambda item: item[1]["gap"])  # first of equals, in `by` order
        largest = {"attribute": attribute, **entry}
    return {"metric": GAP_METRIC, "method": METHOD, "n_resamples": int(n_resamples),
            "confidence": float(confidence), "seed": int(seed), "min_n": int(min_n),
            "attributes": attributes, "largest": largest}


def subgroup_gap(
    y_true,
    y_pred,
    groups: Mapping[str, Sequence[str | None]],
    class_names: Sequence[str],
    *,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """The largest macro-F1 gap between two groups of each attribute, with a paired bootstrap CI.

    Same arguments as :func:`subgroup_metrics` (and the same resamples for the same seed). Returns
    (JSON-ready; ``backbones[].subgroup_gap`` of results.json)::

        {"metric": "macro_f1", "method": str, "n_resamples": int, "confidence": f, "seed": int,
         "min_n": int,
         "attributes": {attribute: {"gap": f | None, "ci_low": f | None, "ci_high": f | None,
                                    "n_resamples_defined": int,
                                    "higher": {"group", "n", "macro_f1", "classes_in_macro"} | None,
                                    "lower": {...} | None,
                                    "groups_compared": [str, ...],
                                    "note": str  # only when: < 2 groups, or different macro classes
                                    }},
         "largest": {"attribute": str, <that attribute's entry>} | None}

    ``gap`` = higher's macro-F1 - lower's (>= 0); the interval is of that same pair's difference
    and may reach below 0. ``largest`` is None when no attribute has two groups of ``min_n``.
    """
    analysis = _analyse(y_true, y_pred, groups, class_names, min_n, n_resamples, seed, confidence)
    return _gap_block(analysis, class_names, min_n, n_resamples, seed, confidence)


def subgroup_results(
    y_true,
    y_pred,
    groups: Mapping[str, Sequence[str | None]],
    class_names: Sequence[str],
    *,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    recall_classes: Sequence[str] | None = None,
) -> dict:
    """``{"subgroups": subgroup_metrics(...), "subgroup_gap": subgroup_gap(...)}`` from one
    analysis (one bootstrap): the two keys of a backbone's entry in results.json."""
    analysis = _analyse(y_true, y_pred, groups, class_names, min_n, n_resamples, seed, confidence)
    return {"subgroups": _metrics_block(analysis, class_names, recall_classes, confidence),
            "subgroup_gap": _gap_block(analysis, class_names, min_n, n_resamples, seed, confidence)}


# ------------------------------------------------------------------------------------------------
# The run's images: their attribute values, and the analysis the pipeline stores


def _in_bands(age: object, bands: Sequence[int]) -> str | None:
    """The band of ``age``, or None when it is missing, not a number or outside the bands."""
    try:
        band = age_band(age, bands)
    except InputError:
        return None
    return None if band == UNKNOWN else band


def record_values(records: Sequence, age_bands: Sequence[int] = DEFAULT_AGE_BANDS, *, root=None,
                  strict: bool = False) -> dict[str, list[str | None]]:
    """Each record's value of every attribute in SUBGROUP_ATTRIBUTES (None where its header had none).

    ``records`` are engine.data ImageRecords (``meta``: site, scanner, sex, age). ``age_band`` is
    the band of the age; with ``strict`` an age that is not a number or lies outside the bands is an
    InputError naming the file (relative to ``root``), otherwise its band is None.
    """
    from engine.data.identity import display_path

    out: dict[str, list[str | None]] = {a: [] for a in SUBGROUP_ATTRIBUTES}
    for r in records:
        meta = getattr(r, "meta", None) or {}
        for attribute in ("site", "scanner", "sex"):
            value = meta.get(attribute)
            out[attribute].append(None if value is None or str(value).strip() == "" else str(value))
        age = meta.get("age")
        if strict:
            try:
                band = age_band(age, age_bands)
            except InputError as exc:
                raise InputError(f"{display_path(r, root)}: {exc} "
                                 f"(subgroups.age_bands {list(age_bands)})") from None
            out["age_band"].append(None if band == UNKNOWN else band)
        else:
            out["age_band"].append(_in_bands(age, age_bands))
    return out


def _unavailable_gap(attribute: str) -> dict:
    return {"gap": None, "ci_low": None, "ci_high": None, "n_resamples_defined": 0, "higher": None, "lower": None,
            "groups_compared": [], "note": f"not available: no test image records its {attribute.replace('_', ' ')}"}


def audit_subgroups(
    y_true,
    y_pred,
    values: Mapping[str, Sequence[str | None]],
    class_names: Sequence[str],
    by: Sequence[str],
    *,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    age_bands: Sequence[int] | None = DEFAULT_AGE_BANDS,
) -> dict:
    """:func:`subgroup_results` over the attributes of ``by`` that at least one test image records.

    An attribute no image records (plain PNG or JPEG sets have no site, sex or age) is not split into
    one group ``"unknown"`` of every image: it is listed as unavailable, with an empty list under
    ``subgroups`` and a gap entry whose ``note`` says so, and named in ``subgroup_gap.unavailable``.
    Attributes keep the order of ``by``; the groups of ``age_band`` are listed youngest first
    (``age_bands``, the edges the values were banded with), then ``"unknown"`` and ``"other"``.
    """
    available = {a: values[a] for a in by if any(_label(v) != UNKNOWN for v in values[a])}
    unavailable = [a for a in by if a not in available]
    if available:
        out = subgroup_results(y_true, y_pred, available, class_names, min_n=min_n, n_resamples=n_resamples,
                               seed=seed, confidence=confidence)
    else:
        out = {"subgroups": {}, "subgroup_gap": _gap_block({}, class_names, min_n, n_resamples, seed, confidence)}
    gap = out["subgroup_gap"]
    out["subgroups"] = {a: out["subgroups"].get(a, []) for a in by}
    if out["subgroups"].get("age_band") and age_bands is not None:
        # age bands read youngest first, not in the string order of their labels ("<40" after "60+")
        rank = {label: i for i, label in enumerate(age_band_labels(age_bands))}
        out["subgroups"]["age_band"].sort(key=lambda e: (rank.get(e["group"], len(rank)), _order(e["group"])))
    gap["attributes"] = {a: gap["attributes"].get(a) or _unavailable_gap(a) for a in by}
    gap["unavailable"] = unavailable
    return out


__all__ = ["DEFAULT_AGE_BANDS", "DEFAULT_MIN_N", "SUBGROUP_ATTRIBUTES", "age_band", "age_band_labels",
           "age_bands_problem", "audit_subgroups", "record_values", "subgroup_gap", "subgroup_metrics",
           "subgroup_results"]
