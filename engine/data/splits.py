"""The seeded splits every layout carves alike: the held-out test split's size check and its grouped
(patient / file) form, and the train/validation split with its group ids.

The test split is read only by the final evaluation; validation is carved from training with a
stratified, seeded (and, when integrity groups are given, group-preserving) split.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from engine.errors import InputError

if TYPE_CHECKING:
    from engine.data.records import ImageRecord


def _inverse(fraction: float) -> float:
    """1 / fraction, bounded: a fraction as small as 5e-324 passes the manifest's "> 0" and would
    make the image counts below infinite (an OverflowError instead of a clear message)."""
    return min(1.0 / fraction, 1e12)


def min_training_images(validation_fraction: float) -> int:
    """Training-split images one class needs for a stratified validation split of this fraction:
    at least one validation image and at least one left to train on."""
    # A class's share of the validation split is count * fraction; below one image the stratified
    # split may leave the class out (or sklearn refuses: "n_splits=7 cannot be greater than the
    # number of members in each class"). The grouped split's round(1/f) folds need no more than
    # this. The epsilon keeps 1 / 0.2 at 5.
    return max(2, math.ceil(_inverse(validation_fraction) - 1e-9))


def min_class_images(test_fraction: float, validation_fraction: float | None = None) -> int:
    """Images one class needs in the imagefolder layout: one test image at least and, after the
    stratified test split takes its share, ``min_training_images`` (or one) for training."""
    need_train = min_training_images(validation_fraction) if validation_fraction else 1
    n = max(2, math.ceil(_inverse(test_fraction) - 1e-9))
    while n - math.ceil(n * test_fraction - 1e-9) < need_train:
        n += 1
    return n


def _fraction_hint(key: str, count: int, minimum_of: Callable[[float], int]) -> str:
    """'; or set KEY to at least F' with the smallest two-decimal F that ``count`` images satisfy."""
    for hundredths in range(1, 90):
        if minimum_of(hundredths / 100) <= count:
            return f" or set {key} to at least {hundredths / 100:g}"
    return ""


def check_test_split_sizes(root: Path, counts: dict[str, int], test_fraction: float,
                            validation_fraction: float | None) -> None:
    need = min_class_images(test_fraction, validation_fraction)
    keys = "data.test_fraction = " + f"{test_fraction:g}"
    if validation_fraction:
        keys += f" and data.validation_fraction = {validation_fraction:g}"
    for cls, n in counts.items():
        if n < need:
            what = "one test image, one validation image and the rest for training" if validation_fraction \
                else "one test image and one training image"
            raise InputError(f"data root {str(root)!r}: class {cls!r} has {n} images, fewer than the {need} that "
                             f"{keys} need per class ({what}); add images to that class")


def grouped_test_split(items, labels, keys, test_fraction: float, seed: int):
    """The imagefolder test split with each patient (and each file's frames) on one side: the first
    fold of a seeded StratifiedGroupKFold with round(1 / test_fraction) folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes: dict[object, int] = {}
    groups = np.array([codes.setdefault(k, len(codes)) for k in keys])
    n_splits = max(2, round(_inverse(test_fraction)))
    try:
        tr_idx, te_idx = next(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                              .split(np.zeros(len(items)), labels, groups))
    except ValueError as exc:
        raise InputError(f"{len(items)} images of {len(codes)} patients or files: cannot hold out "
                         f"data.test_fraction = {test_fraction:g} by patient: {exc}") from None
    del keys, codes  # the raw ids go no further
    return [items[i] for i in tr_idx], [items[i] for i in te_idx]


def patient_groups(records: Sequence[ImageRecord],
                   groups: dict[tuple[Path, int], int] | None) -> dict[tuple[Path, int], int] | None:
    """Group ids by record ``key`` for ``split_validation`` that keep a near-duplicate group
    (``groups``, by key), a patient's images and the frames of one file (a volume's slices, which
    carry no patient id in NIfTI) on one side: groups that share a patient or a file are merged
    (union-find). Without patients and multi-frame files, ``groups`` itself (so splits of plain
    images do not change)."""
    if not any(r.patient or r.frame_name for r in records):
        return groups
    parent: dict[object, object] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in records:
        node = ("path", r.path)  # one node per file: its frames are merged by construction
        find(node)
        if groups and r.key in groups:
            parent[find(node)] = find(("dup", groups[r.key]))
        if r.patient:
            parent[find(node)] = find(("patient", r.patient))
    ids: dict[object, int] = {}
    return {r.key: ids.setdefault(find(("path", r.path)), len(ids)) for r in records}


def split_validation(train: Sequence[ImageRecord], fraction: float, seed: int,
                     groups: dict[tuple[Path, int], int] | None = None,
                     classes: Sequence[str] | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Stratified, seeded train/validation split; images of one group never straddle it.

    With ``groups`` (group id per record ``key``: near-duplicates, a patient's images and a file's
    frames, see ``patient_groups``) StratifiedGroupKFold keeps each group on one side, so no image
    trains while its copy, or another slice of its patient or volume, validates.

    Raises InputError naming the class when a class of ``classes`` (default: the labels present)
    has fewer than ``min_training_images(fraction)`` images, or the split leaves it without a
    training or a validation image (possible when its images form few duplicate groups).
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = [r.label for r in train]
    count = Counter(labels)
    need = min_training_images(fraction)
    for cls in (classes if classes is not None else sorted(count)):
        if count.get(cls, 0) < need:
            hint = _fraction_hint("data.validation_fraction", count.get(cls, 0), min_training_images)
            raise InputError(f"class {cls!r} has {count.get(cls, 0)} training images, fewer than the {need} that "
                             f"data.validation_fraction = {fraction:g} needs (one validation image, the rest for "
                             f"training); add {need - count.get(cls, 0)} or more images to that class{hint}")
    idx = np.arange(len(train))
    try:
        if groups:
            n_splits = max(2, round(_inverse(fraction)))
            g = np.array([groups.get(r.key, -1 - i) for i, r in enumerate(train)])
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            tr_idx, va_idx = next(splitter.split(idx, labels, g))
        else:
            tr_idx, va_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as exc:
        # Too few training images per class for this fraction; sklearn's message gives the counts.
        raise InputError(f"{len(train)} training images: cannot hold out data.validation_fraction = {fraction} "
                         f"of every class: {exc}") from None
    tr = [replace(train[i], split="train") for i in sorted(tr_idx)]
    va = [replace(train[i], split="val") for i in sorted(va_idx)]
    n_tr, n_va = Counter(r.label for r in tr), Counter(r.label for r in va)
    for cls in sorted(count):
        if not n_tr[cls] or not n_va[cls]:
            why = ""
            if groups:
                n_groups = len({g[i] for i in idx if labels[i] == cls})
                if any(r.patient or r.frame_name for r in train):
                    why = (f": its {count[cls]} images form {n_groups} group(s) (a patient's images or one "
                           "file's frames, merged with their near-duplicates), and a patient or a volume is "
                           "never split between training and validation")
                else:
                    why = (f": its {count[cls]} images form {n_groups} near-duplicate group(s), and "
                           "integrity.group_validation_split keeps each group on one side")
            raise InputError(f"class {cls!r}: the validation split (data.validation_fraction = {fraction:g}) "
                             f"leaves it {n_tr[cls]} training and {n_va[cls]} validation images{why}; "
                             "add images to that class")
    return tr, va


__all__ = ["check_test_split_sizes", "grouped_test_split", "min_class_images", "min_training_images",
           "patient_groups", "split_validation"]
