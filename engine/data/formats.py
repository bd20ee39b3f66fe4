"""What an image file is, and how one is opened safely: the one place both the data stage and the
integrity audit take file types and PIL's safety guards from.

* the suffix sets (``IMAGE_SUFFIXES`` for what PIL decodes, ``DICOM_SUFFIXES``, ``NIFTI_SUFFIXES``)
  and file-type detection: ``is_dicom_path`` / ``is_nifti_path`` / ``reader_kind`` (discovery's
  question: is this file read through ``engine.data.readers``?) and ``file_kind`` (the readers'
  question: which reader?);
* the guards every decode keeps: ``check_pixel_limit`` (PIL's decompression-bomb limit, raised as
  ``UnreadableImage``) and ``strict_decoding`` (truncated files fail).

Imports nothing from engine but the standard library; PIL loads only when a guard runs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

#: Plain images, decoded by PIL.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: ``Path.suffix`` of every image file name with a known suffix (``x.nii.gz`` has ``.gz``).
IMAGE_FILE_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES | frozenset(Path("x" + s).suffix for s in NIFTI_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_path(path: Path) -> bool:
    """A DICOM file by suffix, or a file named without a known suffix (``IM0001``, a UID such as
    ``1.2.840.1234``) that starts like DICOM (``DICM`` after the 128-byte preamble)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES or not (suffix == "" or suffix[1:].isdigit()):
        return False
    return is_dicom_file(path)


def is_nifti_path(path: Path) -> bool:
    """A NIfTI volume by name: ``.nii`` or ``.nii.gz``."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def reader_kind(path: Path) -> str | None:
    """"nifti" or "dicom" for a file decoded through ``engine.data.readers`` (windowed, possibly
    several frames); None for a plain image, which PIL decodes."""
    if is_nifti_path(path):
        return "nifti"
    return "dicom" if is_dicom_path(path) else None


def is_image_file(p: Path) -> bool:
    """A file discovery lists: a plain image by suffix, a NIfTI volume or a DICOM file."""
    return p.suffix.lower() in IMAGE_SUFFIXES or is_nifti_path(p) or is_dicom_path(p)


def file_kind(path: Path) -> str | None:
    """"dicom", "nifti" or "plain" by the file's name; a name without a known suffix (DICOM exports
    are often called ``IM0001`` or by a UID) is DICOM when the file starts like one; else None."""
    path = Path(path)
    if is_nifti_path(path):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in IMAGE_SUFFIXES:
        return "plain"
    return "dicom" if path.is_file() and is_dicom_file(path) else None


# ---------------------------------------------------------------------------------------------
# The guards every decode keeps


class UnreadableImage(Exception):
    """The file cannot be decoded as an image; ``reason`` is the user-facing explanation."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_pixel_limit(img) -> None:
    """Raise ``UnreadableImage`` when ``img`` (a PIL image, opened, not loaded) is larger than PIL's
    decompression-bomb limit. PIL only warns up to twice the limit, so an 88 KB PNG would decode
    to 90 Mpixel. Checked here, not via warnings.catch_warnings: that is not thread-safe."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
        raise UnreadableImage(
            f"{img.width}x{img.height} pixels exceeds PIL's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS} pixels)"
        )


@contextlib.contextmanager
def strict_decoding():
    """Truncated files must fail to decode during the audit. WeasyPrint sets PIL's global
    LOAD_TRUNCATED_IMAGES on import, so a report rendered earlier in the same process would
    otherwise let a broken JPEG pass as a half-grey image."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


__all__ = ["DICOM_SUFFIXES", "IMAGE_FILE_SUFFIXES", "IMAGE_SUFFIXES", "NIFTI_SUFFIXES", "UnreadableImage",
           "check_pixel_limit", "file_kind", "is_dicom_file", "is_dicom_path", "is_image_file", "is_nifti_path",
           "reader_kind", "strict_decoding"]
