"""Distribution shift between training images and leakage-free test images of the same class.

A test split can be free of copies and still come from somewhere else (another scanner, sequence or
hospital). Validation carved from training cannot see such a shift, so a reader needs it measured
beside the leakage-free figures. We use a domain classifier (Rabanser et al. 2019, "Failing
loudly"): a classifier asked to tell the two sets apart, scored by cross-validated ROC AUC; 0.5
means indistinguishable, 1.0 two separate populations. Validation images against training images
of the same class give the control value that chance alone reaches on these sizes.

The descriptors are deliberately model-free (grey-level histogram and a coarse thumbnail), so the
figure does not depend on any backbone, and cheap: arrays already decoded for training are reused.
sklearn equivalent of one figure: ``cross_val_score(make_pipeline(StandardScaler(),
LogisticRegression(C=0.1)), X, y, cv=StratifiedKFold(5, shuffle=True), scoring="roc_auc").mean()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["ClassShift", "ShiftResult", "domain_auc", "image_descriptors", "measure_shift"]

#: Fewer images than this on the smaller side and the AUC is too noisy to print.
MIN_IMAGES = 10
FOLDS = 5
#: Training images are subsampled to at most this many per compared image: the larger side
#: otherwise dominates the logistic fit and the run time, and AUC does not depend on the ratio.
MAX_RATIO = 4
HIST_BINS = 32
GRID = 8
METHOD = (f"domain classifier: logistic regression (C = 0.1) on a {HIST_BINS}-bin grey-level histogram and "
          f"a grey thumbnail of {GRID} x {GRID} block means, {FOLDS}-fold cross-validated ROC AUC")


def image_descriptors(images: np.ndarray) -> np.ndarray:
    """(n, h, w, c) uint8 images -> (n, HIST_BINS + GRID * GRID) float descriptors.

    Grey level = channel mean. Histogram fractions capture brightness and contrast; the thumbnail
    (block means over a GRID x GRID split) captures framing and field of view.
    """
    x = np.asarray(images)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"expected a non-empty (n, h, w, c) array, got shape {x.shape}")
    grey = x.mean(axis=-1, dtype=np.float32)
    n, h, w = grey.shape
    bins = np.minimum((grey * (HIST_BINS / 256.0)).astype(np.int64), HIST_BINS - 1).reshape(n, -1)
    hist = np.stack([np.bincount(row, minlength=HIST_BINS) for row in bins]).astype(np.float32) / (h * w)
    rows = np.array_split(np.arange(h), GRID)
    cols = np.array_split(np.arange(w), GRID)
    thumb = np.stack([grey[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1].mean(axis=(1, 2)) for r in rows for c in cols],
                     axis=1) / 255.0
    return np.concatenate([hist, thumb], axis=1)


def domain_auc(reference: np.ndarray, other: np.ndarray, seed: int | np.random.Generator = 0) -> float | None:
    """Cross-validated ROC AUC of telling ``other`` (n_o, d) from ``reference`` (n_r, d).

    Returns None when either side has fewer than MIN_IMAGES rows. ``reference`` is subsampled
    (seeded) to at most MAX_RATIO x n_o rows.
    """
    return _domain_auc(reference, other, seed)[0]


def _domain_auc(reference: np.ndarray, other: np.ndarray,
                seed: int | np.random.Generator = 0) -> tuple[float | None, list[str]]:
    """``domain_auc`` and the scikit-learn warnings its folds raised, as notes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from engine.sklearn_warnings import hold_back

    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if min(len(a), len(b)) < MIN_IMAGES:
        return None, []
    rng = np.random.default_rng(seed)
    if len(a) > MAX_RATIO * len(b):
        a = a[np.sort(rng.choice(len(a), MAX_RATIO * len(b), replace=False))]
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=int(rng.integers(2**31 - 1)))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    # A fold the logistic fit did not converge on still gives an AUC, but the reader should know.
    with hold_back() as caught:
        auc = float(np.mean(cross_val_score(model, x, y, cv=folds, scoring="roc_auc")))
    return auc, [m.splitlines()[0] for m in caught]


@dataclass
class ClassShift:
    n_training: int
    n_test: int  # leakage-free test images of the class
    auc: float | None  # training vs leakage-free test
    n_validation: int
    control_auc: float | None  # training vs validation: what no shift looks like
    #: Why a figure is missing ("auc not measured: ...") and what the fit warned about.
    notes: list[str] = field(default_factory=list)


@dataclass
class ShiftResult:
    per_class: dict[str, ClassShift]
    seed: int
    method: str = METHOD
    min_images: int = MIN_IMAGES

    def to_dict(self) -> dict:
        out = asdict(self)
        for entry in out["per_class"].values():
            for key in ("auc", "control_auc"):
                if entry[key] is not None:
                    entry[key] = round(entry[key], 4)
        return out


def measure_shift(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                  test_x: np.ndarray, test_y: np.ndarray, leakage_free: np.ndarray,
                  class_names: Sequence[str], seed: int = 0) -> ShiftResult:
    """Per class: training vs leakage-free test, and training vs validation as the control.

    Args:
        *_x: (n, h, w, c) uint8 images of each split (any one size).
        *_y: (n,) int class indices into class_names.
        leakage_free: (n_test,) bool, True for test images with no copy in training.
        seed: drives the subsampling and the fold split, one stream per class.
    """
    mask = np.asarray(leakage_free, dtype=bool)
    if mask.shape != (len(test_x),):
        raise ValueError(f"leakage_free must have shape ({len(test_x)},), got {mask.shape}")
    f_tr, f_va, f_te = (_descriptors(x) for x in (train_x, val_x, test_x))
    y_tr, y_va, y_te = (np.asarray(y) for y in (train_y, val_y, test_y))
    streams = np.random.SeedSequence(seed).spawn(2 * len(class_names))
    per_class = {}
    for c, name in enumerate(class_names):
        ref, novel, control = f_tr[y_tr == c], f_te[(y_te == c) & mask], f_va[y_va == c]
        auc, auc_notes = _domain_auc(ref, novel, np.random.default_rng(streams[2 * c]))
        control_auc, control_notes = _domain_auc(ref, control, np.random.default_rng(streams[2 * c + 1]))
        notes = [f"auc: {n}" for n in auc_notes] + [f"control_auc: {n}" for n in control_notes]
        for key, value, side, n_side in (("auc", auc, "leakage-free test", len(novel)),
                                         ("control_auc", control_auc, "validation", len(control))):
            if value is None:
                short = (f"{n_side} {side} images" if n_side < MIN_IMAGES else f"{len(ref)} training images")
                notes.append(f"{key} not measured: {short}, fewer than the {MIN_IMAGES} the check needs on each side")
        per_class[name] = ClassShift(n_training=len(ref), n_test=len(novel), auc=auc, n_validation=len(control),
                                     control_auc=control_auc, notes=notes)
    return ShiftResult(per_class, int(seed))


#: Images described per step: a split on disk is read this many rows at a time.
DESCRIBE_BATCH = 256


def _descriptors(images: np.ndarray) -> np.ndarray:
    """``image_descriptors`` a block of rows at a time (each row's descriptor depends on that row
    only), with no rows for an empty split (a class may lack any image there)."""
    if len(images) == 0:
        return np.empty((0, HIST_BINS + GRID * GRID), dtype=np.float32)
    return np.concatenate([image_descriptors(images[i:i + DESCRIBE_BATCH])
                           for i in range(0, len(images), DESCRIBE_BATCH)])
