"""Image discovery, class aliasing, seeded splits and a decode-once image cache.

The test split is read only by the final evaluation; validation is carved from training with a
stratified, seeded (and, when integrity groups are given, group-preserving) split.

The record (``records``), file types and the decoding guards (``formats``) and the splits
(``splits``) live in modules of their own, below both this module and ``labels_csv``; their names
are importable from here as before.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import numpy as np

# Defined below this module (formats, identity, records, splits) and importable from here as before.
from engine.data.formats import (DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES, check_pixel_limit, is_dicom_path,
                                 is_image_file, is_nifti_path, reader_kind, strict_decoding)
from engine.data.identity import frame_label
from engine.data.records import ImageRecord, with_patients, with_references
from engine.data.splits import (check_test_split_sizes, grouped_test_split, min_class_images, min_training_images,
                                patient_groups, split_validation)
from engine.errors import InputError

if TYPE_CHECKING:
    from engine.data.identity import Redactor
    from engine.data.readers import SliceSelection, Windowing


def record_label(r: ImageRecord, root: Path | None = None) -> str:
    """The record as artefacts name it (``identity.display_path``: relative to ``root``, or its
    neutral reference when the data holds patient ids) with its frame; without ``root``, the
    absolute path with its frame (for messages that stay on this machine)."""
    if root is not None:
        from engine.data.identity import display_path

        return display_path(r, root)
    return frame_label(str(r.path), r.frame, r.frame_name)


@dataclass
class Dataset:
    root: Path
    layout: str
    class_names: list[str]
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split in ("train", "val", "test"):
            c = Counter(r.label for r in getattr(self, split))
            out[split] = {k: int(c.get(k, 0)) for k in self.class_names}
        return out

    def labels(self, split: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.class_names)}
        return np.array([index[r.label] for r in getattr(self, split)], dtype=np.int64)


def _image_files(folder: Path) -> list[Path]:
    """The image files below ``folder``, sorted. Hidden folders (``.cache``, ``.keys``) and
    auditrun's own output (an experiment or run folder, ``paths.is_output_folder``) are never
    entered: a report's figures copied there must not become training images. Links to folders
    below the top are not followed."""
    from engine.data.annotations import is_annotation_file
    from engine.paths import is_output_folder

    found = []
    for here, dirs, files in os.walk(folder):
        base = Path(here)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not is_output_folder(base / d)]
        # tumour outlines lie beside the images (engine.data.annotations): they are never images
        found += [p for p in (base / f for f in files)
                  if p.is_file() and is_image_file(p) and not is_annotation_file(p)]
    return sorted(found)


def images_by_class(folder: Path, aliases: dict[str, str]) -> dict[str, list[Path]]:
    """The images of a labelled folder by canonical class: each sub-folder of ``folder`` is a class
    folder, named by ``aliases`` (lower-cased folder name -> canonical class, as
    ``engine.manifest.class_aliases`` gives it).

    A class's images are the files with an image suffix, NIfTI volumes (``.nii``/``.nii.gz``) and
    DICOM files (``.dcm``/``.dicom`` or suffix-less with a DICOM preamble) anywhere below its
    folder, sorted (``frame_records`` expands a file into its frames); folders
    that map to one class are merged in folder-name order. Hidden sub-folders (``.name``) and files
    directly in ``folder`` are ignored. A sub-folder that maps to no class is an InputError naming it and the
    known names.
    """
    from engine.paths import folder_key

    found: dict[str, list[Path]] = {}
    unknown = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        canonical = aliases.get(folder_key(sub.name))
        if canonical is None:
            unknown.append(sub.name)
            continue
        found.setdefault(canonical, []).extend(_image_files(sub))
    if unknown:
        raise InputError(
            f"{str(folder)!r}: class folder(s) {', '.join(map(_shown_name, unknown))} match no class; "
            f"known folder names: {', '.join(map(_shown_name, sorted(aliases)))} (compared lower-cased, after "
            "Unicode NFC normalisation). Add them under [data.aliases]."
        )
    return found


def _shown_name(name: str) -> str:
    """A folder name quoted, with its code points spelled out when it is not plain ASCII: two names
    that differ in invisible ways (a combining accent, a look-alike letter) must not read the same."""
    return repr(name) if name.isascii() else f"{name!r} ({ascii(name)})"


def detect_layout(root: Path, train_dir: str, test_dir: str) -> str:
    if (root / train_dir).is_dir() and (root / test_dir).is_dir():
        return "kaggle"
    return "imagefolder"


def discover(root: Path, *, layout: str, train_dir: str, test_dir: str, classes: Sequence[str],
             aliases: dict[str, str], test_fraction: float, seed: int,
             validation_fraction: float | None = None,
             pseudonymizer: Callable[[], Callable[[str], str]] | None = None,
             labels: str | os.PathLike | None = None,
             columns: dict[str, str] | None = None,
             slices: SliceSelection | None = None, require_train: bool = True) -> tuple[str, list[ImageRecord]]:
    """Find every image and its canonical class. Returns (layout, records with split train/test).

    ``labels`` (``[data] labels``) and ``columns`` (``[data.columns]``): the "csv" layout, where a
    CSV lists the images, their labels and metadata (``engine.data.labels_csv``).

    A DICOM file gives one record per frame and a NIfTI volume one per axial slice that ``slices``
    (``engine.data.readers.SliceSelection``, the manifest's ``data.slices``; default all) selects;
    the selection applies to multi-frame DICOM too (``frame_records``). The frames of one file are
    one group in the folder-per-class test split, as a patient's files are.

    ``pseudonymizer``: a factory called once, only when the data holds DICOM files, returning the
    function that turns a patient id into its pseudonym (``engine.data.identity``); DICOM records
    then carry ``patient`` (the pseudonym) and ``meta`` (site, scanner, sex, age). Without it DICOM
    records carry neither.

    imagefolder layout: a class too small for the stratified test split (and, when
    ``validation_fraction`` is given, for the validation split carved later) is an InputError
    naming the class, its count and the minimum. Each file is listed once; raises InputError
    naming the folder or file otherwise.

    ``require_train=False`` (an audit of imported models only, which trains nothing): a data root
    holding only ``test_dir`` is read as the test split, with no training images.
    """
    try:
        return _discover_records(root, layout=layout, train_dir=train_dir, test_dir=test_dir, classes=classes,
                                 aliases=aliases, test_fraction=test_fraction, seed=seed,
                                 validation_fraction=validation_fraction, pseudonymizer=pseudonymizer,
                                 labels=labels, columns=columns, slices=slices, require_train=require_train)
    except InputError as exc:
        # Raised before any record had its reference: the message may quote a file named after
        # its patient (a CSV row listed twice, a folder found twice).
        redact = failure_redactor(root, pseudonymizer, train_dir=train_dir, test_dir=test_dir, aliases=aliases,
                                  labels=labels, columns=columns)
        message = redact(str(exc))
        if message == str(exc):
            raise
        raise InputError(message) from None


def structural_names(train_dir: str, test_dir: str, aliases: Mapping[str, str]) -> set[str]:
    """Folder names that are the data's structure (split and class folders), never a patient's."""
    return {train_dir, test_dir, *aliases, *aliases.values()}


def redactor(root: Path, records: Sequence[ImageRecord], pseudonymizer: Callable[[], Callable[[str], str]] | None,
             *, train_dir: str, test_dir: str, aliases: Mapping[str, str],
             labels: str | os.PathLike | None = None) -> Redactor:
    """The :class:`~engine.data.identity.Redactor` for messages about these records: active when
    the data holds patient ids (a record carries a reference), a no-op otherwise."""
    from engine.data.identity import Redactor, no_redaction

    if pseudonymizer is None or not any(r.ref for r in records):
        return no_redaction(root)
    return Redactor(root, pseudonymizer(), structural=structural_names(train_dir, test_dir, aliases),
                    refs={str(r.path): r.ref for r in records if r.ref}, keep=_kept(root, labels))


def failure_redactor(root: Path, pseudonymizer, *, train_dir: str, test_dir: str, aliases: Mapping[str, str],
                     labels=None, columns=None) -> Redactor:
    """A Redactor for an error raised before the records existed: active when the data may hold
    patient ids (a labels CSV with a patient column, or any DICOM file below the root). Without a
    pseudonymizer the references are made under a one-off key: neutral, if not locatable."""
    from engine.data.identity import Pseudonymizer, Redactor, no_redaction
    from engine.data.labels_csv import names_patients

    try:
        holds = names_patients(root, labels, columns or {}) if labels is not None else _any_dicom(Path(root))
    except OSError:
        holds = True  # cannot tell: say less rather than more
    if not holds:
        return no_redaction(root)
    try:
        pseudonym = pseudonymizer() if pseudonymizer is not None else None
    except InputError:
        pseudonym = None
    if pseudonym is None:
        pseudonym = Pseudonymizer(os.urandom(32), "a one-off key")
    return Redactor(root, pseudonym, structural=structural_names(train_dir, test_dir, aliases),
                    keep=_kept(root, labels))


def _kept(root: Path, labels) -> list[Path]:
    if labels is None:
        return []
    from engine.data.labels_csv import labels_file

    return [labels_file(Path(root).resolve(), labels)]


def _any_dicom(root: Path) -> bool:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_dicom_path(Path(folder) / f) for f in files):
            return True
    return False


def _discover_records(root: Path, *, layout: str, train_dir: str, test_dir: str, classes: Sequence[str],
                      aliases: dict[str, str], test_fraction: float, seed: int, validation_fraction, pseudonymizer,
                      labels, columns, slices, require_train: bool) -> tuple[str, list[ImageRecord]]:
    if labels is not None or layout == "csv":
        from engine.data.labels_csv import discover_csv

        layout, files = discover_csv(root, labels, columns, classes=classes, aliases=aliases,
                                     test_fraction=test_fraction, seed=seed, validation_fraction=validation_fraction,
                                     pseudonymizer=pseudonymizer)
        # The CSV splits files (a volume stays on one side); its frames inherit the file's patient and metadata.
        return layout, [replace(f, patient=r.patient, meta=r.meta, ref=r.ref) for r in files
                        for f in frame_records(r.path, r.split, r.label, slices)]
    try:
        layout, records = _discover(root, layout=layout, train_dir=train_dir, test_dir=test_dir, classes=classes,
                                    aliases=aliases, test_fraction=test_fraction, seed=seed,
                                    validation_fraction=validation_fraction, slices=slices,
                                    require_train=require_train)
    except OSError as exc:
        # The walk meets what the user's folders hold: a name too long, a symlink loop, no permission.
        raise InputError(f"data root {str(root)!r}: cannot read {str(exc.filename or root)!r}: "
                         f"{exc.strerror or exc}") from None
    first: dict[tuple[Path, int], ImageRecord] = {}
    for r in records:
        # Train and test folders that are one folder (or link to it), or two class folders linked to
        # one: the same file would train and test, and the audit refuses a file listed twice.
        if r.key in first:
            other = first[r.key]
            raise InputError(f"data root {str(root)!r}: {str(r.path)!r} is found twice, as {other.split}/"
                             f"{other.label} and as {r.split}/{r.label}; data.train_dir, data.test_dir and the "
                             "class folders must be different folders, not links to one another")
        first[r.key] = r
    if pseudonymizer is not None and any(is_dicom_path(r.path) for r in records):
        records = with_patients(records, pseudonymizer(), root)
    return layout, records


def _discover(root: Path, *, layout: str, train_dir: str, test_dir: str, classes: Sequence[str],
              aliases: dict[str, str], test_fraction: float, seed: int,
              validation_fraction: float | None = None,
              slices: SliceSelection | None = None, require_train: bool = True) -> tuple[str, list[ImageRecord]]:
    test_only = not require_train and (root / test_dir).is_dir() and not (root / train_dir).is_dir()
    if layout == "auto":
        layout = "kaggle" if test_only else detect_layout(root, train_dir, test_dir)
    records: list[ImageRecord] = []
    if layout == "kaggle":
        for split, sub in (("train", train_dir), ("test", test_dir)):
            folder = root / sub
            if split == "train" and test_only:
                continue
            if not folder.is_dir():
                raise InputError(f"data root {str(root)!r} has no {sub!r} folder (layout = \"kaggle\"; "
                                 f"set data.train_dir / data.test_dir or layout = \"imagefolder\")")
            for label, files in images_by_class(folder, aliases).items():
                records += [r for p in files for r in frame_records(p.resolve(), split, label, slices)]
    else:
        by_class = images_by_class(root, aliases)
        items = [r for c in sorted(by_class) for p in by_class[c] for r in frame_records(p.resolve(), "", c, slices)]
        if len(items) < 4:
            raise InputError(f"data root {str(root)!r} holds only {len(items)} images")
        check_test_split_sizes(root, dict(sorted(Counter(r.label for r in items).items())), test_fraction,
                                validation_fraction)
        labels = [r.label for r in items]
        keys = _group_keys(items)
        if keys is not None:
            tr, te = grouped_test_split(items, labels, keys, test_fraction, seed)
        else:
            from sklearn.model_selection import train_test_split

            tr, te = train_test_split(items, test_size=test_fraction, random_state=seed, stratify=labels)
        records = [replace(r, split="train") for r in tr] + [replace(r, split="test") for r in te]
    missing = [c for c in classes if not any(r.label == c and r.split == "train" for r in records)]
    if missing and not test_only:
        raise InputError(f"data root {str(root)!r}: no training images for class(es) {', '.join(map(repr, missing))}")
    records.sort(key=lambda r: (r.split, r.label, str(r.path), r.frame))
    return layout, records


def frame_records(path: Path, split: str, label: str, slices: SliceSelection | None = None) -> list[ImageRecord]:
    """The records of one file: one per DICOM frame, one per NIfTI axial slice that ``slices``
    selects (also applied to the frames of a multi-frame DICOM; a single-frame file always gives its
    one image), one for a plain image (a multi-page TIFF: its first page, as PIL decodes it).

    Reads headers only. A file whose frames cannot be listed gives one record carrying the
    reader's reason in ``unreadable``, so that it is listed, not lost."""
    kind = reader_kind(path)
    if kind is None:
        return [ImageRecord(path, split, label)]
    from engine.data.readers import SliceSelection, frames_of

    name = "slice" if kind == "nifti" else "frame"
    try:
        if path.is_file() and path.stat().st_size == 0:  # said plainly, not as "not a DICOM file"
            raise InputError("zero-byte file")
        selection = SliceSelection.parse(slices)
        indices = [ref.index for ref in frames_of(path, selection if kind == "nifti" else None)]
        if kind == "dicom" and len(indices) > 1:
            indices = selection.indices(len(indices))
            if not indices:
                raise InputError(f"cannot read DICOM {str(path)!r}: the slice selection ({selection}) selects none "
                                 f"of its frames")
    except InputError as exc:
        return [ImageRecord(path, split, label, unreadable=str(exc))]  # the whole file, no frame of it
    if kind == "dicom" and indices == [0]:
        name = None  # one frame: shown as the file, as before frames were counted
    return [ImageRecord(path, split, label, i, name) for i in indices]


def _group_keys(items: Sequence[ImageRecord]) -> list[object] | None:
    """A group key per record for the imagefolder test split: the DICOM PatientID (raw, kept in this
    list only and never returned elsewhere), or the file for a file without one (so a volume's
    slices stay together). None when every group is one record (the ungrouped split is then the
    same thing, and the split of plain images does not change)."""
    from engine.data.readers import read_metadata

    ids: dict[Path, str | None] = {}
    keys: list[object] = []
    for r in items:
        if r.path not in ids:
            ids[r.path] = None
            if is_dicom_path(r.path) and not r.unreadable:
                try:
                    ids[r.path] = read_metadata(r.path).patient_id
                except InputError:
                    pass  # listed as unreadable later, with the reader's reason
        keys.append(("patient", ids[r.path]) if ids[r.path] else ("file", str(r.path)))
    return keys if len(set(keys)) < len(keys) else None


def class_coverage_warnings(class_names: Sequence[str], counts: dict[str, dict[str, int]],
                            leakage_free_test: dict[str, int] | None = None) -> list[str]:
    """Plain-language warnings for classes without images in a split that is scored.

    ``counts``: split -> class -> images (``Dataset.counts()``); ``leakage_free_test``: class ->
    leakage-free test images (the integrity audit's ``leakage_free_test_counts``), when audited.
    A class with no images in a scored subset has undefined recall and F1 there and is left out of
    that subset's macro averages (docs/metrics.md); saying so at discovery keeps a reader from
    finding out from a table.
    """
    out = []
    for split, what, consequence in (
        ("test", "test images", "its test recall and F1 are undefined (reported as \"no test images\"), test "
                                "macro averages cover the other classes, and a min_recall gate on it is not "
                                "evaluated"),
        ("val", "validation images", "validation macro-F1, which selects the best backbone, covers the other "
                                     "classes"),
    ):
        split_counts = counts.get(split) or {}
        for c in class_names:
            if not split_counts.get(c):
                out.append(f"class {c} has no {what}: {consequence}")
    test_counts = counts.get("test") or {}
    for c in class_names:
        if leakage_free_test is not None and test_counts.get(c) and not leakage_free_test.get(c):
            out.append(f"class {c} has no leakage-free test images (all {test_counts[c]} test images have a "
                       "copy or near-copy in training): its leakage-free recall and F1 are undefined and "
                       "leakage-free macro averages cover the other classes")
    return out


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_image(path: Path, size: int, frame: int = 0, windowing: Windowing | None = None) -> np.ndarray:
    """Read any image (any mode, any size) as (size, size, 3) uint8 RGB.

    DICOM frames and NIfTI slices (``frame``) are read through ``engine.data.readers`` with
    ``windowing`` (the manifest's ``data.windowing``; default "auto"), and so are plain images that
    hold raw signal (16-bit PNG/TIFF, modes ``I;16*``, ``I``, ``F``: no stored window, so "auto" is
    the percentile window and "dicom" refuses them). Other plain images are decoded by PIL
    (``frame`` 0). Raises InputError naming the file when it cannot be decoded.
    """
    from PIL import Image, ImageOps

    from engine.data.readers.plain import RAW_MODES

    if reader_kind(Path(path)):
        grey = read_volume_frame(Path(path), frame, windowing)
        im = Image.fromarray(grey, mode="L").convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    try:
        # strict: WeasyPrint (imported by the report stage) flips PIL's global switch that pads
        # truncated files with grey; training must refuse what the audit refuses.
        with strict_decoding(), Image.open(path) as im:
            check_pixel_limit(im)  # the audit's limit: what it lists as unreadable is never decoded
            if im.mode in RAW_MODES:  # raw signal (16-bit PNG/TIFF): windowed as DICOM pixels are
                from engine.data.readers import FrameRef, Windowing, read_frame

                im = Image.fromarray(read_frame(FrameRef(Path(path), 0, "plain"), windowing or Windowing()), mode="L")
            else:
                im = ImageOps.exif_transpose(im)
            im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise InputError(f"cannot decode image {str(path)!r}: {exc}") from None


def read_volume_frame(path: Path, frame: int = 0, windowing: Windowing | None = None) -> np.ndarray:
    """Frame ``frame`` of a DICOM file or axial slice ``frame`` of a NIfTI volume as (H, W) uint8 grey
    (``windowing``, default ``Windowing()``). InputError with the reader's reason."""
    from engine.data.readers import FrameRef, Windowing, read_frame

    kind = reader_kind(Path(path))
    if kind is None:
        raise InputError(f"cannot read {str(path)!r}: not a DICOM or NIfTI file")
    return read_frame(FrameRef(Path(path), int(frame), kind), windowing or Windowing())


def windowing_key(windowing: Windowing | None) -> str:
    """The windowing as text for cache keys: decoded pixels depend on it."""
    from engine.data.readers import Windowing

    w = windowing or Windowing()
    return f"{w.mode}:{w.percentiles[0]!r}-{w.percentiles[1]!r}"


def _cache_key(records: Sequence[ImageRecord], size: int, windowing: Windowing | None) -> str:
    h = hashlib.sha256(f"v2|{size}|{windowing_key(windowing)}".encode())
    stats: dict[Path, os.stat_result] = {}
    for r in records:
        st = stats.get(r.path) or stats.setdefault(r.path, r.path.stat())
        h.update(f"{r.path}|{r.frame}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


#: Default of ``[data] image_memory_bytes``: decoded images a run holds in RAM; the rest are read
#: from disk in batches (engine.data.image_store).
DEFAULT_IMAGE_MEMORY = 2 * 1024**3
#: Images decoded (and written) per step when a split goes to disk: 512 at 224 px are 77 MB.
DISK_CHUNK = 512


class ImageCache:
    """Decode each image once per (file, frame, size, windowing): in memory for the run, on disk
    across runs.

    Backbones with the same input size share arrays; epochs never re-decode. ``windowing`` (the
    manifest's ``data.windowing``) decodes DICOM and NIfTI frames and is part of every key.

    ``memory_bytes`` (``data.image_memory_bytes``) caps the decoded images held in RAM. A split that
    would take the total over it is decoded a chunk at a time into a ``.npy`` file (the on-disk
    cache when there is one, else a temporary folder under ``spill_dir`` that goes with the cache
    object) and returned as an ``image_store.DiskImages``, which stages read a batch at a time.
    """

    #: Every on-disk array (and an interrupted write's leftover) matches this; retention prunes by it.
    FILE_GLOB = "images-*.npy"

    def __init__(self, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None,
                 windowing: Windowing | None = None, workers: int | None = None,
                 memory_bytes: int = DEFAULT_IMAGE_MEMORY, spill_dir: Path | None = None):
        self.cache_dir = cache_dir
        self.workers = workers  # decoding threads; None: one per core this process may use
        self.windowing = windowing
        self.memory_bytes = memory_bytes
        self.spill_dir = spill_dir
        self._mem: dict[tuple[str, int], np.ndarray] = {}
        self._held = 0
        self._spill = None  # TemporaryDirectory, made on the first split that spills with no cache_dir
        self._progress = progress or (lambda msg: None)

    @property
    def held_bytes(self) -> int:
        """Bytes of decoded images this cache holds in RAM."""
        return self._held

    def load(self, records: Sequence[ImageRecord], size: int, name: str = ""):
        """(n, size, size, 3) uint8 for ``records``, in order: an ndarray, or a DiskImages when the
        split would take the images held in RAM over ``memory_bytes``."""
        from engine.data.image_store import DiskImages

        key = _cache_key(records, size, self.windowing)
        if (key, size) in self._mem:
            return self._mem[(key, size)]
        shape = (len(records), size, size, 3)
        nbytes = int(np.prod(shape, dtype=np.int64))
        on_disk = self._held + nbytes > self.memory_bytes
        arr = None
        file = self.cache_dir / self.FILE_GLOB.replace("*", key) if self.cache_dir else None
        if file is not None and file.is_file():
            try:
                arr = DiskImages(file, shape) if on_disk else np.load(file, mmap_mode=None, allow_pickle=False)
                if arr.shape != shape:
                    arr = None
                else:
                    os.utime(file)  # "last used", which cache retention (prune_cache) goes by
            except (OSError, ValueError):
                arr = None
            if arr is not None and on_disk:
                self._progress(f"{len(records)} {name} images at {size}px read from disk in batches: "
                               f"{_gib(nbytes)} would take the images held in memory over "
                               f"data.image_memory_bytes = {_gib(self.memory_bytes)}")
        if arr is None and on_disk:
            arr = self._decode_to_disk(records, size, name, file, shape)
        elif arr is None:
            arr = self._decode(records, size)
            self._progress(f"decoded {len(records)} {name} images at {size}px")
            if file is not None:
                self._save(file, lambda f: f.write(memoryview(np.ascontiguousarray(arr)).cast("B")), shape)
        if not on_disk:
            self._held += nbytes
        self._mem[(key, size)] = arr
        return arr

    def _decode_to_disk(self, records: Sequence[ImageRecord], size: int, name: str, file: Path | None,
                        shape: tuple[int, ...]):
        from engine import compute
        from engine.data.image_store import DiskImages
        from engine.progress import Progress

        if file is None:
            if self._spill is None:
                import tempfile

                base = self.spill_dir
                if base is not None:
                    base.mkdir(parents=True, exist_ok=True)
                self._spill = tempfile.TemporaryDirectory(prefix="decoded-", dir=base)
            file = Path(self._spill.name) / f"images-{_cache_key(records, size, self.windowing)}.npy"
        chunks = compute.chunks(records, DISK_CHUNK)

        def fill(f) -> None:
            with Progress.for_echo(self._progress, f"decoding {name} images at {size}px to disk",
                                   len(records)) as line:
                for arr in self._decode_chunks(chunks, size, line.update):
                    f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))

        self._save(file, fill, shape)
        self._progress(f"decoded {len(records)} {name} images at {size}px to disk ({_gib(np.prod(shape))}, "
                       f"over data.image_memory_bytes = {_gib(self.memory_bytes)} with {_gib(self._held)} "
                       f"held): {file.name}, read in batches")
        return DiskImages(file, shape)

    def _decode_chunks(self, chunks: list, size: int, progress: Callable[[int], None]):
        """Each chunk's decoded array, in order: on the Dask cluster's workers when the run has one
        (engine.compute), else on this process's threads."""
        from engine import compute

        cluster = compute.current()
        if cluster is not None:
            yield from compute.map_ordered(decode_records, chunks, cluster=cluster, progress=progress,
                                           size=size, windowing=self.windowing, workers=1)
            return
        done = 0
        for chunk in chunks:
            arr = decode_records(chunk, size, self.windowing, self.workers)
            done += len(arr)
            progress(done)
            yield arr

    def _save(self, file: Path, fill, shape: tuple[int, ...]) -> None:
        from engine.atomic import writing
        from engine.data.image_store import write_npy

        tmp = file.with_suffix(f".tmp{os.getpid()}.npy")
        with writing(file):
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
                write_npy(tmp, shape, np.uint8, fill)
                os.replace(tmp, file)
            except BaseException:
                tmp.unlink(missing_ok=True)  # a half-written array must not fill the disk
                raise

    def close(self) -> None:
        """Drop the arrays and delete a temporary spill folder (the on-disk cache stays)."""
        self._mem.clear()
        self._held = 0
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None

    def _decode(self, records: Sequence[ImageRecord], size: int) -> np.ndarray:
        from engine import compute

        if compute.current() is None:
            return decode_records(records, size, self.windowing, self.workers)
        arr = np.empty((len(records), size, size, 3), dtype=np.uint8)
        at = 0
        for part in self._decode_chunks(compute.chunks(records, DISK_CHUNK), size, lambda _n: None):
            arr[at:at + len(part)] = part
            at += len(part)
        return arr


