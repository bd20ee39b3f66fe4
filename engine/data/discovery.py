"""Image discovery, class aliasing, seeded splits and a decode-once image cache.

The test split is read only by the final evaluation; validation is carved from training with a
stratified, seeded (and, when integrity groups are given, group-preserving) split.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from engine.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute
    split: str  # "train" | "test" (validation is carved from "train" later)
    label: str  # canonical class name
    # Frame of a multi-frame file. Always 0 today: a multi-frame DICOM is listed as unreadable
    # ("multi-frame DICOM not supported yet"), so ``path`` alone still identifies a record.
    frame: int = 0
    # The patient's pseudonym (engine.data.identity: HMAC of the DICOM PatientID), never the raw id;
    # None when the file carries no patient id (plain images).
    patient: str | None = field(default=None, compare=False)
    # site / scanner / sex / age where the file's header has them (DICOM); never identifying fields.
    meta: dict | None = field(default=None, compare=False, hash=False)
    # How artefacts name the file when the data holds patient ids (``identity.file_reference``:
    # "<patient pseudonym>/f-<keyed hash>.dcm"), since file names may carry identity; None: the
    # path relative to the data root. Always shown through ``identity.display_path``.
    ref: str | None = field(default=None, compare=False)


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


DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom_path(path: Path) -> bool:
    """A DICOM file by suffix, or a file named without a known suffix (``IM0001``, a UID such as
    ``1.2.840.1234``) that starts like DICOM (``DICM`` after the 128-byte preamble)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES or not (suffix == "" or suffix[1:].isdigit()):
        return False
    from engine.data.readers.dicom import is_dicom_file

    return is_dicom_file(path)


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES or is_dicom_path(p)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_image_file(p))


def images_by_class(folder: Path, aliases: dict[str, str]) -> dict[str, list[Path]]:
    """The images of a labelled folder by canonical class: each sub-folder of ``folder`` is a class
    folder, named by ``aliases`` (lower-cased folder name -> canonical class, as
    ``engine.manifest.class_aliases`` gives it).

    A class's images are the files with an image suffix (or DICOM files, ``.dcm``/``.dicom`` or
    suffix-less with a DICOM preamble) anywhere below its folder, sorted; folders
    that map to one class are merged in folder-name order. Hidden sub-folders (``.name``) and files
    directly in ``folder`` are ignored. A sub-folder that maps to no class is an InputError naming it and the
    known names.
    """
    found: dict[str, list[Path]] = {}
    unknown = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        canonical = aliases.get(sub.name.lower())
        if canonical is None:
            unknown.append(sub.name)
            continue
        found.setdefault(canonical, []).extend(_image_files(sub))
    if unknown:
        raise InputError(
            f"{str(folder)!r}: class folder(s) {', '.join(map(repr, unknown))} match no class; "
            f"known folder names: {', '.join(map(repr, sorted(aliases)))}. Add them under [data.aliases]."
        )
    return found


def detect_layout(root: Path, train_dir: str, test_dir: str) -> str:
    if (root / train_dir).is_dir() and (root / test_dir).is_dir():
        return "kaggle"
    return "imagefolder"


def discover(root: Path, *, layout: str, train_dir: str, test_dir: str, classes: Sequence[str],
             aliases: dict[str, str], test_fraction: float, seed: int,
             validation_fraction: float | None = None,
             pseudonymizer: Callable[[], Callable[[str], str]] | None = None) -> tuple[str, list[ImageRecord]]:
    """Find every image and its canonical class. Returns (layout, records with split train/test).

    ``pseudonymizer``: a factory called once, only when the data holds DICOM files, returning the
    function that turns a patient id into its pseudonym (``engine.data.identity``); DICOM records
    then carry ``patient`` (the pseudonym) and ``meta`` (site, scanner, sex, age). Without it DICOM
    records carry neither.

    imagefolder layout: a class too small for the stratified test split (and, when
    ``validation_fraction`` is given, for the validation split carved later) is an InputError
    naming the class, its count and the minimum. Each file is listed once; raises InputError
    naming the folder or file otherwise.
    """
    try:
        layout, records = _discover(root, layout=layout, train_dir=train_dir, test_dir=test_dir, classes=classes,
                                    aliases=aliases, test_fraction=test_fraction, seed=seed,
                                    validation_fraction=validation_fraction)
    except OSError as exc:
        # The walk meets what the user's folders hold: a name too long, a symlink loop, no permission.
        raise InputError(f"data root {str(root)!r}: cannot read {str(exc.filename or root)!r}: "
                         f"{exc.strerror or exc}") from None
    first: dict[Path, ImageRecord] = {}
    for r in records:
        # Train and test folders that are one folder (or link to it), or two class folders linked to
        # one: the same file would train and test, and the audit refuses a file listed twice.
        if r.path in first:
            other = first[r.path]
            raise InputError(f"data root {str(root)!r}: {str(r.path)!r} is found twice, as {other.split}/"
                             f"{other.label} and as {r.split}/{r.label}; data.train_dir, data.test_dir and the "
                             "class folders must be different folders, not links to one another")
        first[r.path] = r
    if pseudonymizer is not None and any(is_dicom_path(r.path) for r in records):
        records = with_patients(records, pseudonymizer(), root)
    return layout, records


