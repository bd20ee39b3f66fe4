"""The data-integrity section: duplicate and leakage counts, the leakage warning, example
duplicate pairs (thumbnails stored in the run directory), label conflicts, unreadable files and the
distribution-shift check between leakage-free test images and training images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

# One threshold for the audit's own warning and the report's: both say "more than 5 %".
from engine.integrity.audit import LEAKAGE_WARN_FRACTION
from engine.nightly.history import leakage_counts
from engine.report.values import ImageRef, count_of, listed_items, percent_text, unreadable_text
from engine.results import (ExamplePair, FileRef, Integrity, LabelConflict, RunResults, Shift, ShiftClass,
                            WithinSplit)
from engine.results import number as _num



@dataclass(frozen=True)
class DuplicatePair:
    distance: int | None
    train: ImageRef | None
    test: ImageRef | None
    train_path: str
    test_path: str
    how: str


@dataclass(frozen=True)
class IntegrityView:
    rows: list[tuple[str, str]]
    leaked: int | None
    n_test: int | None
    fraction: float | None
    warning: str | None
    leakage_free_counts: list[tuple[str, int | None, int | None]]  # class, test images, leakage-free left
    conflicts: list[str]
    conflicts_more: int
    unreadable: list[str]
    unreadable_more: int
    pairs: list[DuplicatePair]
    shift: ShiftView | None = None
    #: "N patients have images in both training and test; ..." when the data carry patient ids
    patient_sentence: str | None = None
    patients_leaked: int | None = None


@dataclass(frozen=True)
class ShiftRow:
    cls: str
    n_test: int | None
    auc: str
    n_validation: int | None
    control_auc: str


@dataclass(frozen=True)
class ShiftView:
    """engine.integrity.shift's domain-classifier AUCs: leakage-free test vs training, validation as control."""
    rows: list[ShiftRow]
    sentence: str
    method: str


def _file_text(entry: Any) -> str:
    if isinstance(entry, FileRef):
        return str(entry.path) if entry.path is not None else str(entry.to_json())
    return str(entry)


def _conflict_text(group: Any) -> str:
    if isinstance(group, LabelConflict):
        files = group.named_files
        parts = []
        if group.classes:
            parts.append("classes " + ", ".join(map(str, group.classes)))
        if files:
            parts.append("files " + ", ".join(_file_text(f) for f in files))
        return "; ".join(parts) or str(group.to_json())
    if isinstance(group, (list, tuple)):
        return ", ".join(map(str, group))
    return str(group)


def leakage_warning(leaked: int | None, n_test: int | None) -> str | None:
    """The plain-language warning when more than 5 % of the test split has a twin in training."""
    if not leaked or not n_test:
        return None
    fraction = leaked / n_test
    if fraction <= LEAKAGE_WARN_FRACTION:
        return None
    return (f"Warning: {leaked} of {n_test} test images ({percent_text(fraction)}) are copies or near-copies of "
            f"training images. Test metrics on this split partly measure memory, not generalisation; read the "
            f"leakage-free figures beside them.")


def _duplicate_pair(pair: ExamplePair) -> DuplicatePair:
    """One example test/train twin, its thumbnails' alt text saying how close the copy is."""
    files = pair.files or {}
    distance = pair.distance
    if pair.byte_identical:
        how = "byte-identical copy"
    elif pair.exact:
        how = "pixel-identical copy"
    elif distance is not None:
        how = f"near duplicate at perceptual-hash distance {distance}"
    else:
        how = "near duplicate"
    train_path = str(pair.train) if pair.train is not None else "?"
    test_path = str(pair.test) if pair.test is not None else "?"
    train_file, test_file = files.get("train"), files.get("test")
    return DuplicatePair(
        distance=count_of(distance),
        train=ImageRef(train_file, f"Training image {train_path}, the twin of test image {test_path} "
                                   f"({how}).", "training") if train_file else None,
        test=ImageRef(test_file, f"Test image {test_path}, a copy of training image {train_path} "
                                 f"({how}).", "test") if test_file else None,
        train_path=train_path, test_path=test_path, how=how,
    )