def _gib(n) -> str:
    return f"{int(n) / 1024**3:.2f} GiB"


def decode_records(records: Sequence[ImageRecord], size: int, windowing: Windowing | None = None,
                   workers: int | None = None) -> np.ndarray:
    """(n, size, size, 3) uint8 of ``records``, decoded on every core: PIL and pydicom release the
    GIL while they decode and resize (1.65x on 2 cores for the 3,264 JPEGs here). The first failing
    record, in order, raises. A plain function of its arguments, so a Dask worker can run it."""
    from concurrent.futures import ThreadPoolExecutor

    arr = np.empty((len(records), size, size, 3), dtype=np.uint8)

    def put(i: int) -> None:
        arr[i] = decode_image(records[i].path, size, records[i].frame, windowing)

    workers = min(workers or len(os.sched_getaffinity(0)), len(records)) or 1
    # Held around the pool: each decode's own strict_decoding then saves and restores False, so
    # threads finishing in any order cannot switch truncated-file padding back on for another.
    with strict_decoding():
        if workers == 1:
            for i in range(len(records)):
                put(i)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(put, range(len(records))))
    return arr


def too_small_reason(width: int, height: int, min_size: int) -> str | None:
    """Why an image of this size is unusable (``integrity.min_image_size``), or None."""
    if min(width, height) < min_size:
        return f"image is {width}x{height} px, smaller than integrity.min_image_size = {min_size}"
    return None


