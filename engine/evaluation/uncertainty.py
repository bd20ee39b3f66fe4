"""Seeded percentile-bootstrap confidence intervals for classification metrics.

A resample draws n test images with replacement; the CI is the (alpha/2, 1 - alpha/2) percentile of
the metric over resamples (Efron's percentile bootstrap). All index arrays come from one
``numpy.random.default_rng(seed)`` drawn in a fixed order, so a seed reproduces the interval exactly.

``bootstrap_summary`` does not call sklearn once per resample: it builds every resample's confusion
matrix with a single ``np.bincount`` and reads accuracy, recall and macro-F1 off it with the same
functions of ``engine.evaluation.metrics`` that compute the point values, so the interval is around the value
every table shows. Macro-F1 averages the classes present in the whole evaluated sample's true
labels, fixed across resamples. A resample that drew no image of one of those classes has no
defined F1 for it; rather than average fewer classes there (a different metric) or count the
class as 0 (a score the model did not earn), that resample is left out of the macro-F1 interval
and ``n_resamples_defined`` says how many remain -- as for a class's recall. With a class of
``m`` images among ``n`` a resample loses it with probability about ``exp(-m)``: rare unless the
class is tiny, and then the count shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from engine.evaluation.metrics import accuracy_from_confusion, macro_f1_from_confusion, per_class_scores, present_labels

DEFAULT_RESAMPLES = 1000
#: Fewer images than this behind an interval and it is left out (None, with a "note"): every
#: resample of one image repeats its one outcome, so the "interval" has zero width by construction.
MIN_CI_IMAGES = 2
# Upper bound on resample indices held at once (int64: 32 MB); the chunking is fixed, so the
# random stream and therefore the CI do not depend on memory.
_MAX_INDICES_PER_CHUNK = 4_000_000


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    if yt.ndim != 1 or yp.shape != yt.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {yt.shape} and {yp.shape}")
    if yt.size == 0:
        raise ValueError("no samples: cannot bootstrap an empty set")
    return yt, yp


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def _resample_indices(n: int, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield (b, n) int arrays of bootstrap indices, b rows at a time, n_resamples rows in total."""
    rows = max(1, _MAX_INDICES_PER_CHUNK // n)
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def percentile_ci(stats: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Percentile interval ignoring NaN resamples; (None, None) when every resample is NaN."""
    finite = stats[~np.isnan(stats)]
    if finite.size == 0:
        return None, None
    alpha = 1.0 - confidence
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    y_true,
    y_pred,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap CI of any metric_fn(y_true, y_pred) -> float.

    Args:
        y_true, y_pred: (n,) arrays (labels of any dtype metric_fn accepts).
        metric_fn: e.g. ``sklearn.metrics.accuracy_score``; NaN results are skipped.
        n_resamples: bootstrap resamples (>= 1000 for reported intervals).
        confidence: central coverage, 0.95 -> 2.5th and 97.5th percentiles.
        seed: int seed or Generator for ``numpy.random.default_rng``.

    Returns:
        (low, high); (None, None) if metric_fn returned NaN on every resample.
        Calls metric_fn n_resamples times; for accuracy / recall / macro-F1 use the vectorised
        ``bootstrap_summary``, which draws the identical resamples for the same seed.
    """
    yt, yp = _check_pair(y_true, y_pred)
    _check_resampling(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    stats = []
    for chunk in _resample_indices(len(yt), int(n_resamples), rng):
        for idx in chunk:
            stats.append(float(metric_fn(yt[idx], yp[idx])))
    return percentile_ci(np.asarray(stats, dtype=np.float64), confidence)


def resampled_confusion_matrices(
    y_true, y_pred, n_classes: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """(n_resamples, k, k) confusion matrices, rows = true class, cols = predicted, one per resample.

    y_true, y_pred: (n,) int class indices in 0..n_classes-1. Same resamples as ``bootstrap_ci``
    with the same seed. Each matrix equals ``sklearn.metrics.confusion_matrix(y_true[idx],
    y_pred[idx], labels=range(k))``.
    """
    yt, yp = _check_pair(y_true, y_pred)
    k = int(n_classes)
    for name, arr in (("y_true", yt), ("y_pred", yp)):
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= k:
            raise ValueError(f"{name} must hold integer class indices in 0..{k - 1}")
    codes = yt.astype(np.int64) * k + yp.astype(np.int64)
    rng = np.random.default_rng(seed)
    out = []
    for chunk in _resample_indices(len(codes), int(n_resamples), rng):
        b = chunk.shape[0]
        # Offset each resample's codes into its own block of k*k cells: one bincount for all of them.
        flat = codes[chunk] + (np.arange(b, dtype=np.int64) * k * k)[:, None]
        out.append(np.bincount(flat.ravel(), minlength=b * k * k).reshape(b, k, k))
    return np.concatenate(out, axis=0)


def metrics_from_confusion(cm: np.ndarray, macro_labels: Sequence[int]) -> dict[str, np.ndarray]:
    """Accuracy, per-class recall and macro-F1 from (..., k, k) confusion matrices.

    Returns arrays over the leading axes: "accuracy" (...,), "recall" (..., k) with NaN where a class
    has no true samples, "macro_f1" (...,) over ``macro_labels`` with NaN where one of them has no
    true sample (engine.evaluation.metrics.macro_f1_from_confusion; sklearn ``f1_score(labels=macro_labels,
    average="macro")``).
    """
    return {"accuracy": accuracy_from_confusion(cm), "recall": per_class_scores(cm)["recall"],
            "macro_f1": macro_f1_from_confusion(cm, macro_labels)}


def _interval(value, stats: np.ndarray, confidence: float) -> dict:
    lo, hi = percentile_ci(stats, confidence)
    value = None if value is None or np.isnan(value) else float(value)
    return {"value": value, "ci_low": lo, "ci_high": hi}


def bootstrap_summary(
    y_true,
    y_pred,
    class_names: Sequence[str],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | np.random.Generator = 0,
    confidence: float = 0.95,
) -> dict:
    """Point estimates and percentile-bootstrap CIs for accuracy, macro-F1 and per-class recall.

    Args:
        y_true, y_pred: (n,) int class indices into class_names.
        class_names: the k canonical class names (index order).
        n_resamples, seed, confidence: as in ``bootstrap_ci``.

    Returns (JSON-ready)::

        {"method": "percentile bootstrap", "n_resamples": int, "confidence": float, "seed": int|None,
         "n_images": int, "classes_in_macro": [cls, ...],
         "accuracy": {"value": f, "ci_low": f, "ci_high": f},
         "macro_f1": {"value": f, "ci_low": f, "ci_high": f, "n_resamples_defined": int},
         "per_class_recall": {cls: {"value": f|None, "ci_low": f|None, "ci_high": f|None,
                                    "support": int, "n_resamples_defined": int}}}

    Point values are engine.evaluation.metrics' on the full sample, so they equal
    ``classification_metrics``' values. A class absent from a resample has undefined recall there
    and is skipped; a resample without one of ``classes_in_macro`` is skipped for macro-F1
    (``n_resamples_defined`` counts the rest, see the module docstring); a class absent from the
    whole sample gets None throughout and is not in ``classes_in_macro``. An interval over fewer
    than MIN_CI_IMAGES images is None too, the point value kept; a ``note`` says why.
    """
    names = list(class_names)
    k = len(names)
    if k < 2:
        raise ValueError(f"need at least 2 class names, got {names!r}")
    yt, yp = _check_pair(y_true, y_pred)
    _check_resampling(n_resamples, confidence)
    labels = present_labels(yt, k)
    cms = resampled_confusion_matrices(yt, yp, k, n_resamples, seed)
    boot = metrics_from_confusion(cms, labels)
    # the full sample's own matrix (yt, yp were checked by resampled_confusion_matrices)
    full = np.bincount(yt.astype(np.int64) * k + yp.astype(np.int64), minlength=k * k).reshape(k, k)
    point = metrics_from_confusion(full, labels)

    support = np.bincount(yt, minlength=k)
    per_class = {}
    for c, name in enumerate(names):
        if support[c] == 0:
            per_class[name] = {"value": None, "ci_low": None, "ci_high": None, "support": 0,
                               "n_resamples_defined": 0}
            continue
        entry = _interval(point["recall"][c], boot["recall"][:, c], confidence)
        entry["support"] = int(support[c])
        entry["n_resamples_defined"] = int(np.count_nonzero(~np.isnan(boot["recall"][:, c])))
        per_class[name] = _too_few_for_ci(entry, int(support[c]))

    n = len(yt)
    macro = _interval(point["macro_f1"], boot["macro_f1"], confidence)
    macro["n_resamples_defined"] = int(np.count_nonzero(~np.isnan(boot["macro_f1"])))
    return {
        "method": "percentile bootstrap",
        "n_resamples": int(n_resamples),
        "confidence": float(confidence),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
        "n_images": int(len(yt)),
        "classes_in_macro": [names[i] for i in labels],
        "accuracy": _too_few_for_ci(_interval(point["accuracy"], boot["accuracy"], confidence), n),
        "macro_f1": _too_few_for_ci(macro, n),
        "per_class_recall": per_class,
    }


def _too_few_for_ci(entry: dict, n: int) -> dict:
    if n >= MIN_CI_IMAGES:
        return entry
    return entry | {"ci_low": None, "ci_high": None,
                    "note": f"{n} image: fewer than the {MIN_CI_IMAGES} a bootstrap interval needs"}