#: Pseudonyms of cross-split patients the report lists (results.json keeps up to 100).
PATIENT_IDS_SHOWN = 10


def _patient_rows(integrity: Integrity) -> list[tuple[str, str]]:
    """Patients per split and those in more than one split (by pseudonym), when the data had
    patient ids (DICOM); nothing otherwise."""
    patients = integrity.patients
    if not isinstance(patients, dict) or not patients:
        return []
    rows = [(f"Patients in {split}", str(count_of(n))) for split, n in patients.items()]
    rows.append(("Patients with images in more than one split (test images of training patients are "
                 "left out of the leakage-free subset)", str(count_of(integrity.cross_split_patients))))
    if integrity.cross_split_same_patient_pairs is not None:
        rows.append(("Near pairs across splits that are slices of one patient (counted as patient leakage, "
                     "not as near duplicates)", str(count_of(integrity.cross_split_same_patient_pairs))))
    ids = [str(i) for i in integrity.cross_split_patient_ids or []]
    if ids:
        more = len(ids) - PATIENT_IDS_SHOWN
        rows.append(("Their pseudonyms (keyed hashes, not patient ids)",
                     ", ".join(ids[:PATIENT_IDS_SHOWN]) + (f" and {more} more" if more > 0 else "")))
    return rows


def patient_leakage_sentence(integrity: Integrity) -> str | None:
    """How many patients have images in both training and test, and how many test images that
    keeps out of the leakage-free figures; None without patient ids (plain images)."""
    if not isinstance(integrity.patients, dict) or not integrity.patients:
        return None
    n = count_of(integrity.cross_split_patients)
    if n is None:
        return None
    if n == 0:
        return "No patient has images in both training and test."
    m = len(integrity.patient_leaked_test_files or [])
    return (f"{n} patient{' has' if n == 1 else 's have'} images in both training and test; "
            f"{'its' if n == 1 else 'their'} {m} test image{'' if m == 1 else 's'} "
            f"{'is' if m == 1 else 'are'} left out of the leakage-free figures.")


def _within_rows(integrity: Integrity) -> list[tuple[str, Any]]:
    with_patients = bool(integrity.patients)
    rows: list[tuple[str, Any]] = []
    for split, within in (integrity.within_split or {}).items():
        if not isinstance(within, WithinSplit):
            continue
        rows.append((f"Exact-duplicate groups within {split}", within.exact_groups))
        if not with_patients:
            rows.append((f"Near-duplicate groups within {split}", within.near_groups))
            continue
        # one patient's neighbouring slices look alike by design: near in hash, not copies
        rows.append((f"Near-duplicate groups within {split} (images of different patients)", within.near_groups))
        rows.append((f"Near pairs within {split} that are neighbouring slices of one patient (not duplicates)",
                     within.neighbouring_pairs))
    return rows


