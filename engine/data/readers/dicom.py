"""DICOM reader (pydicom): frames, display pixels and the kept header fields.

Pixels: decoded frame -> modality LUT (ModalityLUTSequence or RescaleSlope/RescaleIntercept) ->
VOI (VOILUTSequence, else WindowCenter/WindowWidth with VOILUTFunction; or the percentile window,
see ``Windowing``) -> 0..255 -> inverted for MONOCHROME1. Enhanced (multi-frame) objects may keep
rescale and window per frame in their functional groups; the frame's own values win over the
shared ones, which win over the top-level ones.

Identity: every read names the tags it needs (``dcmread(specific_tags=...)``), so names, birth
dates, accession numbers and the like are not even parsed when pixels are read; metadata reads only
the tags of ``ImageMeta`` plus the dates an age can be computed from.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.data.readers.common import (ImageMeta, Windowing, as_float, one_line, percentile_window, reading,
                                        scale_to_uint8)
from engine.errors import InputError

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
#: Top-level and functional-group elements that decide how a frame's values are displayed.
_LUT_KEYWORDS = ("ModalityLUTSequence", "RescaleSlope", "RescaleIntercept", "VOILUTSequence", "WindowCenter",
                 "WindowWidth", "VOILUTFunction")
_META_KEYWORDS = ("SpecificCharacterSet", "PatientID", "StudyInstanceUID", "InstitutionName", "Manufacturer",
                  "ManufacturerModelName", "MagneticFieldStrength", "PatientSex", "PatientAge",
                  # read only to compute an age when PatientAge is missing; never returned
                  "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate")
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DATE = re.compile(r"^\s*(\d{4})(\d{2})(\d{2})")


@lru_cache(maxsize=1)
def _pixel_tags() -> tuple[int, ...]:
    from pydicom.datadict import DicomDictionary, tag_for_keyword

    group_0028 = [tag for tag, entry in DicomDictionary.items() if tag >> 16 == 0x0028 and entry[3] == ""]
    extra = [tag_for_keyword(k) for k in _FUNCTIONAL_GROUPS + ("SOPClassUID",)]
    return tuple(sorted(set(group_0028) | set(extra) | {0x7FE00001, 0x7FE00002, 0x7FE00008, 0x7FE00009, 0x7FE00010}))


def _pydicom():
    """pydicom, quiet about the files it reads.

    * Value validation on reading is off: pydicom validates each value as it converts it and warns
      (and logs) about an invalid one by quoting it: "Invalid value for VR UI: '<the study UID>'".
      The reader never relies on that validation; it checks what it uses.
    * Its other warnings about a file ("End of file reached before delimiter found in file
      /data/DOE_JOHN/IM1") name the file, whose name may identify a patient.
    Both would reach stderr, the pydicom logger and a run's log, which the identity policy
    forbids; the reader's InputError is the one message a user gets. Set on every read (the same
    values each time), so a caller that resets the warning filters cannot undo it.
    """
    import logging
    import warnings

    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    return pydicom


def _read(path: Path, tags: tuple[int, ...], *, pixels: bool):
    from pydicom.errors import InvalidDicomError

    pydicom = _pydicom()

    try:
        return pydicom.dcmread(path, specific_tags=list(tags), defer_size=None if pixels else "64 KB")
    except InvalidDicomError:
        raise InputError(f"cannot read DICOM {str(path)!r}: not a DICOM file (no 'DICM' marker after the "
                         "128-byte preamble)") from None


def _check_image(ds, path: Path) -> int:
    """The number of frames; InputError when the object has no pixels this reader can decode."""
    from pydicom.pixels import get_decoder

    where = f"cannot read DICOM {str(path)!r}"
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"{where}: no pixel data (not an image object)")
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if pi not in _MONOCHROME + _COLOUR:
        raise InputError(f"{where}: photometric interpretation {pi or '(missing)'!r} is not supported "
                         f"(read: {', '.join(_MONOCHROME + _COLOUR)})")
    tsyntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if tsyntax is None:
        raise InputError(f"{where}: the file meta information has no transfer syntax")
    if tsyntax.is_encapsulated:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            raise InputError(f"{where}: pixel data compressed as {tsyntax.name} ({tsyntax}), which no installed "
                             "DICOM decoder supports") from None
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "no plugin"
            raise InputError(f"{where}: pixel data compressed as {tsyntax.name} ({tsyntax}) and no decoder plugin "
                             f"is installed ({_install_hint(tsyntax)}; missing: {missing})")
    frames = ds.get("NumberOfFrames")
    n = int(frames) if frames not in (None, "") else 1
    if n < 1:
        raise InputError(f"{where}: NumberOfFrames is {n}")
    _check_frames_fit(ds, n, tsyntax, path, where)
    return n


def _check_frames_fit(ds, n: int, tsyntax, path: Path, where: str) -> None:
    """Refuse a frame larger than PIL's decompression-bomb limit, and a NumberOfFrames the file
    is too small to hold. A corrupt count (99,999,999 in a
    6 kB file) would otherwise make ``frames_of`` list that many frames, for minutes, before any
    decode could fail. Each native frame needs its full size; each compressed one at least an
    8-byte item header (the
    data set of a deflated file is inflated first)."""
    from PIL import Image

    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 0)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
        samples = 2  # chroma subsampled: Y Y Cb Cr per two pixels
    if Image.MAX_IMAGE_PIXELS and rows * columns > Image.MAX_IMAGE_PIXELS:
        # the limit plain images have: a decoder allocates the whole frame (8 GB for 65535 x 65535
        # 16-bit) before it finds that a few kB of compressed data cannot fill it
        raise InputError(f"{where}: a frame of {columns}x{rows} pixels exceeds the decompression-bomb limit "
                         f"({Image.MAX_IMAGE_PIXELS} pixels)")
    per_frame = 8 if tsyntax.is_encapsulated else max(1, (rows * columns * samples * bits + 7) // 8)
    size = path.stat().st_size
    # a deflated dataset holds up to 1032 times its size (deflate's largest ratio)
    room = size * (1032 if tsyntax.is_deflated else 1)
    if n * per_frame > room:
        raise InputError(f"{where}: NumberOfFrames is {n}, but the file ({size} bytes) cannot hold that many "
                         f"frames of {per_frame} bytes; the header is corrupt or the file truncated")


def _install_hint(tsyntax) -> str:
    from pydicom import uid

    if tsyntax in uid.JPEG2000TransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-openjpeg"
    if tsyntax in uid.JPEGTransferSyntaxes or tsyntax in uid.JPEGLSTransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-libjpeg"
    return "see pydicom's pixel data decoders"


def frames(path: Path) -> int:
    """How many frames the DICOM file holds (header only; pixel data is not read)."""
    with reading(path, "DICOM"):
        return _check_image(_read(path, _pixel_tags(), pixels=False), path)


def _frame_view(ds, index: int):
    """A small dataset with the elements that display frame ``index``: top level, then the shared
    functional groups, then the frame's own (a later one wins)."""
    from pydicom.dataset import Dataset

    view = Dataset()
    if getattr(ds, "file_meta", None) is not None:
        view.file_meta = ds.file_meta
    for keyword in _LUT_KEYWORDS + ("PhotometricInterpretation", "BitsStored", "PixelRepresentation"):
        if keyword in ds:
            view.add(ds[keyword])
    for groups, i in zip(_FUNCTIONAL_GROUPS, (0, index)):
        seq = ds.get(groups)
        if not seq or len(seq) <= i:
            continue
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            inner = seq[i].get(macro)
            if inner:
                for keyword in _LUT_KEYWORDS:
                    if keyword in inner[0]:
                        view.add(inner[0][keyword])
    return view


