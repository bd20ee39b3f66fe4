"""What every reader shares: a frame reference, the windowing options, the kept metadata, the
percentile window and the rule that a reader fails only with ``InputError``.

No format library is imported here; pydicom and nibabel load only when a file of theirs is read.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.errors import InputError

#: "auto": the window stored in the file when it has a usable one, else the percentile window;
#: "dicom": the stored window only (a file without one is unreadable, with that reason);
#: "percentile": always the percentile window, stored windows ignored.
WINDOW_MODES = ("auto", "dicom", "percentile")


@dataclass(frozen=True)
class Windowing:
    """How a frame's values (after the modality LUT) become 0..255 grey.

    The stored window is a DICOM VOI LUT or WindowCenter/WindowWidth (the first of several), or a
    NIfTI header's ``cal_min``/``cal_max``. The percentile window maps the frame's own
    ``percentiles[0]``-th percentile to 0 and its ``percentiles[1]``-th to 255 (per frame, finite
    values only). 8-bit plain images (JPEG, 8-bit PNG) are never windowed: their values are already
    grey levels.
    """

    mode: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self):
        if self.mode not in WINDOW_MODES:
            raise InputError(f"windowing mode {self.mode!r} is not one of {', '.join(WINDOW_MODES)}")
        try:
            lo, hi = (float(p) for p in self.percentiles)
        except (TypeError, ValueError):
            raise InputError(f"windowing percentiles must be two numbers, got {self.percentiles!r}") from None
        if not (0.0 <= lo < hi <= 100.0):
            raise InputError(f"windowing percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", (lo, hi))


@dataclass(frozen=True)
class SliceSelection:
    """Which axial slices of a volume become frames: ``start`` <= i < ``stop``, every ``every``-th.

    Indices count canonical axial slices from inferior to superior (after reorientation to RAS+),
    so one selection means the same anatomy whatever order the file stores its axes in.
    """

    start: int = 0
    stop: int | None = None
    every: int = 1

    def __post_init__(self):
        for name in ("start", "every") + (("stop",) if self.stop is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"slice selection: {name} must be a whole number, got {value!r}")
        if self.start < 0 or self.every < 1 or (self.stop is not None and self.stop <= self.start):
            raise InputError(f"slice selection needs 0 <= start < stop and every >= 1, got start={self.start}, "
                             f"stop={self.stop}, every={self.every}")

    @classmethod
    def parse(cls, value: "SliceSelection | str | int | list | tuple | None") -> "SliceSelection":
        """``"all"`` (or None), ``[start, stop]`` (stop exclusive) or ``k`` (every k-th slice from 0)."""
        if isinstance(value, SliceSelection):
            return value
        if value is None or value == "all":
            return cls()
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(every=value)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return cls(start=value[0], stop=value[1])
        raise InputError(f'slice selection must be "all", [start, stop] or a step k, got {value!r}')

    def indices(self, n: int) -> list[int]:
        stop = n if self.stop is None else min(self.stop, n)
        return list(range(self.start, stop, self.every))

    def __str__(self) -> str:
        return f"start={self.start}, stop={'end' if self.stop is None else self.stop}, every={self.every}"


@dataclass(frozen=True, order=True)
class FrameRef:
    """One 2-D image inside a file: a DICOM frame, a NIfTI axial slice, a TIFF page (else index 0)."""

    path: Path
    index: int = 0
    kind: str = "plain"  # "dicom" | "nifti" | "plain"

    def __str__(self) -> str:
        return str(self.path) if self.kind == "plain" and self.index == 0 else f"{self.path}#{self.index}"


@dataclass(frozen=True)
class ImageMeta:
    """The metadata a reader lets out of a file; every field may be None (not recorded).

    ``patient_id`` (DICOM PatientID) and ``study`` (StudyInstanceUID) are raw and linkable: they are
    here only so that the data stage can group images by patient and study, and MUST be replaced by
    keyed hashes (HMAC) before anything leaves the data stage. They are left out of ``repr``.
    Names, birth dates, accession numbers, referring physicians and every other identifying header
    field never leave the reader (docs/data.md).
    """

    patient_id: str | None = field(default=None, repr=False)
    study: str | None = field(default=None, repr=False)
    site: str | None = None  # InstitutionName
    manufacturer: str | None = None
    model: str | None = None  # ManufacturerModelName
    field_strength: float | None = None  # tesla
    sex: str | None = None  # "F" | "M" | "O"
    age: float | None = None  # years; months, weeks and days as fractions of a year


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn anything a format library raises into one ``InputError`` line naming the file."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom, nibabel and PIL raise many types for broken files
        raise InputError(f"cannot read {what} {str(path)!r}: {one_line(exc)}") from None


def scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 255 linearly, clipped and rounded; non-finite values become 0.

    A zero-width window (``hi <= lo``) thresholds: above ``lo`` is 255, the rest 0.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    with np.errstate(invalid="ignore", over="ignore"):
        if hi > lo:
            out = (v - lo) / (hi - lo) * 255.0
        else:
            out = np.where(v > lo, 255.0, 0.0)
    out = np.where(finite, out, 0.0)
    return np.rint(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """The frame's own percentile window (finite values only) as uint8."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.zeros(v.shape, np.uint8)
    lo, hi = np.percentile(finite, percentiles)
    return scale_to_uint8(v, float(lo), float(hi))


def as_float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
