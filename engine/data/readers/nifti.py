"""NIfTI reader (nibabel): axial slices of a 3-D volume in canonical orientation.

A volume is read as ``nib.as_closest_canonical`` would give it (RAS+: x to the patient's right,
y anterior, z superior), but lazily: only the one stored slab that becomes the asked-for canonical
axial slice is read from the file. Frame ``k`` is canonical axial slice ``k`` (inferior to superior).
Each slice is shown like a DICOM axial image (radiological convention): anterior at the top, the
patient's right on the image's left. Values are the header-scaled ones (``scl_slope``/``scl_inter``);
the stored window is ``cal_min``/``cal_max`` when the header sets one.

NIfTI headers carry no patient, site or scanner fields: ``metadata`` returns an empty ``ImageMeta``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.data.readers.common import (ImageMeta, SliceSelection, Windowing, as_float, percentile_window, reading,
                                        scale_to_uint8)
from engine.errors import InputError

def _load(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"cannot read NIfTI {str(path)!r}: not a NIfTI-1/NIfTI-2 image ({type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise InputError(f"cannot read NIfTI {str(path)!r}: shape {shape} is not an image")
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise InputError(f"cannot read NIfTI {str(path)!r}: shape {shape} holds {int(np.prod(shape[3:]))} "
                         "volumes; only 3-D volumes are read")
    return img, shape


def _orientation(img, path: Path) -> tuple[np.ndarray, int, bool]:
    """(orientation array, stored axis that becomes canonical z, whether it is reversed)."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(img.affine)
    if np.isnan(ornt).any():
        raise InputError(f"cannot read NIfTI {str(path)!r}: its affine is degenerate; no orientation can be "
                         "derived from it")
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return ornt, axis, bool(ornt[axis, 1] == -1)


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (tuple(shape[:3]) + (1,) * 3)[:3]


def frames(path: Path, slices: SliceSelection) -> list[int]:
    """The canonical axial slice indices that ``slices`` selects (header only)."""
    with reading(path, "NIfTI"):
        img, shape = _load(path)
        _, axis, _ = _orientation(img, path)
        n = _shape3(shape)[axis]
        chosen = slices.indices(n)
        if not chosen:
            raise InputError(f"cannot read NIfTI {str(path)!r}: the slice selection ({slices}) selects none of "
                             f"its {n} axial slices")
        return chosen


def volume_shape(path: Path) -> tuple[int, int, int]:
    """The volume's stored (x, y, z) shape (header only): a label volume must match its image's."""
    with reading(path, "NIfTI"):
        return _shape3(_load(path)[1])


def canonical_slice(path: Path, index: int) -> np.ndarray:
    """Canonical (RAS+) axial slice ``index`` as a float (x, y) array, header scaling applied."""
    with reading(path, "NIfTI"):
        return _canonical_slice(*_load(path), path, index)


def _canonical_slice(img, shape: tuple[int, ...], path: Path, index: int) -> np.ndarray:
    from nibabel.orientations import apply_orientation

    ornt, axis, reverse = _orientation(img, path)
    n = _shape3(shape)[axis]
    if not 0 <= index < n:
        raise InputError(f"cannot read NIfTI {str(path)!r}: axial slice {index} asked for, the volume has {n}")
    stored = n - 1 - index if reverse else index
    if len(shape) < 3:
        slab = np.asanyarray(img.dataobj).reshape(_shape3(shape))
    else:
        slicer = [slice(None)] * 3 + [0] * (len(shape) - 3)
        slicer[axis] = slice(stored, stored + 1)
        slab = np.asanyarray(img.dataobj[tuple(slicer)])
    return apply_orientation(slab, ornt)[:, :, 0].astype(np.float64)


def read(path: Path, index: int, windowing: Windowing) -> np.ndarray:
    """Canonical axial slice ``index`` as (rows, columns) uint8 grey, DICOM-like display orientation."""
    with reading(path, "NIfTI"):
        img, shape = _load(path)
        values = _canonical_slice(img, shape, path, index).T[::-1, ::-1]  # rows: anterior first; columns: right first
        lo, hi = as_float(img.header["cal_min"]), as_float(img.header["cal_max"])
        stored = lo is not None and hi is not None and hi > lo
        if windowing.mode == "percentile" or (windowing.mode == "auto" and not stored):
            return percentile_window(values, windowing.percentiles)
        if not stored:
            raise InputError(f"cannot read NIfTI {str(path)!r}: windowing mode 'dicom' needs a stored window and "
                             "the header sets no cal_min < cal_max; use mode 'auto' or 'percentile'")
        return scale_to_uint8(values, lo, hi)


def metadata(path: Path) -> ImageMeta:
    with reading(path, "NIfTI"):
        _load(path)
    return ImageMeta()