def _first(value):
    try:
        return value[0] if not isinstance(value, (str, bytes)) and len(value) > 0 else value
    except TypeError:
        return value


def _stored_window(view) -> tuple[str | None, str]:
    """("lut" | "window", "") when the frame carries a usable VOI, else (None, why not)."""
    seq = view.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        bits = int(seq[0].LUTDescriptor[2])
        if bits == 8 or 10 <= bits <= 16:
            return "lut", ""
        return None, f"its VOI LUT has {bits} bits per entry (8 or 10..16 are read)"
    if "WindowCenter" not in view or "WindowWidth" not in view:
        return None, "it has neither a VOI LUT nor WindowCenter/WindowWidth"
    center, width = as_float(_first(view.WindowCenter)), as_float(_first(view.WindowWidth))
    function = str(view.get("VOILUTFunction") or "LINEAR").strip().upper()
    if center is None or width is None:
        return None, "its WindowCenter/WindowWidth are not numbers"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        return None, f"its VOILUTFunction {function!r} is unknown"
    if width < (1.0 if function == "LINEAR" else 1e-12):
        return None, f"its WindowWidth {width:g} is too small for {function}"
    return "window", ""


def _window(values: np.ndarray, view, windowing: Windowing, path: Path) -> np.ndarray:
    """Modality values of one frame -> 0..255 (before any MONOCHROME1 inversion)."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi_lut
    from pydicom.sequence import Sequence

    kind, why_not = _stored_window(view)
    if windowing.mode == "percentile" or (windowing.mode == "auto" and kind is None):
        return percentile_window(values, windowing.percentiles)
    if kind is None:
        raise InputError(f"cannot read DICOM {str(path)!r}: windowing mode 'dicom' needs a stored window and "
                         f"{why_not}; use mode 'auto' or 'percentile'")
    # pydicom maps a window onto the output range of the dataset it is given: a stand-in that
    # says "8-bit unsigned, no rescale" makes that range 0..255.
    voi = Dataset()
    if getattr(view, "file_meta", None) is not None:
        voi.file_meta = view.file_meta  # the byte order of an OW LUT
    voi.PhotometricInterpretation, voi.BitsStored, voi.PixelRepresentation = "MONOCHROME2", 8, 0
    if kind == "lut":
        source = view.VOILUTSequence[0]
        entries, first, bits = (int(v) for v in source.LUTDescriptor)
        # pydicom indexes an 8-bit LUT through a uint8 array, which wraps pixel values above 255
        # (pydicom 3.0.2): the stand-in declares 16 bits per entry; the entries are the same.
        item = Dataset()
        item.LUTDescriptor = [entries, first, 16]
        item.add(source["LUTData"])
        voi.VOILUTSequence = Sequence([item])
        out = apply_voi_lut(np.rint(values).astype(np.int64), voi, index=0, prefer_lut=True)
        return scale_to_uint8(out, 0.0, float(2 ** bits - 1))
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in view:
            voi.add(view[keyword])
    return scale_to_uint8(apply_voi_lut(values, voi, index=0, prefer_lut=False), 0.0, 255.0)


def read(path: Path, index: int, windowing: Windowing) -> np.ndarray:
    """Frame ``index`` of a DICOM file as (rows, columns) uint8 grey."""
    from pydicom.pixels import apply_modality_lut, pixel_array

    with reading(path, "DICOM"):
        ds = _read(path, _pixel_tags(), pixels=True)
        n = _check_image(ds, path)
        if not 0 <= index < n:
            raise InputError(f"cannot read DICOM {str(path)!r}: frame {index} asked for, the file has {n}")
        arr = pixel_array(ds, index=index)
        pi = str(ds.PhotometricInterpretation).strip().upper()
        if pi in _COLOUR:  # decoded as RGB: to grey, windowed only when deeper than 8 bits
            grey = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            if int(ds.get("BitsStored") or 8) <= 8:
                return scale_to_uint8(grey, 0.0, 255.0)
            return percentile_window(grey, windowing.percentiles)
        view = _frame_view(ds, index)
        values = np.asarray(apply_modality_lut(arr, view), dtype=np.float64)
        out = _window(values, view, windowing, path)
        return (255 - out).astype(np.uint8) if pi == "MONOCHROME1" else out


def _raw_text(ds, keyword: str) -> str | None:
    """An element's text without pydicom's value conversion (and its warnings, which would quote
    the value): used for the dates that must never appear in a message."""
    item = ds.get_item(keyword)
    if item is None or item.value is None:
        return None
    value = item.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip() or None


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = "\\".join(str(v) for v in value)  # several values, as DICOM writes them (not "['A', 'B']")
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _date(text: str | None) -> date | None:
    match = _DATE.match(text or "")
    if not match:
        return None
    try:
        return date(*(int(g) for g in match.groups()))
    except ValueError:
        return None


def parse_age(text: str | None) -> float | None:
    """DICOM Age String (AS) in years: "045Y" -> 45, "006M" -> 0.5, "010W" and "020D" as fractions
    of a year (two decimals). A bare number is read as years; anything else is None."""
    match = _AGE.match(text or "")
    if not match:
        return None
    n, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    years = {"Y": n, "M": n / 12, "W": n * 7 / 365.25, "D": n / 365.25}[unit]
    return round(float(years), 2)


def _age(ds) -> float | None:
    age = parse_age(_raw_text(ds, "PatientAge"))
    if age is not None:
        return age
    born = _date(_raw_text(ds, "PatientBirthDate"))
    seen = next((d for d in (_date(_raw_text(ds, k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate"))
                 if d is not None), None)
    if born is None or seen is None or seen < born:
        return None
    return float(seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day)))  # whole years


def metadata(path: Path) -> ImageMeta:
    """The kept header fields (ImageMeta); identifying fields are read only to compute an age."""
    from pydicom.errors import InvalidDicomError

    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, specific_tags=list(_META_KEYWORDS), stop_before_pixels=True)
        sex = (_text(ds, "PatientSex") or "").upper()
        return ImageMeta(
            patient_id=_text(ds, "PatientID"),
            study=_text(ds, "StudyInstanceUID"),
            site=_text(ds, "InstitutionName"),
            manufacturer=_text(ds, "Manufacturer"),
            model=_text(ds, "ManufacturerModelName"),
            field_strength=as_float(_first(ds.get("MagneticFieldStrength"))),
            sex=sex if sex in ("F", "M", "O") else None,
            age=_age(ds),
        )
    except InvalidDicomError:
        raise InputError(f"cannot read DICOM {str(path)!r}: not a DICOM file (no 'DICM' marker after the "
                         "128-byte preamble)") from None
    except OSError as exc:
        raise InputError(f"cannot read DICOM {str(path)!r}: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        # the message is left out: it could quote a header value (a name, a date)
        raise InputError(f"cannot read DICOM metadata {str(path)!r}: malformed header ({type(exc).__name__})") from None
