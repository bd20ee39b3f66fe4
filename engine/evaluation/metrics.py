"""Classification metrics: the one definition of every metric auditrun reports.

Every stage that scores predictions (validation for model selection, the test split, its
leakage-free subset, external data), the bootstrap (``engine.evaluation.uncertainty``) and therefore the
report use the functions here; docs/metrics.md states the definitions for readers.

Definitions (each names its scikit-learn equivalent; tests/test_metrics.py checks them against it):

* per class, from the confusion matrix (rows true, columns predicted):
  precision ``tp / (tp + fp)``, undefined when the class is never predicted; recall
  ``tp / (tp + fn)``, undefined when the subset has no image of the class; F1
  ``2 tp / (2 tp + fp + fn)``, undefined when the subset has no image of the class.
  Undefined is NaN here and null in results.json. sklearn:
  ``precision_recall_fscore_support(labels=range(k), zero_division=np.nan)``, except F1 of a class
  with no true image that was predicted: sklearn gives 0 there, which only counts false positives
  (those already show as that class's precision of 0), so it is undefined here like its recall.
* macro averages (macro-F1, balanced accuracy = macro recall, macro precision) are over the
  classes present in the evaluated subset's true labels -- ``classes_in_macro`` in results.json.
  sklearn: ``f1_score(y_true, y_pred, labels=present, average="macro")``. A class that is
  predicted but has no true image in the subset is not averaged in; the wrong predictions into it
  still lower the recall and F1 of the classes those images belong to, and its precision of 0 is
  reported per class. Macro precision skips a present class that was never predicted (sklearn's
  ``zero_division=np.nan`` average).
* weighted averages weight the same classes by their number of true images.
* accuracy is the share of images on the diagonal; ROC-AUC (one-vs-rest) is defined for a class
  with both positives and negatives in the subset, and its macro is the mean of the defined ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def rounded(x: float | None, nd: int = 6) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), nd)


def present_labels(y_true, n_classes: int) -> list[int]:
    """Class indices with at least one image in ``y_true``: the classes every macro average covers."""
    support = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=n_classes)
    return [i for i in range(n_classes) if support[i] > 0]


def per_class_scores(cm) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from (..., k, k) confusion matrices.

    Works on one matrix or a stack of bootstrap matrices. NaN marks an undefined value (see the
    module docstring). sklearn: ``precision_recall_fscore_support(labels=range(k),
    zero_division=np.nan)`` with F1 NaN where support is 0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        # support + predicted = 2tp + fp + fn, positive wherever support is
        f1 = np.where(support > 0, 2 * tp / (support + predicted), np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def accuracy_from_confusion(cm) -> np.ndarray | float:
    """Share of images on the diagonal of (..., k, k) confusion matrices; sklearn ``accuracy_score``."""
    cm = np.asarray(cm, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))
    return out if np.ndim(out) else float(out)


def macro_f1_from_confusion(cm, labels: Sequence[int]) -> np.ndarray | float:
    """Macro-F1 over ``labels`` from (..., k, k) confusion matrices.

    sklearn: ``f1_score(y_true, y_pred, labels=labels, average="macro")``. NaN where one of
    ``labels`` has no true image in that matrix (a bootstrap resample that lost a class): averaging
    fewer classes there would change what the interval measures, see engine.evaluation.uncertainty.
    """
    f1 = per_class_scores(cm)["f1"]
    labels = list(labels)
    if not labels:
        return np.full(f1.shape[:-1], np.nan) if f1.ndim > 1 else float("nan")
    out = f1[..., labels].mean(axis=-1)
    return out if np.ndim(out) else float(out)


def macro_f1_score(y_true, y_pred, n_classes: int) -> tuple[float, list[int]]:
    """(macro-F1, the class indices averaged) for one sample: the classes present in ``y_true``.

    sklearn: ``f1_score(y_true, y_pred, labels=present_labels(y_true, k), average="macro")``.
    """
    from sklearn.metrics import confusion_matrix

    labels = present_labels(y_true, n_classes)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    return float(macro_f1_from_confusion(cm, labels)), labels


def _mean_defined(values: np.ndarray, labels: Sequence[int], weights: np.ndarray | None = None) -> float:
    """Mean (or support-weighted mean) of ``values[labels]`` ignoring NaN, as sklearn's
    ``zero_division=np.nan`` averages do; NaN when nothing is defined."""
    v = values[list(labels)]
    w = np.ones_like(v) if weights is None else weights[list(labels)].astype(np.float64)
    ok = ~np.isnan(v)
    if not ok.any() or w[ok].sum() == 0:
        return float("nan")
    return float((v[ok] * w[ok]).sum() / w[ok].sum())


@dataclass
class ClassificationMetrics:
    class_names: list[str]
    n_images: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    weighted_f1: float
    precision: np.ndarray  # (k,), NaN where the class was never predicted
    recall: np.ndarray  # (k,), NaN where the class has no true image
    f1: np.ndarray  # (k,), NaN where the class has no true image
    support: np.ndarray  # (k,)
    confusion: np.ndarray  # (k, k), rows true, cols predicted
    roc_auc_per_class: list[float | None]
    roc_auc_macro: float | None
    macro_labels: list[int]  # the classes every macro average covers

    def to_dict(self) -> dict:
        k = self.class_names
        per_class = {c: {"precision": rounded(self.precision[i]), "recall": rounded(self.recall[i]),
                         "f1": rounded(self.f1[i]), "support": int(self.support[i])} for i, c in enumerate(k)}
        labels = self.macro_labels
        return {
            "n_images": self.n_images,
            "accuracy": rounded(self.accuracy),
            "balanced_accuracy": rounded(self.balanced_accuracy),
            "macro_f1": rounded(self.macro_f1),
            "weighted_f1": rounded(self.weighted_f1),
            "classes_in_macro": [k[i] for i in labels],
            "per_class": per_class,
            "macro_avg": {"precision": rounded(_mean_defined(self.precision, labels)),
                          "recall": rounded(self.balanced_accuracy), "f1": rounded(self.macro_f1)},
            "weighted_avg": {"precision": rounded(_mean_defined(self.precision, labels, self.support)),
                             "recall": rounded(_mean_defined(self.recall, labels, self.support)),
                             "f1": rounded(self.weighted_f1)},
            "confusion_matrix": self.confusion.astype(int).tolist(),
            "roc_auc": {"macro": rounded(self.roc_auc_macro),
                        "per_class": {c: rounded(v) for c, v in zip(k, self.roc_auc_per_class)}},
        }


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> ClassificationMetrics:
    """Metrics of predictions ``argmax(probs)`` against ``y_true``, by the definitions above.

    y_true: (n,) int class indices into ``class_names``; probs: (n, k) class probabilities.
    A class absent from ``y_true`` (the leakage-free Sartaj test has no no_tumor image) has
    undefined recall, F1 and ROC-AUC and is left out of every macro average.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"probs must have shape ({len(y_true)}, {k}), got {probs.shape}")
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    scores = per_class_scores(cm)
    labels = present_labels(y_true, k)
    auc = []
    for i in range(k):
        positives = y_true == i
        auc.append(float(roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(y_true) else None)
    defined = [a for a in auc if a is not None]
    n = int(len(y_true))
    return ClassificationMetrics(
        class_names=list(class_names),
        n_images=n,
        accuracy=accuracy_from_confusion(cm),
        # = sklearn balanced_accuracy_score, which also averages the recall of the classes in y_true
        balanced_accuracy=_mean_defined(scores["recall"], labels),
        macro_f1=float(macro_f1_from_confusion(cm, labels)),
        weighted_f1=_mean_defined(scores["f1"], labels, scores["support"]),
        precision=scores["precision"], recall=scores["recall"], f1=scores["f1"],
        support=scores["support"].astype(np.int64),
        confusion=cm,
        roc_auc_per_class=auc,
        roc_auc_macro=float(np.mean(defined)) if defined else None,
        macro_labels=labels,
    )
