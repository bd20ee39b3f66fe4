"""Data-integrity audit (issue 4): unreadable files, size/mode statistics, exact and near
duplicates within and across splits, label conflicts, and the leakage-free test subset.

Pure functions over ``ImageRecord``-like objects; fingerprints and the Hamming search live in
``engine.integrity.hashing``. The machine values are kept in ``IntegrityReport``; ``to_dict`` is the
``integrity`` block of results.json and ``summary_text`` the human display.

Definitions (see docs/integrity.md):
  exact  - two files are byte-identical or decode to identical pixels.
  near   - perceptual hashes (imagehash.phash) within ``near_threshold`` bits; exact pairs included.
  leaked - a test image with an exact or near twin in the train split (whatever its label).
  label conflict - a connected group of exact/near images (any splits) carrying more than one class.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.data.discovery import too_small_reason
from engine.data.formats import reader_kind
from engine.data.identity import frame_label
from engine.errors import InputError
from engine.integrity.hashing import (
    PHASH_ALGORITHM,
    FingerprintCache,
    ImageFingerprint,
    UnreadableImage,
    fingerprint_files,
    hamming_pairs,
    reader_reason,
)

TRAIN_SPLIT = "train"
TEST_SPLIT = "test"
#: Above this share of leaked test images the report prints a plain-language warning (issue 4).
LEAKAGE_WARN_FRACTION = 0.05
MAX_HASH_SIZE = 64
#: Most patient pseudonyms listed in ``cross_split_patient_ids`` (the count is always complete).
MAX_PATIENT_IDS = 100


#: A record's identity: (path, frame). One file can hold many records (DICOM frames, NIfTI slices).
Key = tuple[Path, int]


class ImageRecordLike(Protocol):
    """What the audit reads from ``engine.data.discovery.ImageRecord``. ``frame``, ``frame_name``,
    ``unreadable`` and ``patient`` are read when present (``getattr``): frame 0 of a one-image file
    otherwise."""

    @property
    def path(self) -> Path: ...

    @property
    def split(self) -> str: ...

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class IntegrityConfig:
    """The manifest's ``[integrity]`` section.

    ``hash_size = 16`` (a 256-bit perceptual hash) and ``near_threshold = 12`` bits were chosen on
    the Sartaj MRI set, where brain slices share so much low-frequency structure that the
    64-bit hash (``hash_size = 8``) cannot tell a copy from a different patient: with 8, two
    *different* images under different classes already sit 2 bits apart, and a dozen at 4 bits.
    With 16:
      * 600 resized (0.4-0.9x) and JPEG re-encoded (q 60-95) copies of Sartaj images landed at
        <= 6 bits from their originals (99th percentile 4) - 12 leaves a 2x margin;
      * no pair of non-identical images with different labels comes closer than 37 bits, and
        adjacent slices of one MRI series start around 14-20 bits - 12 stays below both, so a
        "near duplicate" means a copy, not a look-alike.
    Not caught: copies cropped by more than ~1-2 % (phash is not crop-invariant; on Sartaj such
    copies sit at 28-64 bits, overlapping unrelated images). Raise the threshold only after
    looking at the pairs it adds.
    """

    enabled: bool = True
    near_threshold: int = 12
    hash_size: int = 16
    fail_on_unreadable: bool = False
    #: Images narrower or shorter than this (pixels) are listed as unusable and skipped like
    #: unreadable ones: a 1x1 or 8x8 file upscaled to the input size is a flat or blocky field,
    #: not a scan, and training on it teaches nothing. 32 is the smallest backbone input size.
    min_image_size: int = 32

    def __post_init__(self) -> None:
        if (isinstance(self.min_image_size, bool) or not isinstance(self.min_image_size, int)
                or self.min_image_size < 1):
            raise InputError(f"integrity.min_image_size must be an integer >= 1 (pixels), got {self.min_image_size!r}")
        # phash resizes every image to (4 * hash_size) px square first: 64 (256 px, 4,096 bits) is far
        # past the 16 this audit was tuned with, and 10,000 runs out of memory on the first image.
        if (isinstance(self.hash_size, bool) or not isinstance(self.hash_size, int)
                or not 2 <= self.hash_size <= MAX_HASH_SIZE):
            raise InputError(f"integrity.hash_size must be an integer in [2, {MAX_HASH_SIZE}], got {self.hash_size!r}")
        bits = self.hash_size * self.hash_size
        if (
            isinstance(self.near_threshold, bool)
            or not isinstance(self.near_threshold, int)
            or not 0 <= self.near_threshold < bits // 2
        ):
            raise InputError(
                f"integrity.near_threshold must be an integer in [0, {bits // 2}) for a "
                f"{bits}-bit hash (hash_size {self.hash_size}), got {self.near_threshold!r}"
            )

    @property
    def hash_bits(self) -> int:
        return self.hash_size * self.hash_size


# ------------------------------------------------------------------------------ result types


@dataclass(frozen=True)
class FileRef:
    path: Path
    split: str
    label: str
    frame: int = 0  # DICOM frame / NIfTI slice of a multi-image file

    @property
    def key(self) -> Key:
        return (self.path, self.frame)


@dataclass(frozen=True)
class UnreadableFile:
    path: Path
    split: str
    label: str
    reason: str
    frame: int = 0

    @property
    def key(self) -> Key:
        return (self.path, self.frame)


def record_key(r: ImageRecordLike) -> Key:
    return (r.path, int(getattr(r, "frame", 0)))


def _order(f: FileRef) -> tuple[str, int]:
    return (str(f.path), f.frame)


@dataclass(frozen=True)
class MatchPair:
    """Two files within the near threshold. Across splits, ``a`` is the held-out (non-train) one."""

    a: FileRef
    b: FileRef
    distance: int
    exact: bool  # byte- or pixel-identical
    byte_identical: bool


@dataclass(frozen=True)
class DuplicateGroup:
    """Connected files of one split. ``exact`` groups are pixel-identical throughout; near groups
    hold at least two different contents, linked by near pairs (up to ``max_distance`` bits)."""

    split: str
    files: tuple[FileRef, ...]
    exact: bool
    max_distance: int

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({f.label for f in self.files}))


@dataclass(frozen=True)
class LabelConflict:
    """Files linked by exact/near pairs (in any splits) that carry more than one class.
    ``pairs`` are the direct links between files of different classes."""

    files: tuple[FileRef, ...]
    pairs: tuple[MatchPair, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({f.label for f in self.files}))

    @property
    def kind(self) -> str:
        return "exact" if any(p.exact for p in self.pairs) else "near"


@dataclass(frozen=True)
class SplitImageStats:
    n: int
    widths: tuple[int, ...]
    heights: tuple[int, ...]
    file_bytes: tuple[int, ...]
    modes: Mapping[str, int]
    formats: Mapping[str, int]

    def to_dict(self, top_sizes: int = 5) -> dict:
        def summary(values: tuple[int, ...]) -> dict:
            if not values:
                return {"min": None, "median": None, "max": None}
            arr = np.asarray(values)
            return {"min": int(arr.min()), "median": float(np.median(arr)), "max": int(arr.max())}

        sizes = Counter(zip(self.widths, self.heights))
        return {
            "n": self.n,
            "width": summary(self.widths),
            "height": summary(self.heights),
            "file_bytes": summary(self.file_bytes),
            "n_distinct_sizes": len(sizes),
            "most_common_sizes": [
                {"width": w, "height": h, "count": c}
                for (w, h), c in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:top_sizes]
            ],
            "modes": dict(sorted(self.modes.items())),
            "formats": dict(sorted(self.formats.items())),
        }


@dataclass(frozen=True)
class IntegrityReport:
    config: IntegrityConfig
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    listed_counts: Mapping[str, Mapping[str, int]]
    counts: Mapping[str, Mapping[str, int]]  # readable images
    unreadable: tuple[UnreadableFile, ...]
    image_stats: Mapping[str, SplitImageStats]
    within_split_groups: tuple[DuplicateGroup, ...]
    cross_split_pairs: tuple[MatchPair, ...]
    label_conflicts: tuple[LabelConflict, ...]
    # The ``*_paths`` sets and ``group_ids`` hold record keys (path, frame), see ``record_key``.
    exact_leaked_test_paths: frozenset[Key]
    byte_leaked_test_paths: frozenset[Key]
    leaked_test_paths: frozenset[Key]
    leakage_free_test_counts: Mapping[str, int]
    group_ids: Mapping[Key, int]  # within-split duplicate component per readable record
    # Patients (pseudonyms, from records' ``patient``) per split among readable files, the
    # pseudonyms found in more than one split, and the test files whose patient has training images.
    patients: Mapping[str, int] = field(default_factory=dict)
    cross_split_patient_ids: tuple[str, ...] = ()
    patient_leaked_test_paths: frozenset[Key] = frozenset()
    #: "slice" / "frame" per key of a multi-image file: how ``to_dict`` names its frames.
    frame_names: Mapping[Key, str] = field(default_factory=dict)
    # The neutral name of each frame whose record carries one (``ImageRecord.ref``: the data holds
    # patient ids, and file names may identify them), with its frame; every other file is shown
    # relative to the root.
    display: Mapping[Key, str] = field(default_factory=dict)
    # Near (not exact) pairs of two images of one patient (or two frames of one volume): neighbouring
    # slices of a series, similar by design and not copies. Per split {"pairs", "images", "patients"};
    # left out of the near groups. Across splits they are not counted as near-duplicate leakage: the
    # patient is (cross-split patients).
    neighbouring_slices: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    cross_split_same_patient_pairs: int = 0
    timings_s: Mapping[str, float] = field(default_factory=dict)
    cache_stats: Mapping[str, int] = field(default_factory=dict)

    @property
    def unreadable_paths(self) -> set[Key]:
        """The unreadable records' keys (path, frame)."""
        return {u.key for u in self.unreadable}

    @property
    def n_test(self) -> int:
        return sum(self.counts.get(TEST_SPLIT, {}).values())

    @property
    def cross_split_exact(self) -> int:
        return len(self.exact_leaked_test_paths)

    @property
    def cross_split_near(self) -> int:
        return len(self.leaked_test_paths)

    @property
    def excluded_test_paths(self) -> frozenset[Key]:
        """Test files left out of the leakage-free subset: a twin in training, or a patient with
        training images."""
        return self.leaked_test_paths | self.patient_leaked_test_paths

    @property
    def leakage_fraction(self) -> float | None:
        """Share of readable test images with an exact or near twin in training."""
        return self.cross_split_near / self.n_test if self.n_test else None

    def example_pairs(self, n: int = 4) -> list[MatchPair]:
        """A few test->train pairs worth showing side by side: a byte-identical copy, a
        pixel-identical re-save, then the near copies farthest apart (the threshold's edge, where a
        reader can judge whether "near" still means "copy"). Deterministic; at most ``n``."""
        best: dict[Key, MatchPair] = {}
        for p in self.cross_split_pairs:
            if p.a.split == TEST_SPLIT and p.b.split == TRAIN_SPLIT:
                cur = best.get(p.a.key)
                if cur is None or (not p.exact, p.distance) < (not cur.exact, cur.distance):
                    best[p.a.key] = p
        ordered = [best[k] for k in sorted(best, key=lambda k: (str(k[0]), k[1]))]
        picks = [next((p for p in ordered if p.byte_identical), None),
                 next((p for p in ordered if p.exact and not p.byte_identical), None)]
        near = sorted((p for p in ordered if not p.exact), key=lambda p: (-p.distance, _order(p.a)))
        chosen = [p for p in picks if p is not None]
        return (chosen + near)[:n]

    def shown(self, key: Key, root: Path | None = None) -> str:
        """How artefacts name the frame ``key`` (path, frame): its neutral reference, else its path
        relative to ``root``; with the frame of a multi-image file."""
        return self.display.get(key) or frame_label(_relative(key[0], root), key[1], self.frame_names.get(key))

    def to_dict(self, root: Path | None = None) -> dict:
        """The results.json ``integrity`` block; paths relative to ``root`` when given, with the frame
        of a multi-image file (``a/b.nii.gz [slice 12]``)."""

        def rel(item: FileRef | UnreadableFile | Key) -> str:
            return self.shown(item if isinstance(item, tuple) else (item.path, item.frame), root)

        return {
            **self._settings_dict(),
            **self._inventory_dict(rel),
            "within_split": {split: self._within_split_dict(split, rel) for split in self.splits},
            **self._leakage_dict(rel),
            "label_conflicts": [
                {
                    "files": [_ref_dict(f, rel) for f in c.files],
                    "classes": list(c.classes),
                    "kind": c.kind,
                    "pairs": [_pair_dict(p, rel) for p in c.pairs],
                }
                for c in self.label_conflicts
            ],
            "leakage_free_test_counts": dict(self.leakage_free_test_counts),
            # Paths only: the report stage writes the thumbnails and adds "files".
            "example_pairs": [
                {"test": rel(p.a), "train": rel(p.b), "test_class": p.a.label,
                 "train_class": p.b.label, "distance": p.distance, "exact": p.exact,
                 "byte_identical": p.byte_identical}
                for p in self.example_pairs()
            ],
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "cache": dict(self.cache_stats),
        }

    def _settings_dict(self) -> dict:
        return {
            "hash_algorithm": f"{PHASH_ALGORITHM} (hash_size={self.config.hash_size}, {self.config.hash_bits} bits)",
            "exact_hashes": ["sha256 of file bytes", "sha256 of decoded pixels"],
            "hash_size": self.config.hash_size,
            "hash_bits": self.config.hash_bits,
            "near_threshold": self.config.near_threshold,
        }

    def _inventory_dict(self, rel: Callable[..., str]) -> dict:
        return {
            "n_files": sum(sum(c.values()) for c in self.listed_counts.values()),
            "n_readable": sum(sum(c.values()) for c in self.counts.values()),
            "listed_counts": _plain(self.listed_counts),
            "counts": _plain(self.counts),
            "unreadable": [
                {"path": rel(u), "split": u.split, "class": u.label, "reason": u.reason}
                for u in self.unreadable
            ],
            "image_stats": {s: self.image_stats[s].to_dict() for s in self.splits},
        }

    def _within_split_dict(self, split: str, rel: Callable[..., str]) -> dict:
        groups = [g for g in self.within_split_groups if g.split == split]
        exact = [g for g in groups if g.exact]
        near = [g for g in groups if not g.exact]
        return {
            "exact_groups": [
                {"files": [rel(f) for f in g.files], "classes": list(g.classes)} for g in exact
            ],
            "near_groups": [
                {"files": [rel(f) for f in g.files], "classes": list(g.classes),
                 "max_distance": g.max_distance}
                for g in near
            ],
            "n_images_in_exact_groups": sum(len(g.files) for g in exact),
            "n_redundant_exact_copies": sum(len(g.files) - 1 for g in exact),
            "n_images_in_near_groups": sum(len(g.files) for g in near),
            "neighbouring_slices": dict(self.neighbouring_slices.get(split) or _NO_NEIGHBOURS),
        }

    def _leakage_dict(self, rel: Callable[..., str]) -> dict:
        fraction = self.leakage_fraction
        return {
            "cross_split_pairs": [_pair_dict(p, rel) for p in self.cross_split_pairs],
            "cross_split_exact": self.cross_split_exact,
            "cross_split_exact_bytes": len(self.byte_leaked_test_paths),
            "cross_split_near": self.cross_split_near,
            "n_test": self.n_test,
            "cross_split_near_fraction": None if fraction is None else round(fraction, 6),
            "leakage_warning": bool(fraction is not None and fraction > LEAKAGE_WARN_FRACTION),
            "leaked_test_files": sorted(rel(p) for p in self.leaked_test_paths),
            "patients": dict(self.patients),
            "cross_split_patients": len(self.cross_split_patient_ids),
            # pseudonyms only (engine.data.identity), never a raw patient id; at most MAX_PATIENT_IDS
            "cross_split_patient_ids": list(self.cross_split_patient_ids[:MAX_PATIENT_IDS]),
            "patient_leaked_test_files": sorted(rel(p) for p in self.patient_leaked_test_paths),
            "cross_split_same_patient_pairs": self.cross_split_same_patient_pairs,
        }