def with_patients(records: Sequence[ImageRecord], pseudonym: Callable[[str], str],
                  root: Path | None = None) -> list[ImageRecord]:
    """DICOM records with their patient pseudonym and metadata (site, scanner, sex, age) from the
    header; the raw patient id never leaves this function. A header that cannot be read leaves the
    record without them (the integrity audit or ``readable`` lists the file with the reader's reason).

    With ``root``, when any file carries a patient id, every record (DICOM or not: any file name of
    a patient data set may carry identity) also gets ``ref``, the neutral name artefacts show
    (``identity.file_reference``)."""
    from engine.data.identity import file_reference
    from engine.data.readers import read_metadata
    from engine.paths import relative_to_root

    out = []
    for r in records:
        if is_dicom_path(r.path):
            try:
                meta = read_metadata(r.path)
            except InputError:
                meta = None
            if meta is not None:
                patient = pseudonym(meta.patient_id) if meta.patient_id else None
                scanner = " ".join(x for x in (meta.manufacturer, meta.model) if x) or None
                info = {k: v for k, v in (("site", meta.site), ("scanner", scanner), ("sex", meta.sex),
                                          ("age", meta.age)) if v is not None}
                r = replace(r, patient=patient, meta=info or None)
        out.append(r)
    if root is not None and any(r.patient for r in out):
        out = [replace(r, ref=file_reference(relative_to_root(r.path, root), r.patient, pseudonym)) for r in out]
    return out


def patient_groups(records: Sequence[ImageRecord], groups: dict[Path, int] | None) -> dict[Path, int] | None:
    """Group ids for ``split_validation`` that keep both a near-duplicate group (``groups``) and a
    patient's images on one side: groups that share a patient are merged (union-find). Without
    patients, ``groups`` itself (so splits of plain images do not change)."""
    if not any(r.patient for r in records):
        return groups
    parent: dict[object, object] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in records:
        node = ("path", r.path)
        find(node)
        if groups and r.path in groups:
            parent[find(node)] = find(("dup", groups[r.path]))
        if r.patient:
            parent[find(node)] = find(("patient", r.patient))
    ids: dict[object, int] = {}
    return {r.path: ids.setdefault(find(("path", r.path)), len(ids)) for r in records}


def _discover(root: Path, *, layout: str, train_dir: str, test_dir: str, classes: Sequence[str],
              aliases: dict[str, str], test_fraction: float, seed: int,
              validation_fraction: float | None = None) -> tuple[str, list[ImageRecord]]:
    if layout == "auto":
        layout = detect_layout(root, train_dir, test_dir)
    records: list[ImageRecord] = []
    if layout == "kaggle":
        for split, sub in (("train", train_dir), ("test", test_dir)):
            folder = root / sub
            if not folder.is_dir():
                raise InputError(f"data root {str(root)!r} has no {sub!r} folder (layout = \"kaggle\"; "
                                 f"set data.train_dir / data.test_dir or layout = \"imagefolder\")")
            for label, files in images_by_class(folder, aliases).items():
                records += [ImageRecord(p.resolve(), split, label) for p in files]
    else:
        by_class = images_by_class(root, aliases)
        from sklearn.model_selection import train_test_split

        paths = [p for c in sorted(by_class) for p in by_class[c]]
        labels = [c for c in sorted(by_class) for _ in by_class[c]]
        if len(paths) < 4:
            raise InputError(f"data root {str(root)!r} holds only {len(paths)} images")
        _check_test_split_sizes(root, {c: len(by_class[c]) for c in sorted(by_class)}, test_fraction,
                                validation_fraction)
        patients = _patient_keys(paths)
        if patients is not None:
            tr, te, ytr, yte = _grouped_test_split(paths, labels, patients, test_fraction, seed)
        else:
            tr, te, ytr, yte = train_test_split(paths, labels, test_size=test_fraction, random_state=seed,
                                                stratify=labels)
        records = [ImageRecord(p.resolve(), "train", y) for p, y in zip(tr, ytr)]
        records += [ImageRecord(p.resolve(), "test", y) for p, y in zip(te, yte)]
    missing = [c for c in classes if not any(r.label == c and r.split == "train" for r in records)]
    if missing:
        raise InputError(f"data root {str(root)!r}: no training images for class(es) {', '.join(map(repr, missing))}")
    records.sort(key=lambda r: (r.split, r.label, str(r.path)))
    return layout, records