def readable(records: Iterable[ImageRecord], min_size: int = 1,
             windowing: Windowing | None = None, root: Path | None = None) -> tuple[list[ImageRecord], list[dict]]:
    """Split records into decodable ones and a skipped list with reasons (full decode).

    An image narrower or shorter than ``min_size`` pixels is skipped too, with the same reason the
    integrity audit gives, so a run without the audit trains on the same images. DICOM frames and
    NIfTI slices are decoded with ``windowing``. With ``root``, a skipped file's ``path`` is the
    name artefacts show (``identity.display_path``, with the frame of a multi-image file) and its
    reason leaves out the path, as the audit's list does; without it, the absolute path with the
    frame (``record_label``: ``/abs/x.nii.gz [slice 3]``) and the full message.
    """

    from PIL import Image

    def shown(r: ImageRecord) -> str:
        return record_label(r, root)

    ok, skipped = [], []
    with strict_decoding():  # a truncated file must fail here, whatever PIL's global switch says
        for r in records:
            try:
                if r.unreadable:
                    raise InputError(r.unreadable)
                if r.path.stat().st_size == 0:
                    raise ValueError("zero-byte file")
                if reader_kind(r.path):
                    height, width = read_volume_frame(r.path, r.frame, windowing).shape
                    small = too_small_reason(width, height, min_size)
                else:
                    with Image.open(r.path) as im:
                        check_pixel_limit(im)
                        im.load()
                        small = too_small_reason(im.width, im.height, min_size)
                if small:
                    skipped.append({"path": shown(r), "reason": small})
                    continue
                ok.append(r)
            except Exception as exc:  # noqa: BLE001
                reason = str(exc) or type(exc).__name__
                if root is not None:
                    reason = reason.split(f"{str(r.path)!r}: ", 1)[-1]
                skipped.append({"path": shown(r), "reason": reason})
    return ok, skipped
