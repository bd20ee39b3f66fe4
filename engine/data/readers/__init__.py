"""One interface over the image formats of the data stage, chosen by file type.

* ``frames_of(path)`` -> the file's 2-D images as ``FrameRef``: one per DICOM frame, one per selected
  NIfTI axial slice, one for a plain image (one per page of a multi-page TIFF);
* ``read_frame(ref, windowing)`` -> that image as (H, W) uint8 grey, after the modality LUT and the
  window (``Windowing``);
* ``read_metadata(path)`` -> ``ImageMeta``: patient, study, site, scanner, sex, age (DICOM headers;
  empty for NIfTI and plain images).

``frames_of`` and ``read_metadata`` read headers only; ``read_frame`` decodes pixels, so a file whose
header is fine and whose pixel data is broken fails there. A file that cannot be read (unknown type,
broken, no pixel data, compressed without an installed decoder, a selection that selects nothing)
raises ``engine.errors.InputError`` with one line naming the file and the reason, and nothing else:
callers list it as unreadable with that reason.

Discovery expands DICOM files and NIfTI volumes into frames with ``frames_of``; integrity, training
and ``evaluate`` read each frame with ``read_frame`` and the manifest's windowing (docs/data.md,
"Frames in the audit").
Format modules: ``dicom`` (pydicom), ``nifti`` (nibabel), ``plain`` (PIL); each loads its library
only when a file of its type is read.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np

from engine.data.formats import file_kind
from engine.data.readers.common import WINDOW_MODES, FrameRef, ImageMeta, SliceSelection, Windowing
from engine.errors import InputError

__all__ = ["FORMAT_KINDS", "WINDOW_MODES", "FrameRef", "ImageMeta", "SliceSelection", "Windowing", "file_kind",
           "frames_of", "read_frame", "read_metadata"]

#: File kind -> the module that reads it.
FORMAT_KINDS = {"dicom": "engine.data.readers.dicom", "nifti": "engine.data.readers.nifti",
                "plain": "engine.data.readers.plain"}


def _reader(kind: str):
    return import_module(FORMAT_KINDS[kind])


def _kind_or_fail(path: Path) -> str:
    kind = file_kind(path)
    if kind is None:
        raise InputError(f"cannot read {str(path)!r}: not a supported image file (DICOM, NIfTI .nii/.nii.gz, "
                         "or JPEG/PNG/TIFF/BMP/GIF/WebP)")
    return kind


def frames_of(path: Path, slices: SliceSelection | str | int | list | tuple | None = None) -> list[FrameRef]:
    """The 2-D images in ``path``. ``slices`` selects NIfTI axial slices (``SliceSelection.parse``:
    "all", [start, stop] or every k-th); DICOM files give every frame, plain images one (a TIFF one
    per page). Raises InputError when the file cannot be read or nothing is selected."""
    path = Path(path)
    kind = _kind_or_fail(path)
    if kind == "nifti":
        indices = _reader(kind).frames(path, SliceSelection.parse(slices))
    else:
        indices = range(_reader(kind).frames(path))
    return [FrameRef(path, int(i), kind) for i in indices]


def read_frame(ref: FrameRef, windowing: Windowing | None = None) -> np.ndarray:
    """The frame as (H, W) uint8 grey (``Windowing()``, mode "auto", when None)."""
    if ref.kind not in FORMAT_KINDS:
        raise InputError(f"cannot read {str(ref.path)!r}: unknown frame kind {ref.kind!r}")
    return _reader(ref.kind).read(Path(ref.path), int(ref.index), windowing or Windowing())


def read_metadata(path: Path) -> ImageMeta:
    """The metadata the reader lets out of ``path`` (see ``ImageMeta``; identifying fields never)."""
    path = Path(path)
    return _reader(_kind_or_fail(path)).metadata(path)