def _patient_keys(paths: Sequence[Path]) -> list[object] | None:
    """A group key per path for the imagefolder test split: the DICOM PatientID (raw, kept in this
    list only and never returned elsewhere), or the path itself for a file without one. None when no
    two files share a patient (the ungrouped split is then the same thing)."""
    if not any(is_dicom_path(p) for p in paths):
        return None
    from engine.data.readers import read_metadata

    keys: list[object] = []
    for p in paths:
        patient_id = None
        if is_dicom_path(p):
            try:
                patient_id = read_metadata(p).patient_id
            except InputError:
                pass  # listed as unreadable later, with the reader's reason
        keys.append(("patient", patient_id) if patient_id else ("file", str(p)))
    return keys if len(set(keys)) < len(keys) else None


def _grouped_test_split(paths, labels, keys, test_fraction: float, seed: int):
    """The imagefolder test split with each patient on one side: the first fold of a seeded
    StratifiedGroupKFold with round(1 / test_fraction) folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes: dict[object, int] = {}
    groups = np.array([codes.setdefault(k, len(codes)) for k in keys])
    n_splits = max(2, round(_inverse(test_fraction)))
    try:
        tr_idx, te_idx = next(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                              .split(np.zeros(len(paths)), labels, groups))
    except ValueError as exc:
        raise InputError(f"{len(paths)} images of {len(codes)} patients: cannot hold out data.test_fraction = "
                         f"{test_fraction:g} by patient: {exc}") from None
    del keys, codes  # the raw ids go no further
    return ([paths[i] for i in tr_idx], [paths[i] for i in te_idx],
            [labels[i] for i in tr_idx], [labels[i] for i in te_idx])


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


def _check_test_split_sizes(root: Path, counts: dict[str, int], test_fraction: float,
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


def split_validation(train: Sequence[ImageRecord], fraction: float, seed: int,
                     groups: dict[Path, int] | None = None,
                     classes: Sequence[str] | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Stratified, seeded train/validation split; images of one group never straddle it.

    With ``groups`` (group id per path: near-duplicates, and a patient's images, see
    ``patient_groups``) StratifiedGroupKFold keeps each group on one side, so no image trains while
    its copy, or another slice of its patient, validates.

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
                             f"training); add images to that class{hint}")
    idx = np.arange(len(train))
    try:
        if groups:
            n_splits = max(2, round(_inverse(fraction)))
            g = np.array([groups.get(r.path, -1 - i) for i, r in enumerate(train)])
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
                if any(r.patient for r in train):
                    why = (f": its {count[cls]} images form {n_groups} group(s) (a patient's images, merged "
                           "with their near-duplicates), and a patient is never split between training and "
                           "validation")
                else:
                    why = (f": its {count[cls]} images form {n_groups} near-duplicate group(s), and "
                           "integrity.group_validation_split keeps each group on one side")
            raise InputError(f"class {cls!r}: the validation split (data.validation_fraction = {fraction:g}) "
                             f"leaves it {n_tr[cls]} training and {n_va[cls]} validation images{why}; "
                             "add images to that class")
    return tr, va


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_image(path: Path, size: int) -> np.ndarray:
    """Read any image (any mode, any size) as (size, size, 3) uint8 RGB.

    DICOM files are read through ``engine.data.readers`` (window "auto"); a multi-frame DICOM is
    refused (not supported yet). Raises InputError naming the file when it cannot be decoded.
    """
    from PIL import Image, ImageOps

    if is_dicom_path(Path(path)):
        grey = read_dicom_frame(Path(path))
        im = Image.fromarray(grey, mode="L").convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    from engine.integrity.hashing import check_pixel_limit, strict_decoding

    try:
        # strict: WeasyPrint (imported by the report stage) flips PIL's global switch that pads
        # truncated files with grey; training must refuse what the audit refuses.
        with strict_decoding(), Image.open(path) as im:
            check_pixel_limit(im)  # the audit's limit: what it lists as unreadable is never decoded
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (255 * (arr - lo) / (hi - lo or 1)).astype(np.uint8)
                im = Image.fromarray(arr)
            im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise InputError(f"cannot decode image {str(path)!r}: {exc}") from None


MULTIFRAME_REASON = "multi-frame DICOM not supported yet"


def read_dicom_frame(path: Path) -> np.ndarray:
    """The single frame of a DICOM file as (H, W) uint8 grey (``Windowing()``, mode "auto").
    InputError with the reader's reason, or ``MULTIFRAME_REASON`` for a file of several frames."""
    from engine.data.readers import Windowing, frames_of, read_frame

    refs = frames_of(path)
    if len(refs) != 1:
        raise InputError(f"cannot read {str(path)!r}: {MULTIFRAME_REASON} ({len(refs)} frames)")
    return read_frame(refs[0], Windowing())


