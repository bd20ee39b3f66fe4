"""Tumour outlines beside the images, read behind one interface (as engine.data.readers reads pixels).

An image's annotation is the first of these that exists (``ANNOTATION_READERS``, in this order):

* ``<image stem>.txt`` beside it, YOLO: one region per line, a box ``class xc yc w h`` or a
  segmentation polygon ``class x1 y1 x2 y2 ... xn yn`` (Roboflow/Ultralytics exports), all
  normalised to 0..1 of the image; lines of both kinds may mix;
* a mask image: ``<image stem>_mask.<ext>`` beside it, or ``masks/<image stem>.<ext>`` in its folder
  (any image suffix; any non-zero pixel is tumour; any size: it is read in normalised coordinates);
* for a slice of a NIfTI volume, a label volume of the same shape beside it: ``<stem>_seg``,
  ``<stem>_mask``, ``<stem>_label`` (``.nii`` / ``.nii.gz``), or BraTS's ``<case>_seg`` for
  ``<case>_<modality>``; the slice is the image's own canonical axial slice, any non-zero label is tumour;
* a row of ``boxes.csv`` at the data root: ``image,x_min,y_min,x_max,y_max`` (image relative to the
  root, corners in pixels of the original image; several rows give several boxes).

An annotation that cannot be read is an ``AnnotationProblem`` (its file, line where there is one,
and reason), never an exception: the image is then not scored and every other image still is.
Annotation files are never images (``is_annotation_file``: discovery skips them).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.data.formats import IMAGE_SUFFIXES, NIFTI_SUFFIXES
from engine.errors import InputError

#: A YOLO box: (x_center, y_center, width, height), normalised to 0..1.
Box = tuple[float, float, float, float]

#: Folder of mask images beside the images, and the stem suffixes that mark annotation files.
MASK_FOLDER = "masks"
MASK_SUFFIXES = ("_mask",)
LABEL_VOLUME_SUFFIXES = ("_seg", "_mask", "_label", "_labels")
BOXES_CSV = "boxes.csv"


class AnnotationError(ValueError):
    """An annotation that cannot be read: ``line`` is 1-based, None for the whole file."""

    def __init__(self, path: Path, reason: str, line: int | None = None):
        super().__init__(reason)
        self.path, self.reason, self.line = Path(path), reason, line


@dataclass(frozen=True, eq=False)
class Outline:
    """One image's tumour outline in normalised coordinates, rasterised at any map size.

    ``kind`` is "box", "polygon" or "mask"; ``source`` the file it came from. Boxes and polygons are
    normalised (0..1 of the image); a mask is (H0, W0) bool at its own resolution."""

    kind: str
    source: Path
    boxes: tuple[Box, ...] = ()
    polygons: tuple[np.ndarray, ...] = ()
    pixels: np.ndarray | None = field(default=None, repr=False)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """(h, w) bool: the map pixels whose centre lies inside the outline. An outline too small to
        hold any pixel centre at this size keeps the one pixel holding its centre of mass, so a tiny
        tumour is still scored rather than silently dropped."""
        h, w = shape
        ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
        out = np.zeros((h, w), dtype=bool)
        for xc, yc, bw, bh in self.boxes:
            rows = (ys >= yc - bh / 2) & (ys <= yc + bh / 2)
            cols = (xs >= xc - bw / 2) & (xs <= xc + bw / 2)
            out |= rows[:, None] & cols[None, :]
        if self.polygons:
            from matplotlib.path import Path as Polygon

            centres = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
            for poly in self.polygons:
                out |= Polygon(poly).contains_points(centres).reshape(h, w)
        if self.pixels is not None:
            ph, pw = self.pixels.shape
            r = np.minimum((ys * ph).astype(int), ph - 1)
            c = np.minimum((xs * pw).astype(int), pw - 1)
            out |= self.pixels[np.ix_(r, c)]
        if not out.any():
            y, x = self.centre()
            out[min(int(y * h), h - 1), min(int(x * w), w - 1)] = True
        return out

    def centre(self) -> tuple[float, float]:
        """(y, x) normalised: the mean of the regions' centres (a mask's: its pixels' mean)."""
        points = [(yc, xc) for xc, yc, _, _ in self.boxes] + [(p[:, 1].mean(), p[:, 0].mean()) for p in self.polygons]
        if self.pixels is not None and self.pixels.any():
            rr, cc = np.nonzero(self.pixels)
            points.append(((rr.mean() + 0.5) / self.pixels.shape[0], (cc.mean() + 0.5) / self.pixels.shape[1]))
        return tuple(np.mean(points, axis=0)) if points else (0.5, 0.5)

    def distance(self, shape: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
        """(h, w) distance in ORIGINAL pixels from each map pixel's centre to the outline (0 inside).

        Boxes are measured exactly to their edges; polygons and masks to the nearest inside pixel
        centre at the map's size (scipy's Euclidean distance transform, anisotropic where the image
        was stretched), within half a map pixel of the exact distance."""
        mask = self.mask(shape)
        h, w = shape
        oh, ow = original
        if self.kind == "box":
            return np.where(mask, 0.0, _distance_to_boxes(shape, self.boxes, original))
        from scipy.ndimage import distance_transform_edt

        return distance_transform_edt(~mask, sampling=(oh / h, ow / w))


def _distance_to_boxes(shape: tuple[int, int], boxes: Sequence[Box], original: tuple[int, int]) -> np.ndarray:
    h, w = shape
    oh, ow = original
    ys = (np.arange(h) + 0.5) / h * oh
    xs = (np.arange(w) + 0.5) / w * ow
    best = np.full((h, w), np.inf)
    for xc, yc, bw, bh in boxes:
        dy = np.maximum.reduce([(yc - bh / 2) * oh - ys, np.zeros(h), ys - (yc + bh / 2) * oh])
        dx = np.maximum.reduce([(xc - bw / 2) * ow - xs, np.zeros(w), xs - (xc + bw / 2) * ow])
        best = np.minimum(best, np.hypot(dy[:, None], dx[None, :]))
    return best


def as_outline(value) -> Outline | None:
    """An Outline from an Outline, a YOLO box, a list of boxes, or None / [] (no outline)."""
    if value is None or isinstance(value, Outline):
        return value
    if len(value) == 0:
        return None
    boxes = [tuple(float(v) for v in value)] if len(value) == 4 and all(np.isscalar(v) for v in value) \
        else [tuple(float(v) for v in b) for b in value]
    return Outline("box", Path(""), boxes=tuple(boxes))


# --------------------------------------------------------------------------------------------
# Readers: each (record, context) -> Outline | None (nothing of its kind), or AnnotationError
# --------------------------------------------------------------------------------------------

@dataclass
class _Context:
    root: Path | None
    csv_boxes: dict[Path, list[Box]] | None = None
    csv_problems: list = field(default_factory=list)


def _unit(value: str) -> float:
    v = float(value)
    if not (np.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"coordinate {value} is outside 0..1")
    return v


def parse_yolo(txt: Path) -> Outline | None:
    """Boxes and polygons of a YOLO label file; None when it holds no region (blank file)."""
    boxes, polygons = [], []
    try:
        text = txt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(txt, f"cannot read: {exc}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) == 5:
                xc, yc, w, h = (_unit(f) for f in fields[1:])
                if w <= 0 or h <= 0:
                    raise ValueError("a box needs positive width and height")
                boxes.append((xc, yc, w, h))
            elif len(fields) >= 7 and len(fields) % 2 == 1:
                points = np.array([_unit(f) for f in fields[1:]], dtype=np.float64).reshape(-1, 2)
                if np.ptp(points[:, 0]) == 0 or np.ptp(points[:, 1]) == 0:
                    raise ValueError("the polygon has no area")
                polygons.append(points)
            else:
                raise ValueError(f"{len(fields)} fields: a box has 5 (class xc yc w h), a polygon an odd number "
                                 "of at least 7 (class x1 y1 x2 y2 x3 y3 ...)")
        except ValueError as exc:
            raise AnnotationError(txt, f"not a YOLO box or polygon: {exc}", lineno) from None
    if not boxes and not polygons:
        return None
    return Outline("polygon" if polygons else "box", txt, boxes=tuple(boxes), polygons=tuple(polygons))


def _yolo(record, ctx: _Context) -> Outline | None:
    txt = Path(record.path).with_suffix(".txt")
    return parse_yolo(txt) if not record.frame_name and txt.is_file() else None


def _mask_candidates(image: Path) -> list[Path]:
    stem = image.name[: -len(image.suffix)] if image.suffix else image.name
    return [image.parent / f"{stem}{s}{ext}" for s in MASK_SUFFIXES for ext in sorted(IMAGE_SUFFIXES)] + \
        [image.parent / MASK_FOLDER / f"{stem}{ext}" for ext in sorted(IMAGE_SUFFIXES)]


def read_mask_image(path: Path) -> Outline:
    try:
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L")) > 0
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise AnnotationError(path, f"cannot decode the mask image: {exc}") from None
    if not pixels.any():
        raise AnnotationError(path, "the mask has no non-zero pixel")
    return Outline("mask", path, pixels=pixels)


def _mask(record, ctx: _Context) -> Outline | None:
    if record.frame_name:
        return None
    found = next((p for p in _mask_candidates(Path(record.path)) if p.is_file()), None)
    return read_mask_image(found) if found is not None else None


def _nifti_stem(path: Path) -> str | None:
    name = path.name
    return next((name[: -len(s)] for s in sorted(NIFTI_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def label_volume(image: Path) -> Path | None:
    """The label volume beside a NIfTI image volume, or None."""
    stem = _nifti_stem(image)
    if stem is None:
        return None
    stems = [stem + s for s in LABEL_VOLUME_SUFFIXES]
    if "_" in stem:  # BraTS: <case>_flair.nii.gz beside <case>_seg.nii.gz
        stems.append(stem.rsplit("_", 1)[0] + "_seg")
    for s in stems:
        for ext in (".nii.gz", ".nii"):
            p = image.parent / f"{s}{ext}"
            if p.is_file() and p != image:
                return p
    return None


def _nifti_label(record, ctx: _Context) -> Outline | None:
    if record.frame_name != "slice":
        return None
    path = label_volume(Path(record.path))
    if path is None:
        return None
    from engine.data.readers import nifti

    try:
        image_shape = nifti.volume_shape(Path(record.path))
        label_shape = nifti.volume_shape(path)
        if image_shape != label_shape:
            raise AnnotationError(path, f"label volume shape {label_shape} differs from the image's {image_shape}")
        # the image reader's own orientation of slice k (rows anterior first, columns right first)
        pixels = nifti.canonical_slice(path, record.frame).T[::-1, ::-1] != 0
    except InputError as exc:
        raise AnnotationError(path, str(exc)) from None
    # a slice without tumour in the label volume has no outline (nothing to score), not a problem
    return Outline("mask", path, pixels=np.ascontiguousarray(pixels)) if pixels.any() else None


def _read_csv(root: Path) -> tuple[dict[Path, list[Box]], list]:
    """boxes.csv at ``root``: boxes by absolute image path, normalised with each image's own size."""
    from PIL import Image

    path = root / BOXES_CSV
    out: dict[Path, list[Box]] = {}
    problems = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return out, [AnnotationError(path, f"cannot read: {exc}")]
    need = ("image", "x_min", "y_min", "x_max", "y_max")
    if rows and not all(k in rows[0] for k in need):
        return out, [AnnotationError(path, f"needs the columns {', '.join(need)}; found {', '.join(rows[0])}", 1)]
    sizes: dict[Path, tuple[int, int]] = {}
    for lineno, row in enumerate(rows, 2):
        image = (root / str(row["image"]).strip()).resolve()
        try:
            if image not in sizes:
                with Image.open(image) as im:
                    sizes[image] = im.size
            width, height = sizes[image]
            x0, y0, x1, y1 = (float(row[k]) for k in need[1:])
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ValueError(f"corners ({x0:g}, {y0:g}) - ({x1:g}, {y1:g}) do not lie inside the "
                                 f"{width}x{height} image with x_min < x_max, y_min < y_max")
        except (OSError, ValueError, TypeError) as exc:
            problems.append(AnnotationError(path, f"row for {row['image']!r}: {exc}", lineno))
            continue
        out.setdefault(image, []).append(((x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                                          (x1 - x0) / width, (y1 - y0) / height))
    return out, problems


def _csv(record, ctx: _Context) -> Outline | None:
    if ctx.root is None or record.frame_name:
        return None
    if ctx.csv_boxes is None:
        ctx.csv_boxes, ctx.csv_problems = _read_csv(ctx.root) if (ctx.root / BOXES_CSV).is_file() else ({}, [])
    boxes = ctx.csv_boxes.get(Path(record.path).resolve())
    return Outline("box", ctx.root / BOXES_CSV, boxes=tuple(boxes)) if boxes else None


#: name -> reader, tried in this order; the first that finds an annotation wins.
ANNOTATION_READERS: dict[str, Callable] = {"yolo": _yolo, "mask": _mask, "nifti-label": _nifti_label,
                                           "csv": _csv}


@dataclass
class Annotations:
    """Per record its Outline (None: not annotated or unreadable), and the problems as listed."""

    outlines: list[Outline | None]
    problems: list[dict]

    @property
    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outlines:
            if o is not None:
                out[o.kind] = out.get(o.kind, 0) + 1
        return dict(sorted(out.items()))


def read_annotations(records: Sequence, root: Path | None = None, shown: Callable | None = None) -> Annotations:
    """Every record's outline, by the first reader that finds one (``ANNOTATION_READERS``).

    ``root``: the data root (paths in problems are relative to it; ``boxes.csv`` lies there).
    ``shown(record)``: how a problem names the image where file names may carry identity
    (engine.data.display_path); the annotation's own file is then named only by its kind.
    A problem is ``{"path", "line", "reason"}``; the CSV's row problems are listed once each."""
    from engine.paths import relative_to_root

    ctx = _Context(Path(root) if root is not None else None)
    outlines, problems = [], []

    def listed(exc: AnnotationError, record=None) -> dict:
        where = relative_to_root(exc.path, ctx.root) if record is None or shown is None else \
            f"{shown(record)} (annotation {exc.path.name[len(Path(record.path).stem):] or exc.path.suffix})"
        return {"path": str(where), "line": exc.line, "reason": exc.reason}

    for r in records:
        found = None
        for read in ANNOTATION_READERS.values():
            try:
                found = read(r, ctx)
            except AnnotationError as exc:
                problems.append(listed(exc, r if getattr(r, "ref", None) else None))
                found = None
                break
            if found is not None:
                break
        outlines.append(found)
    problems += [listed(p) for p in ctx.csv_problems]
    return Annotations(outlines, problems)


def is_annotation_file(path: Path) -> bool:
    """Whether discovery should skip ``path``: a mask image, a file in a ``masks/`` folder, or a
    NIfTI label volume (by the names above)."""
    if path.parent.name == MASK_FOLDER:
        return True
    stem = _nifti_stem(path)
    if stem is not None:
        return stem.endswith(LABEL_VOLUME_SUFFIXES)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path.name[: -len(path.suffix)].endswith(MASK_SUFFIXES)
    return False


__all__ = ["ANNOTATION_READERS", "AnnotationError", "Annotations", "Box", "Outline", "as_outline",
           "is_annotation_file", "label_volume", "parse_yolo", "read_annotations", "read_mask_image"]
