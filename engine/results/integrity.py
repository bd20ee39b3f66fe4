"""Typed ``data`` and ``integrity`` blocks of results.json (engine.data, engine.integrity)."""

from __future__ import annotations

from typing import Any

from engine.results.record import Record, items, keyed, optional, record


@record
class SkippedImage(Record):
    path: str | None = None
    reason: str | None = None


@record
class DataInfo(Record):
    root: str | None = None
    layout: str | None = None
    class_names: list[str] = items()
    fingerprint: str | None = None
    #: {split: {class: images}}
    counts: dict[str, dict[str, int]] = items(dict)
    validation_fraction: float | None = None
    validation_grouped_by_duplicates: bool | None = None
    validation_grouped_by_patient: bool | None = None
    skipped: list[SkippedImage] = items()
    warnings: list[str] = items()
    #: tumour outlines found beside the images (engine.data.annotations): {"test": {"annotated",
    #: "kinds"}, "validation": {...}, "problems": [{"path", "line", "reason"}]}
    annotations: dict | None = None

    def split_counts(self, split: str) -> dict[str, int]:
        """``counts[split]`` (class -> images); {} when the split is not counted."""
        found = self.counts.get(split) if isinstance(self.counts, dict) else None
        return found if isinstance(found, dict) else {}


@record
class FileRef(Record):
    """One file of a label conflict: its path (relative to the data root), split and class."""

    path: str | None = None
    split: str | None = None
    cls: str | None = keyed("class")


@record
class DuplicateGroup(Record):
    files: list[str] = items()
    classes: list[str] = items()


@record
class NeighbouringSlices(Record):
    """Near pairs within a split that are neighbouring slices of one patient (not duplicates)."""

    pairs: int | None = None
    images: int | None = None
    patients: int | None = None


@record
class WithinSplit(Record):
    exact_groups: list[DuplicateGroup] = items()
    near_groups: list[DuplicateGroup] = items()
    n_images_in_exact_groups: int | None = None
    n_redundant_exact_copies: int | None = None
    n_images_in_near_groups: int | None = None
    neighbouring_slices: NeighbouringSlices | None = None

    @property
    def neighbouring_pairs(self) -> int | None:
        return self.neighbouring_slices.pairs if isinstance(self.neighbouring_slices, NeighbouringSlices) else None


@record
class CrossSplitPair(Record):
    files: list[str] = items()
    splits: list[str] = items()
    classes: list[str] = items()
    distance: int | None = None
    exact: bool | None = None
    byte_identical: bool | None = None


@record
class LabelConflict(Record):
    files: list[FileRef] = items()
    classes: list[str] = items()
    kind: str | None = None
    pairs: list[dict[str, Any]] = items()
    #: older audits named the files ``paths`` (plain strings); optional, so a conflict a stage
    #: builds never writes it
    paths: list[str] | None = optional()

    @property
    def named_files(self) -> list:
        return self.files or self.paths or []


@record
class ExamplePair(Record):
    test: str | None = None
    train: str | None = None
    test_class: str | None = None
    train_class: str | None = None
    distance: int | None = None
    exact: bool | None = None
    byte_identical: bool | None = None
    #: thumbnails drawn for the report, relative to the run folder
    files: dict[str, str] = items(dict)


@record
class ShiftClass(Record):
    n_training: int | None = None
    n_test: int | None = None
    auc: float | None = None
    n_validation: int | None = None
    control_auc: float | None = None
    notes: list[str] = items()


@record
class Shift(Record):
    """engine.integrity.shift.ShiftResult as results.json holds it."""

    per_class: dict[str, ShiftClass] = items(dict)
    seed: int | None = None
    method: str | None = None
    min_images: int | None = None


@record
class Integrity(Record):
    """engine.integrity.audit.IntegrityReport as results.json holds it."""

    hash_algorithm: str | None = None
    exact_hashes: list[str] = items()
    hash_size: int | None = None
    hash_bits: int | None = None
    near_threshold: int | None = None
    n_files: int | None = None
    n_readable: int | None = None
    listed_counts: dict[str, dict[str, int]] = items(dict)
    counts: dict[str, dict[str, int]] = items(dict)
    unreadable: list[SkippedImage] = items()
    #: per split: n, width/height/file_bytes {min, median, max}, sizes, modes, formats
    image_stats: dict[str, dict[str, Any]] = items(dict)
    within_split: dict[str, WithinSplit] = items(dict)
    cross_split_pairs: list[CrossSplitPair] = items()
    cross_split_exact: int | None = None
    cross_split_exact_bytes: int | None = None
    #: an int; older runs wrote the list of near pairs
    cross_split_near: int | list | None = None
    n_test: int | None = None
    cross_split_near_fraction: float | None = None
    leakage_warning: bool | None = None
    leaked_test_files: list[str] = items()
    patients: dict[str, int] = items(dict)
    cross_split_patients: int | None = None
    cross_split_patient_ids: list[str] = items()
    patient_leaked_test_files: list[str] = items()
    cross_split_same_patient_pairs: int | None = None
    label_conflicts: list[LabelConflict] = items()
    leakage_free_test_counts: dict[str, int] | None = None
    example_pairs: list[ExamplePair] = items()
    timings_s: dict[str, float | None] = items(dict)
    cache: dict[str, int] = items(dict)
    shift: Shift | None = optional()