def _cache_key(paths: Sequence[Path], size: int) -> str:
    h = hashlib.sha256(f"v1|{size}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


class ImageCache:
    """Decode each image once per (file, size): in memory for the run, on disk across runs.

    Backbones with the same input size share arrays; epochs never re-decode.
    """

    #: Every on-disk array (and an interrupted write's leftover) matches this; retention prunes by it.
    FILE_GLOB = "images-*.npy"

    def __init__(self, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None):
        self.cache_dir = cache_dir
        self._mem: dict[tuple[str, int], np.ndarray] = {}
        self._progress = progress or (lambda msg: None)

    def load(self, records: Sequence[ImageRecord], size: int, name: str = "") -> np.ndarray:
        """Returns (n, size, size, 3) uint8 for ``records``, in order."""
        paths = [r.path for r in records]
        key = _cache_key(paths, size)
        if (key, size) in self._mem:
            return self._mem[(key, size)]
        arr = None
        file = self.cache_dir / self.FILE_GLOB.replace("*", key) if self.cache_dir else None
        if file is not None and file.is_file():
            try:
                arr = np.load(file, mmap_mode=None, allow_pickle=False)
                if arr.shape != (len(paths), size, size, 3):
                    arr = None
                else:
                    os.utime(file)  # "last used", which cache retention (prune_cache) goes by
            except (OSError, ValueError):
                arr = None
        if arr is None:
            arr = np.empty((len(paths), size, size, 3), dtype=np.uint8)
            for i, p in enumerate(paths):
                arr[i] = decode_image(p, size)
            self._progress(f"decoded {len(paths)} {name} images at {size}px")
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_suffix(f".tmp{os.getpid()}.npy")
                np.save(tmp, arr)
                os.replace(tmp, file)
        self._mem[(key, size)] = arr
        return arr


def too_small_reason(width: int, height: int, min_size: int) -> str | None:
    """Why an image of this size is unusable (``integrity.min_image_size``), or None."""
    if min(width, height) < min_size:
        return f"image is {width}x{height} px, smaller than integrity.min_image_size = {min_size}"
    return None


def readable(records: Iterable[ImageRecord], min_size: int = 1,
             root: Path | None = None) -> tuple[list[ImageRecord], list[dict]]:
    """Split records into decodable ones and a skipped list with reasons (full decode).

    An image narrower or shorter than ``min_size`` pixels is skipped too, with the same reason the
    integrity audit gives, so a run without the audit trains on the same images. With ``root``, a
    skipped file's ``path`` is the name artefacts show (``identity.display_path``) and its reason
    leaves out the path, as the audit's list does; without it, the absolute path and the full message.
    """
    from engine.data.identity import display_path

    from PIL import Image

    from engine.integrity.hashing import check_pixel_limit, strict_decoding

    def shown(r: ImageRecord) -> str:
        return display_path(r, root) if root is not None else str(r.path)

    ok, skipped = [], []
    with strict_decoding():  # a truncated file must fail here, whatever PIL's global switch says
        for r in records:
            try:
                if r.path.stat().st_size == 0:
                    raise ValueError("zero-byte file")
                if is_dicom_path(r.path):
                    height, width = read_dicom_frame(r.path).shape
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
