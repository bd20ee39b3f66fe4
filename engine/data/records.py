"""The record of one image, and what every layout (folders, a labels CSV, ``auditrun evaluate``'s
folder) does to records alike: patient pseudonyms and metadata from DICOM headers
(``with_patients``), neutral file references (``with_references``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from engine.data.formats import is_dicom_path
from engine.errors import InputError


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute
    split: str  # "train" | "test" (validation is carved from "train" later)
    label: str  # canonical class name
    # The image inside the file: a DICOM frame or a NIfTI canonical axial slice (0 for a file of one
    # image). A record is identified by ``key`` = (path, frame), never by ``path`` alone.
    frame: int = 0
    # What a frame is called where people read it ("slice" for NIfTI, "frame" for a multi-frame
    # DICOM); None for a file of one image, shown by its path alone (``record_label``).
    frame_name: str | None = field(default=None, compare=False)
    # Why discovery could not list the file's frames (the reader's one line, e.g. a slice selection
    # that selects none of a volume's slices): ``readable`` and the integrity audit list the record
    # as unreadable with it instead of decoding some frame the selection did not ask for.
    unreadable: str | None = field(default=None, compare=False)
    # The patient's pseudonym (engine.data.identity: HMAC of the DICOM PatientID), never the raw id;
    # None when the file carries no patient id (plain images).
    patient: str | None = field(default=None, compare=False)
    # site / scanner / sex / age where the file's header has them (DICOM); never identifying fields.
    meta: dict | None = field(default=None, compare=False, hash=False)
    # How artefacts name the file when the data holds patient ids (``identity.file_reference``:
    # "<patient pseudonym>/f-<keyed hash>.dcm"), since file names may carry identity; None: the
    # path relative to the data root. Always shown through ``identity.display_path``.
    ref: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[Path, int]:
        """The record's identity: one file can hold many records (frames, slices)."""
        return (self.path, self.frame)


def _tesla(value: float | None) -> str | None:
    """A field strength as scanners are named by it (``3 T``, ``1.5 T``)."""
    return None if value is None else f"{value:g} T"


def with_patients(records: Sequence[ImageRecord], pseudonym: Callable[[str], str],
                  root: Path | None = None) -> list[ImageRecord]:
    """DICOM records with their patient pseudonym and metadata (site, scanner, sex, age) from the
    header; the raw patient id never leaves this function. A header that cannot be read leaves the
    record without them (the integrity audit or ``readable`` lists the file with the reader's reason).

    With ``root``, when any file carries a patient id, every record (DICOM or not: any file name of
    a patient data set may carry identity) also gets ``ref``, the neutral name artefacts show
    (``identity.file_reference``)."""
    from engine.data.readers import read_metadata

    out = []
    known: dict[Path, tuple[str | None, dict | None] | None] = {}  # the frames of a file share its header
    for r in records:
        if not is_dicom_path(r.path):
            out.append(r)
            continue
        if r.path not in known:
            try:
                meta = read_metadata(r.path)
            except InputError:
                known[r.path] = None
            else:
                scanner = " ".join(x for x in (meta.manufacturer, meta.model, _tesla(meta.field_strength)) if x) or None
                info = {k: v for k, v in (("site", meta.site), ("scanner", scanner), ("sex", meta.sex),
                                          ("age", meta.age)) if v is not None}
                known[r.path] = (pseudonym(meta.patient_id) if meta.patient_id else None, info or None)
        found = known[r.path]
        out.append(r if found is None else replace(r, patient=found[0], meta=found[1]))
    return with_references(out, root, pseudonym) if root is not None else out


def with_references(records: Sequence[ImageRecord], root: Path, pseudonym: Callable[[str], str]) -> list[ImageRecord]:
    """When any record carries a patient, every record gets its neutral file reference
    (``identity.file_reference``: artefacts never show a path, which may be built from the
    patient's name); otherwise the records are returned as they are."""
    from engine.data.identity import file_reference
    from engine.paths import relative_to_root

    if not any(r.patient for r in records):
        return list(records)
    return [replace(r, ref=file_reference(relative_to_root(r.path, root), r.patient, pseudonym)) for r in records]


__all__ = ["ImageRecord", "with_patients", "with_references"]