def _relative(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` (POSIX separators) when it lies below it, else as given."""
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def _ref_dict(f: FileRef, rel: Callable[..., str]) -> dict:
    return {"path": rel(f), "split": f.split, "class": f.label}


def _pair_dict(p: MatchPair, rel: Callable[..., str]) -> dict:
    return {
        "files": [rel(p.a), rel(p.b)],
        "splits": [p.a.split, p.b.split],
        "classes": [p.a.label, p.b.label],
        "distance": p.distance,
        "exact": p.exact,
        "byte_identical": p.byte_identical,
    }


def _plain(nested: Mapping[str, Mapping[str, int]]) -> dict:
    return {k: dict(v) for k, v in nested.items()}


# ---------------------------------------------------------------------------------- the audit


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label per node of the undirected graph with edges (i, j)."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def _split_order(splits: Iterable[str]) -> tuple[str, ...]:
    rank = {TRAIN_SPLIT: 0, "val": 1, "validation": 1, TEST_SPLIT: 2}
    return tuple(sorted(set(splits), key=lambda s: (rank.get(s, 3), s)))


def audit(
    records: Sequence[ImageRecordLike],
    config: IntegrityConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
    class_names: Sequence[str] | None = None,
    workers: int | None = None,
    windowing=None,
) -> IntegrityReport:
    """Audit ``records`` (every split at once) and return the typed report.

    Unreadable files are listed with a reason and left out of every other figure; with
    ``config.fail_on_unreadable`` they raise ``InputError`` naming them instead. ``progress`` is
    called as ``progress(done, total)`` while files are fingerprinted. ``cache_dir`` keeps
    fingerprints keyed by file sha256 between runs. ``class_names`` fixes the class order of the
    count tables (default: sorted labels). ``windowing`` (``engine.data.readers.Windowing``, the
    manifest's ``data.windowing``) decodes DICOM frames and NIfTI slices; a record is one frame of
    its file (``record_key``). ``config.enabled`` is the caller's switch; it is not consulted here.
    """
    t0 = time.perf_counter()
    _refuse_repeated(records)
    classes = _class_order(records, class_names)
    splits = _split_order([r.split for r in records] + [TRAIN_SPLIT, TEST_SPLIT])
    results, cache = _fingerprints(records, config.hash_size, progress, cache_dir, workers, windowing)
    t_hash = time.perf_counter()
    results = _too_small_as_unreadable(results, config.min_image_size)
    unreadable = _unreadable_files(records, results, config.fail_on_unreadable)
    good = [(r, res) for r, res in zip(records, results) if isinstance(res, ImageFingerprint)]
    refs = [FileRef(r.path, r.split, r.label, record_key(r)[1]) for r, _ in good]
    fps = [fp for _, fp in good]
    listed_counts, counts = _count_tables(records, refs, splits, classes)
    image_stats = {s: _split_stats([fp for f, fp in zip(refs, fps) if f.split == s]) for s in splits}
    table = _pair_table(refs, fps, config.near_threshold, {s: k for k, s in enumerate(splits)})
    t_search = time.perf_counter()
    neighbours = _same_patient_near(table, records)
    groups, near_group_of = _within_split_groups(table, neighbours)
    cross_pairs = _cross_split_pairs(table, neighbours)
    leaked, exact_leaked, byte_leaked = _leaked_test_paths(cross_pairs)
    conflicts = _label_conflicts(table)
    patients, cross_patients, patient_leaked = _patients(records, refs, splits)
    t_end = time.perf_counter()
    return IntegrityReport(
        config=config,
        class_names=classes,
        splits=splits,
        listed_counts=listed_counts,
        counts=counts,
        unreadable=unreadable,
        image_stats=image_stats,
        within_split_groups=tuple(groups),
        cross_split_pairs=tuple(cross_pairs),
        label_conflicts=tuple(conflicts),
        exact_leaked_test_paths=frozenset(exact_leaked),
        byte_leaked_test_paths=frozenset(byte_leaked),
        leaked_test_paths=frozenset(leaked),
        leakage_free_test_counts=_leakage_free_counts(refs, leaked | patient_leaked, classes),
        group_ids=_stable_group_ids(refs, near_group_of),
        patients=patients,
        cross_split_patient_ids=cross_patients,
        patient_leaked_test_paths=frozenset(patient_leaked),
        frame_names={record_key(r): name for r in records if (name := getattr(r, "frame_name", None))},
        display={record_key(r): frame_label(ref, r.frame, getattr(r, "frame_name", None))
                 for r in records if (ref := getattr(r, "ref", None))},
        neighbouring_slices=_neighbour_counts(table, neighbours, records, splits),
        cross_split_same_patient_pairs=int((neighbours & ~table.same_split).sum()),
        timings_s={"fingerprint": t_hash - t0, "search": t_search - t_hash, "total": t_end - t0},
        cache_stats={"hits": cache.hits, "misses": cache.misses},
    )


# ------------------------------------------------------------------------- the audit's steps


def _refuse_repeated(records: Sequence[ImageRecordLike]) -> None:
    seen: set[Key] = set()
    for r in records:
        if record_key(r) in seen:
            raise ValueError(f"record listed twice: {r.path} (frame {record_key(r)[1]})")
        seen.add(record_key(r))


def _class_order(records: Sequence[ImageRecordLike], class_names: Sequence[str] | None) -> tuple[str, ...]:
    """``class_names`` (default: the sorted labels), then any other label seen, sorted."""
    labels_seen = {r.label for r in records}
    classes = tuple(class_names) if class_names is not None else tuple(sorted(labels_seen))
    return classes + tuple(sorted(labels_seen - set(classes)))


def _fingerprints(
    records: Sequence[ImageRecordLike],
    hash_size: int,
    progress: Callable[[int, int], None] | None,
    cache_dir: Path | None,
    workers: int | None,
    windowing=None,
) -> tuple[list[ImageFingerprint | UnreadableImage], FingerprintCache]:
    """One fingerprint (or the reason there is none) per record, in order; the cache is saved. A
    record whose frames discovery could not list (``unreadable``) keeps that reason undecoded."""
    cache = FingerprintCache(cache_dir, hash_size)
    todo = [k for k, r in enumerate(records) if not getattr(r, "unreadable", None)]
    found = fingerprint_files(
        [record_key(records[k]) if reader_kind(records[k].path) else records[k].path for k in todo], hash_size,
        cache=cache, progress=progress, workers=workers, windowing=windowing,
    )
    results: list[ImageFingerprint | UnreadableImage] = [
        UnreadableImage(reader_reason(str(getattr(r, "unreadable", None)), r.path)) for r in records]
    for k, res in zip(todo, found):
        results[k] = res
    cache.save()
    return results, cache



def _too_small_as_unreadable(
    results: Sequence[ImageFingerprint | UnreadableImage], min_size: int
) -> list[ImageFingerprint | UnreadableImage]:
    """Too small to use counts as unreadable from here on: listed with its reason, left out of
    every other figure, and skipped by the pipeline."""
    return [
        UnreadableImage(reason)
        if isinstance(res, ImageFingerprint)
        and (reason := too_small_reason(res.width, res.height, min_size))
        else res
        for res in results
    ]


def _unreadable_files(
    records: Sequence[ImageRecordLike],
    results: Sequence[ImageFingerprint | UnreadableImage],
    fail_on_unreadable: bool,
) -> tuple[UnreadableFile, ...]:
    """The unreadable records with their reasons; InputError naming them if any and ``fail_on_unreadable``."""
    unreadable = tuple(
        UnreadableFile(r.path, r.split, r.label, res.reason, record_key(r)[1])
        for r, res in zip(records, results)
        if isinstance(res, UnreadableImage)
    )
    if unreadable and fail_on_unreadable:
        names = {record_key(r): getattr(r, "frame_name", None) for r in records}
        shown = "; ".join(f"{frame_label(str(u.path), u.frame, names[u.key])}: {u.reason}" for u in unreadable[:20])
        more = f" (and {len(unreadable) - 20} more)" if len(unreadable) > 20 else ""
        raise InputError(
            f"{len(unreadable)} unreadable image file(s) and integrity.fail_on_unreadable = true: "
            f"{shown}{more}"
        )
    return unreadable


def _count_tables(
    records: Sequence[ImageRecordLike], refs: Sequence[FileRef], splits: Sequence[str], classes: Sequence[str]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(listed, readable) image counts: split -> class -> count, every class of every split."""
    listed = {s: Counter(r.label for r in records if r.split == s) for s in splits}
    readable = {s: Counter(f.label for f in refs if f.split == s) for s in splits}
    listed_counts = {s: {c: listed[s].get(c, 0) for c in classes} for s in splits}
    counts = {s: {c: readable[s].get(c, 0) for c in classes} for s in splits}
    return listed_counts, counts


@dataclass(frozen=True, eq=False)
class _PairTable:
    """Every pair of readable files within the near threshold (any splits), one row per pair:
    indexes ``i``, ``j`` into ``refs``, Hamming ``distance``, and whether the two are byte- and
    pixel-identical and in one split. ``rank`` orders the splits (train first)."""

    refs: list[FileRef]
    rank: Mapping[str, int]
    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray
    byte_eq: np.ndarray
    exact_eq: np.ndarray
    same_split: np.ndarray
    pixel_sha: np.ndarray  # per file
    labels: np.ndarray  # per file

    @property
    def n(self) -> int:
        return len(self.refs)

    def pair(self, k: int) -> MatchPair:
        a, b = int(self.i[k]), int(self.j[k])
        # Across splits the held-out file comes first; within a split, keep path order.
        if self.rank[self.refs[a].split] < self.rank[self.refs[b].split]:
            a, b = b, a
        return MatchPair(self.refs[a], self.refs[b], int(self.distance[k]), bool(self.exact_eq[k]),
                         bool(self.byte_eq[k]))


def _pair_table(refs: list[FileRef], fps: list[ImageFingerprint], near_threshold: int,
                rank: Mapping[str, int]) -> _PairTable:
    """Every readable file against every other, one vectorised pass."""
    n = len(refs)
    if n:
        words = np.stack([fp.phash_words() for fp in fps])
        pi, pj, pd = hamming_pairs(words, max_distance=near_threshold)
    else:
        pi = pj = np.empty(0, dtype=np.int64)
        pd = np.empty(0, dtype=np.uint16)
    file_sha = np.array([fp.file_sha256 for fp in fps], dtype=object)
    pix_sha = np.array([fp.pixel_sha256 for fp in fps], dtype=object)
    split_arr = np.array([f.split for f in refs], dtype=object)
    label_arr = np.array([f.label for f in refs], dtype=object)
    byte_eq = file_sha[pi] == file_sha[pj] if n else np.zeros(0, bool)
    # Byte-identical implies pixel-identical for a deterministic decoder; OR them anyway.
    exact_eq = (pix_sha[pi] == pix_sha[pj]) | byte_eq if n else np.zeros(0, bool)
    same_split = split_arr[pi] == split_arr[pj] if n else np.zeros(0, bool)
    return _PairTable(refs, rank, pi, pj, pd, byte_eq, exact_eq, same_split, pix_sha, label_arr)


def _members(component_of: np.ndarray) -> dict[int, list[int]]:
    """Component id -> its file indexes, components in order of their first file."""
    members: dict[int, list[int]] = defaultdict(list)
    for idx, g in enumerate(component_of):
        members[int(g)].append(idx)
    return members


_NO_NEIGHBOURS = {"pairs": 0, "images": 0, "patients": 0}


def _patient_array(table: _PairTable, records: Sequence[ImageRecordLike]) -> np.ndarray:
    """Per file of the table: its patient's pseudonym; the frames of a multi-image file without one
    (a NIfTI volume) are one patient too, the file; None for a lone image without a patient id."""
    patient_of = {r.path: p for r in records if (p := getattr(r, "patient", None))}
    volumes = {r.path for r in records if getattr(r, "frame_name", None)}
    return np.array([patient_of.get(f.path) or (f"volume:{f.path}" if f.path in volumes else None)
                     for f in table.refs], dtype=object)


def _same_patient_near(table: _PairTable, records: Sequence[ImageRecordLike]) -> np.ndarray:
    """Per pair: both images belong to one patient (pseudonym, not None) and are near, not exact.
    Neighbouring slices of a series look alike by design; a pixel-identical pair stays a duplicate."""
    if not table.n or not len(table.i):
        return np.zeros(len(table.i), dtype=bool)
    patients = _patient_array(table, records)
    a, b = patients[table.i], patients[table.j]
    return (a == b) & (a != None) & ~table.exact_eq  # noqa: E711 - elementwise on an object array


def _neighbour_counts(table: _PairTable, neighbours: np.ndarray, records: Sequence[ImageRecordLike],
                      splits: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per split: near pairs of one patient's images, the images in them and their patients."""
    patients = _patient_array(table, records) if table.n else np.empty(0, dtype=object)
    out = {}
    for split in splits:
        ks = np.nonzero(neighbours & table.same_split)[0]
        ks = [k for k in ks if table.refs[int(table.i[k])].split == split]
        images = {int(x) for k in ks for x in (table.i[k], table.j[k])}
        out[split] = {"pairs": len(ks), "images": len(images), "patients": len({patients[x] for x in images})}
    return out


def _within_split_groups(table: _PairTable, neighbours: np.ndarray | None = None
                         ) -> tuple[list[DuplicateGroup], np.ndarray]:
    """The exact and near duplicate groups of each split, and every file's near-group component
    (also the validation grouping). ``neighbours`` (per pair) marks pairs that link no group:
    neighbouring slices of one patient (the validation split keeps a patient together anyway)."""
    refs = table.refs
    within = np.nonzero(table.same_split & (~neighbours if neighbours is not None else True))[0]
    near_ids = _components(table.n, table.i[within], table.j[within])
    exact_within = within[table.exact_eq[within]]
    exact_ids = _components(table.n, table.i[exact_within], table.j[exact_within])
    max_dist = np.zeros(table.n, dtype=np.int64)
    np.maximum.at(max_dist, near_ids[table.i[within]], table.distance[within].astype(np.int64))
    groups: list[DuplicateGroup] = []
    for members in _members(exact_ids).values():
        if len(members) > 1:
            groups.append(DuplicateGroup(refs[members[0]].split, _sorted_refs(refs, members), True, 0))
    for g, members in _members(near_ids).items():
        distinct_contents = {table.pixel_sha[m] for m in members}
        if len(members) > 1 and len(distinct_contents) > 1:
            groups.append(DuplicateGroup(refs[members[0]].split, _sorted_refs(refs, members), False,
                                         int(max_dist[g])))
    groups.sort(key=lambda g: (table.rank[g.split], not g.exact, _order(g.files[0])))
    return groups, near_ids


def _cross_split_pairs(table: _PairTable, neighbours: np.ndarray | None = None) -> list[MatchPair]:
    """Pairs whose files lie in different splits, held-out split first, then by path and distance;
    without the ``neighbours`` pairs (slices of one patient: patient leakage, counted as such)."""
    rank = table.rank
    keep = ~table.same_split & (~neighbours if neighbours is not None else True)
    return sorted(
        (table.pair(int(k)) for k in np.nonzero(keep)[0]),
        key=lambda p: (rank[p.a.split], rank[p.b.split], _order(p.a), p.distance, _order(p.b)),
    )


def _leaked_test_paths(cross_pairs: Iterable[MatchPair]) -> tuple[set[Key], set[Key], set[Key]]:
    """Test records (keys) with a twin in train: (any twin, an exact twin, a byte-identical twin)."""
    leaked: set[Key] = set()
    exact_leaked: set[Key] = set()
    byte_leaked: set[Key] = set()
    for p in cross_pairs:
        if p.a.split == TEST_SPLIT and p.b.split == TRAIN_SPLIT:
            leaked.add(p.a.key)
            if p.exact:
                exact_leaked.add(p.a.key)
            if p.byte_identical:
                byte_leaked.add(p.a.key)
    return leaked, exact_leaked, byte_leaked


def _patients(records: Sequence[ImageRecordLike], refs: Sequence[FileRef],
              splits: Sequence[str]) -> tuple[dict[str, int], tuple[str, ...], set[Key]]:
    """({split: patients among readable files}, sorted pseudonyms in more than one split, test
    records (keys) whose patient has a readable training file). Empty when no record carries a
    patient."""
    patient_of = {record_key(r): p for r in records if (p := getattr(r, "patient", None))}
    if not patient_of:
        return {}, (), set()
    by_split: dict[str, set[str]] = defaultdict(set)
    for f in refs:
        if f.key in patient_of:
            by_split[f.split].add(patient_of[f.key])
    seen: Counter = Counter(p for members in by_split.values() for p in members)
    cross = tuple(sorted(p for p, n in seen.items() if n > 1))
    in_train = by_split.get(TRAIN_SPLIT, set())
    leaked = {f.key for f in refs if f.split == TEST_SPLIT and patient_of.get(f.key) in in_train}
    return {s: len(by_split.get(s, ())) for s in splits}, cross, leaked


def _leakage_free_counts(refs: Sequence[FileRef], leaked: set[Key], classes: Sequence[str]) -> dict[str, int]:
    test_left = Counter(f.label for f in refs if f.split == TEST_SPLIT and f.key not in leaked)
    return {c: test_left.get(c, 0) for c in classes}


def _label_conflicts(table: _PairTable) -> list[LabelConflict]:
    """Components over all pairs (any split) carrying more than one class."""
    all_ids = _components(table.n, table.i, table.j)
    if table.n:
        diff_label = np.nonzero(table.labels[table.i] != table.labels[table.j])[0]
    else:
        diff_label = np.empty(0, dtype=np.int64)
    conflict_pairs: dict[int, list[MatchPair]] = defaultdict(list)
    for k in diff_label:
        conflict_pairs[int(all_ids[table.i[k]])].append(table.pair(int(k)))
    conflicts = []
    for g, plist in conflict_pairs.items():
        members = np.nonzero(all_ids == g)[0].tolist()
        plist.sort(key=lambda p: (_order(p.a), _order(p.b)))
        conflicts.append(LabelConflict(_sorted_refs(table.refs, members), tuple(plist)))
    conflicts.sort(key=lambda c: _order(c.files[0]))
    return conflicts


def _stable_group_ids(refs: Sequence[FileRef], near_group_of: np.ndarray) -> dict[Key, int]:
    """Group ids by record key, unique across splits, in record order (stable for StratifiedGroupKFold)."""
    group_of = {refs[idx].key: (refs[idx].split, int(g)) for idx, g in enumerate(near_group_of)}
    renumber: dict[tuple[str, int], int] = {}
    return {path: renumber.setdefault(key, len(renumber)) for path, key in group_of.items()}


def _sorted_refs(refs: list[FileRef], members: Iterable[int]) -> tuple[FileRef, ...]:
    return tuple(sorted((refs[m] for m in members), key=lambda f: (f.split, *_order(f))))


def _split_stats(fps: list[ImageFingerprint]) -> SplitImageStats:
    return SplitImageStats(
        n=len(fps),
        widths=tuple(fp.width for fp in fps),
        heights=tuple(fp.height for fp in fps),
        file_bytes=tuple(fp.file_bytes for fp in fps),
        modes=dict(Counter(fp.mode for fp in fps)),
        formats=dict(Counter(fp.format for fp in fps)),
    )


def duplicate_groups(
    records: Sequence[ImageRecordLike], report: IntegrityReport, split: str = TRAIN_SPLIT
) -> dict[Key, int]:
    """Group id per record key of ``split`` such that exact/near duplicates share an id (for
    ``sklearn.model_selection.StratifiedGroupKFold(groups=...)`` when carving validation from
    training). Ids are 0..k-1 in record order; unreadable records get singleton ids."""
    out: dict[Key, int] = {}
    renumber: dict[object, int] = {}
    unreadable = report.unreadable_paths
    for r in records:
        if r.split != split:
            continue
        key: object = report.group_ids.get(record_key(r))
        if key is None:
            if record_key(r) not in unreadable:
                raise ValueError(f"{r.path} (frame {record_key(r)[1]}) was not part of the integrity audit")
            key = ("unreadable", record_key(r))
        out[record_key(r)] = renumber.setdefault(key, len(renumber))
    return out


def summary_text(report: IntegrityReport) -> str:
    """A few lines for a terminal (``auditrun check-data`` stderr)."""
    cfg = report.config
    n_files = sum(sum(c.values()) for c in report.listed_counts.values())
    per_split = ", ".join(
        f"{s} {sum(report.listed_counts[s].values())}" for s in report.splits if sum(report.listed_counts[s].values())
    )
    lines = [f"integrity: {n_files} files ({per_split}); {len(report.unreadable)} unreadable"]
    for u in report.unreadable[:5]:
        lines.append(f"  unreadable: {report.shown(u.key)} ({u.reason})")
    if len(report.unreadable) > 5:
        lines.append(f"  ... and {len(report.unreadable) - 5} more unreadable")
    n_test = report.n_test
    if n_test:
        frac = report.leakage_fraction or 0.0
        lines.append(
            f"test leakage: {report.cross_split_exact} of {n_test} test images are exact copies of "
            f"training images ({len(report.byte_leaked_test_paths)} byte-identical); "
            f"{report.cross_split_near} ({frac:.1%}) have an exact or near twin in training "
            f"(phash {cfg.hash_bits}-bit, distance <= {cfg.near_threshold})"
        )
        if report.patients:
            lines.append("patients: " + ", ".join(f"{s} {n}" for s, n in report.patients.items())
                         + f"; {len(report.cross_split_patient_ids)} in more than one split, "
                         f"{len(report.patient_leaked_test_paths)} test images of patients with training images")
        free = ", ".join(f"{c} {n}" for c, n in report.leakage_free_test_counts.items())
        lines.append(f"leakage-free test subset: {n_test - len(report.excluded_test_paths)} images ({free})")
        if frac > LEAKAGE_WARN_FRACTION:
            lines.append(
                f"WARNING: {frac:.0%} of the test split has a copy in training; headline test "
                "metrics partly measure memorisation - read the leakage-free figures."
            )
    for s in report.splits:
        groups = [g for g in report.within_split_groups if g.split == s]
        slices = report.neighbouring_slices.get(s) or _NO_NEIGHBOURS
        if groups or slices["pairs"]:
            ex = [g for g in groups if g.exact]
            nr = [g for g in groups if not g.exact]
            lines.append(
                f"within {s}: {len(ex)} exact-duplicate groups ({sum(len(g.files) - 1 for g in ex)} redundant "
                f"copies), {len(nr)} near-duplicate groups"
                + (" (of different patients)" if report.patients else "")
                + (f"; {_count(slices['pairs'], 'near pair')} of neighbouring slices of one patient "
                   f"({_count(slices['images'], 'image')}, {_count(slices['patients'], 'patient')}), not duplicates"
                   if slices["pairs"] else "")
            )
    if report.cross_split_same_patient_pairs:
        lines.append(f"across splits: {_count(report.cross_split_same_patient_pairs, 'near pair')} of slices of one patient: "
                     "counted as patient leakage, not as near-duplicate twins")
    n_conf_files = sum(len(c.files) for c in report.label_conflicts)
    lines.append(f"label conflicts: {len(report.label_conflicts)} groups ({n_conf_files} files)")
    for c in report.label_conflicts[:5]:
        names = ", ".join(f"{f.split}/{f.label}/"
                          f"{report.display.get(f.key) or frame_label(f.path.name, f.frame, report.frame_names.get(f.key))}"
                          for f in c.files[:4])
        more = f", +{len(c.files) - 4}" if len(c.files) > 4 else ""
        lines.append(f"  {c.kind}: {' vs '.join(c.classes)}: {names}{more}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    """``1 image``, ``3 images``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