def integrity_view(results: RunResults, class_names: Sequence[str]) -> IntegrityView | None:
    integrity = results.integrity
    if not isinstance(integrity, Integrity):
        return None
    counts = leakage_counts(results)
    leaked, n_test = counts if counts else (count_of(integrity.cross_split_near), None)
    fraction = leaked / n_test if leaked is not None and n_test else None
    rows = [
        ("Test images byte- or pixel-identical to a training image", integrity.cross_split_exact),
        ("Test images with a near duplicate in training (exact copies included)", integrity.cross_split_near),
        ("Share of the test split with a twin in training", None),
        ("Label conflicts (the same image under two classes)", integrity.label_conflicts),
        ("Unreadable or non-image files (skipped)", integrity.unreadable),
    ]
    for key, value in sorted((integrity.counts or {}).items()):
        if not isinstance(value, (dict, list)):  # engine.integrity.audit nests counts per split: shown in provenance
            rows.append((str(key).replace("_", " ").capitalize(), value))
    rows += _within_rows(integrity)
    if integrity.near_threshold is not None:
        rows.append(("Near-duplicate threshold (perceptual-hash distance at most)", integrity.near_threshold))
    shown = []
    for label, value in rows:
        if label.startswith("Share"):
            shown.append((label, percent_text(fraction) if fraction is not None else "n/a"))
        elif value is not None:
            shown.append((label, str(count_of(value))))
    shown += _patient_rows(integrity)
    test_counts = results.data.split_counts("test") if results.data is not None else {}
    lf_counts = integrity.leakage_free_test_counts or {}
    lf_rows = [(c, count_of(test_counts.get(c)), count_of(lf_counts.get(c))) for c in class_names] if lf_counts else []
    conflicts, conflicts_more = listed_items(integrity.label_conflicts, _conflict_text)
    unreadable, unreadable_more = listed_items(integrity.unreadable, unreadable_text)
    pairs = [_duplicate_pair(pair) for pair in integrity.example_pairs or [] if isinstance(pair, ExamplePair)]
    return IntegrityView(shown, leaked, n_test, fraction, leakage_warning(leaked, n_test), lf_rows,
                         conflicts, conflicts_more, unreadable, unreadable_more, pairs,
                         _shift_view(integrity.shift, class_names), patient_leakage_sentence(integrity),
                         count_of(integrity.cross_split_patients) if integrity.patients else None)


#: Domain AUC from which the report calls a class's leakage-free test images clearly unlike its
#: training images (0.8: the conventional threshold of "good" discrimination).
SHIFTED_AUC = 0.8


def _shift_view(block: Shift | None, class_names: Sequence[str]) -> ShiftView | None:
    if not isinstance(block, Shift) or not isinstance(block.per_class, dict):
        return None
    min_images = count_of(block.min_images)
    too_few = f"n/a (fewer than {min_images} images)" if min_images else "n/a"
    rows, measured, controls = [], [], []
    for cls in class_names:
        entry = block.per_class.get(cls)
        if not isinstance(entry, ShiftClass):
            continue
        auc, control = _num(entry.auc), _num(entry.control_auc)
        n_test = count_of(entry.n_test)
        rows.append(ShiftRow(cls, n_test, f"{auc:.2f}" if auc is not None else too_few,
                             count_of(entry.n_validation), f"{control:.2f}" if control is not None else too_few))
        if auc is not None:
            measured.append((cls, auc, n_test))
        if control is not None:
            controls.append(control)
    if not rows:
        return None
    control_text = (f"validation images, drawn from the training folder, score {min(controls):.2f}–{max(controls):.2f}"
                    if controls else "no validation control could be measured")
    shifted = [(c, a, n) for c, a, n in measured if a >= SHIFTED_AUC]
    if not measured:
        sentence = (f"No class has {min_images or 'enough'} or more leakage-free test images, so the distance between "
                    "test and training images was not measured.")
    elif shifted:
        listed = ", ".join(f"{a:.2f} for {c} ({n} images)" for c, a, n in shifted)
        sentence = (f"The leakage-free test images are not like the training images of their class: a classifier on "
                    f"simple image descriptors tells them apart with ROC AUC {listed}, where 0.5 would mean "
                    f"indistinguishable; {control_text}. Validation cannot see this shift, so validation figures do "
                    "not predict the leakage-free ones; data from another source is the check that can.")
    else:
        top = max(measured, key=lambda t: t[1])
        sentence = (f"A classifier on simple image descriptors tells leakage-free test images from training images of "
                    f"their class with ROC AUC at most {top[1]:.2f} ({top[0]}), where 0.5 would mean "
                    f"indistinguishable; {control_text}. No large shift in brightness, contrast or framing was found.")
    return ShiftView(rows, sentence, str(block.method or "domain classifier"))
