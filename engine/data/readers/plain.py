"""Plain image reader (PIL): 8-bit JPEG/PNG/... as they are, 16-bit and float PNG/TIFF windowed.

8-bit images (modes L, RGB, P, ...) are already grey levels: converted to grey, never windowed.
16-bit and 32-bit images (modes I;16*, I, F) carry raw values: windowed like DICOM pixels, with the
percentile window (they store no window, so windowing mode 'dicom' refuses them). A multi-page TIFF
gives one frame per page. The same decompression-bomb limit and strict decoding as the integrity
audit apply. Plain images carry no patient metadata: ``metadata`` returns an empty ``ImageMeta``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.data.formats import check_pixel_limit, strict_decoding
from engine.data.readers.common import ImageMeta, Windowing, percentile_window, reading
from engine.errors import InputError

RAW_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _open(path: Path):
    from PIL import Image

    im = Image.open(path)
    check_pixel_limit(im)
    return im


def frames(path: Path) -> int:
    """1, or the page count of a multi-page TIFF (header only: pixels are decoded by ``read``)."""
    with reading(path, "image"), _open(path) as im:
        return int(getattr(im, "n_frames", 1)) if im.format == "TIFF" else 1


def read(path: Path, index: int, windowing: Windowing) -> np.ndarray:
    """Page ``index`` as (rows, columns) uint8 grey."""
    from PIL import ImageOps

    with reading(path, "image"), strict_decoding(), _open(path) as im:
        n = int(getattr(im, "n_frames", 1)) if im.format == "TIFF" else 1
        if not 0 <= index < n:
            raise InputError(f"cannot read image {str(path)!r}: page {index} asked for, the file has {n}")
        im.seek(index)
        im = ImageOps.exif_transpose(im)
        if im.mode not in RAW_MODES:
            return np.asarray(im.convert("L"), dtype=np.uint8)
        if windowing.mode == "dicom":
            raise InputError(f"cannot read image {str(path)!r}: windowing mode 'dicom' needs a stored window and "
                             f"a {im.mode} {im.format} image has none; use mode 'auto' or 'percentile'")
        return percentile_window(np.asarray(im, dtype=np.float64), windowing.percentiles)


def metadata(path: Path) -> ImageMeta:
    with reading(path, "image"), _open(path):
        pass
    return ImageMeta()
