"""Classification metrics, all computed by scikit-learn.

``classification_metrics`` is the plain function; ``ClassificationMetrics`` the typed result whose
``to_dict`` is the ``test`` / ``leakage_free`` block of results.json.

sklearn equivalents: accuracy_score, balanced_accuracy_score, precision_recall_fscore_support,
f1_score(average="macro"|"weighted"), confusion_matrix, roc_auc_score(multi_class="ovr").
"""

from __future__ import annotations

from dataclasses import dataclass
import warnings
from typing import Sequence

import numpy as np


def _r(x: float | None, nd: int = 6) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), nd)


@dataclass
class ClassificationMetrics:
    class_names: list[str]
    n_images: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    weighted_f1: float
    precision: np.ndarray  # (k,)
    recall: np.ndarray  # (k,)
    f1: np.ndarray  # (k,)
    support: np.ndarray  # (k,)
    confusion: np.ndarray  # (k, k), rows true, cols predicted
    roc_auc_per_class: list[float | None]
    roc_auc_macro: float | None

    def to_dict(self) -> dict:
        k = self.class_names
        per_class = {c: {"precision": _r(self.precision[i]), "recall": _r(self.recall[i]), "f1": _r(self.f1[i]),
                         "support": int(self.support[i])} for i, c in enumerate(k)}
        w = self.support / max(1, self.support.sum())
        return {
            "n_images": self.n_images,
            "accuracy": _r(self.accuracy),
            "balanced_accuracy": _r(self.balanced_accuracy),
            "macro_f1": _r(self.macro_f1),
            "weighted_f1": _r(self.weighted_f1),
            "classes_in_macro": [c for c, n in zip(k, self.support) if n > 0],
            "per_class": per_class,
            "macro_avg": {"precision": _r(self.precision.mean()), "recall": _r(self.recall.mean()),
                          "f1": _r(self.f1.mean())},
            "weighted_avg": {"precision": _r((self.precision * w).sum()), "recall": _r((self.recall * w).sum()),
                             "f1": _r((self.f1 * w).sum())},
            "confusion_matrix": self.confusion.astype(int).tolist(),
            "roc_auc": {"macro": _r(self.roc_auc_macro),
                        "per_class": {c: _r(v) for c, v in zip(k, self.roc_auc_per_class)}},
        }


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> ClassificationMetrics:
    """Metrics of predictions ``argmax(probs)`` against ``y_true``.

    y_true: (n,) int class indices into ``class_names``; probs: (n, k) class probabilities.
    Classes absent from ``y_true`` get recall 0 and ROC-AUC None (undefined), never NaN, and are
    left out of macro-F1 (``classes_in_macro`` lists those averaged).
    """
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_recall_fscore_support, roc_auc_score)

    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"probs must have shape ({len(y_true)}, {k}), got {probs.shape}")
    labels = list(range(k))
    y_pred = probs.argmax(axis=1)
    # A subset without some class (the leakage-free Sartaj test has no no_tumor image) is expected:
    # balanced accuracy over the classes present is what we want, without sklearn's warning.
    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    auc = []
    for i in labels:
        positives = y_true == i
        auc.append(float(roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(y_true) else None)
    defined = [a for a in auc if a is not None]
    present = np.unique(y_true)
    return ClassificationMetrics(
        class_names=list(class_names),
        n_images=int(len(y_true)),
        accuracy=float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)) if len(present) else float("nan"),
        # macro over the classes present in y_true: a subset with no no_tumor images (the
        # leakage-free Sartaj test) must not average in a meaningless F1 of 0 for that class
        macro_f1=float(f1_score(y_true, y_pred, labels=[i for i in labels if s[i] > 0] or labels,
                                average="macro", zero_division=0)),
        weighted_f1=float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        precision=p, recall=r, f1=f, support=s,
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
        roc_auc_per_class=auc,
        roc_auc_macro=float(np.mean(defined)) if defined else None,
    )
