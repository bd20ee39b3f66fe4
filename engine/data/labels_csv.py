"""Labels and per-image metadata from a CSV (``[data] labels = "labels.csv"``, issue 17).

Research sets often arrive as one folder of images (16-bit PNG, NIfTI, DICOM) and a table that
says what each image is. One row per image: a path relative to the data root, a class label, and
optional columns for the split and the metadata a DICOM header would give (patient, site,
scanner, sex, age). ``[data.columns]`` maps these roles to the CSV's own column names; a role
maps to the column of its own name when the CSV has one.

What is an error and what is skipped (docs/data.md, "Labels from a CSV"):

* Structural problems are an InputError (exit 2) naming the CSV, the row (a spreadsheet's
  numbering: the header is row 1) and the column: a missing column, an empty or unknown label, a
  path that escapes the data root or names a folder, a path listed twice, an unknown split, a sex
  or an age that cannot be read. Nothing is trained on a table that says something else.
* A listed file that does not exist is kept: the integrity audit (or ``readable`` with the audit
  off) lists it as unreadable with the reason and the run skips it, like any unreadable image
  (``integrity.fail_on_unreadable = true`` makes that an error). When *no* listed file exists the
  paths are wrong as a whole, and that is an error.

Patient ids are raw in the CSV and never leave this module: each is replaced at once by its
pseudonym (``engine.data.identity``, the same HMAC as a DICOM PatientID), and error messages never
quote one. The study column is checked for presence only; like DICOM's StudyInstanceUID it is
not used yet and is never stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from engine.errors import InputError

#: The roles a CSV column can play, in the order the docs list them.
ROLES = ("path", "label", "split", "patient", "study", "site", "manufacturer", "model", "scanner",
         "field_strength", "sex", "age")
REQUIRED_ROLES = ("path", "label")
#: Split values (lower-cased) and the split they mean; validation is always carved from train.
SPLIT_VALUES = {"train": "train", "training": "train", "test": "test", "testing": "test"}
#: Sex values (lower-cased) and their DICOM code; the empty ones mean "not recorded".
SEX_VALUES = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M",
              "o": "O", "other": "O"}
NOT_RECORDED = {"", "u", "unknown", "na", "n/a", "nan", "none", "null", "-"}
#: Oldest plausible age; above it a value is more likely a date or an id than an age.
MAX_AGE = 150.0


@dataclass(frozen=True)
class CsvRow:
    row: int  # spreadsheet row number: the header is row 1
    path: Path  # absolute, resolved
    label: str  # canonical class
    split: str | None  # "train" | "test", None without a split column
    patient: str | None = field(default=None, repr=False)  # RAW id: pseudonymised before it leaves
    meta: dict = field(default_factory=dict)  # site, scanner, field_strength, sex, age


def labels_file(root: Path, labels: str | os.PathLike) -> Path:
    """The CSV's path: ``labels`` as given when absolute, else relative to the data root."""
    path = Path(os.path.expanduser(str(labels)))
    return path if path.is_absolute() else Path(root) / path


def column_map(found: Sequence[str], columns: Mapping[str, str], where: str) -> dict[str, str]:
    """Role -> CSV column. Explicit ``columns`` must exist; other roles map to their own name when
    the CSV has that column. InputError naming the CSV, the role and the columns it has."""
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise InputError(f"data.columns: unknown role(s) {', '.join(map(repr, unknown))}; roles: {', '.join(ROLES)}")
    have = list(found)
    out = {}
    for role in ROLES:
        column = columns.get(role, role).strip()
        if column in have:
            out[role] = column
        elif role in columns or role in REQUIRED_ROLES:
            key = f"data.columns.{role} = {column!r}" if role in columns else f"the default {column!r}"
            raise InputError(f"{where}: row 1 has no column {column!r} for the {role} ({key}); its columns are "
                             f"{', '.join(map(repr, have))}. Map the role under [data.columns]")
    return out


def names_patients(root: Path, labels: str | os.PathLike, columns: Mapping[str, str]) -> bool:
    """True when the labels CSV has a patient column (its header row alone is read); False when it
    has none or cannot be read as a CSV (then no message quotes a row's path)."""
    import csv

    try:
        with open(labels_file(Path(root).resolve(), labels), newline="", encoding="utf-8-sig") as fh:
            header = [c.strip() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return columns.get("patient", "patient").strip() in header


def read_table(csv_file: Path):
    """The CSV as a DataFrame of stripped strings (nothing parsed as a number, so '007' stays)."""
    import pandas as pd

    where = str(csv_file)
    try:
        frame = pd.read_csv(csv_file, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False,
                            encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"labels CSV {where!r} (data.labels) does not exist") from None
    except IsADirectoryError:
        raise InputError(f"labels CSV {where!r} (data.labels) is a folder, not a CSV file") from None
    except OSError as exc:
        raise InputError(f"cannot read labels CSV {where!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"labels CSV {where!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"labels CSV {where!r} is empty: it needs a header row and one row per image") from None
    except pd.errors.ParserError as exc:
        # pandas names the line and the field counts, never a value
        raise InputError(f"labels CSV {where!r} is not a well-formed CSV: {' '.join(str(exc).split())}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    dupes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        raise InputError(f"{where}: row 1 repeats the column(s) {', '.join(map(repr, dupes))}")
    return frame.apply(lambda col: col.str.strip())


class _Cells:
    """One row's values by role, with errors that name the CSV, the row and the column."""

    def __init__(self, where: str, row: int, values: Mapping[str, str], cols: Mapping[str, str]):
        self.where, self.row, self.values, self.cols = where, row, values, cols

    def get(self, role: str) -> str:
        return self.values[self.cols[role]] if role in self.cols else ""

    def error(self, role: str, what: str) -> InputError:
        return InputError(f"{self.where}: row {self.row}, column {self.cols[role]!r}: {what}")


def _path(cells: _Cells, root: Path) -> Path:
    text = cells.get("path")
    if not text:
        raise cells.error("path", "the path is empty")
    if "\0" in text:
        raise cells.error("path", "the path contains a NUL character")
    # Resolved before the check: a link inside the root (``etclink -> /etc``) must not carry a
    # row out of it. ``root`` is resolved by the caller; an absolute path replaces it.
    try:
        path = (root / Path(text)).resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        raise cells.error("path", f"{text!r} cannot be resolved (a loop of symbolic links?)") from None
    try:
        path.relative_to(root)
    except ValueError:
        via = "" if Path(os.path.normpath(root / Path(text))) == path else f" (it resolves to {str(path)!r})"
        raise cells.error("path", f"{text!r} lies outside the data root {str(root)!r}{via}; paths are relative "
                                  "to the data root and must stay below it, links included") from None
    if _exists(path) is None:
        raise cells.error("path", f"{text!r} is a folder, not an image file")
    return path


def _label(cells: _Cells, aliases: Mapping[str, str]) -> str:
    text = cells.get("label")
    if not text:
        raise cells.error("label", "the label is empty")
    from engine.paths import folder_key

    canonical = aliases.get(folder_key(text))
    if canonical is None:
        raise cells.error("label", f"{text!r} is not a class; known labels: {', '.join(map(repr, sorted(aliases)))}. "
                                   "Add it under [data.aliases]")
    return canonical


def _split(cells: _Cells) -> str | None:
    if "split" not in cells.cols:
        return None
    text = cells.get("split")
    split = SPLIT_VALUES.get(text.lower())
    if split is None:
        raise cells.error("split", f"{text!r} is not a split; use train or test (also: Training, Testing); "
                                   "validation is carved from train (data.validation_fraction)")
    return split


def _number(cells: _Cells, role: str, unit: str, low: float, high: float) -> float | None:
    text = cells.get(role)
    if text.lower() in NOT_RECORDED:
        return None
    value: float | None
    try:
        value = float(text.rstrip(unit).rstrip(unit.upper()).strip() if unit else text)
    except ValueError:
        value = None
    if value is None and role == "age":
        from engine.data.readers.dicom import parse_age  # the DICOM Age String: 045Y, 006M, ...

        value = parse_age(text)
    if value is None or not (low <= value <= high):
        what = "an age" if role == "age" else "a field strength"
        unit_text = " years (or a DICOM age such as 045Y)" if role == "age" else " tesla"
        raise cells.error(role, f"{text!r} is not {what} between {low:g} and {high:g}{unit_text}; "
                                "leave the cell empty where it is not recorded")
    return round(value, 2)


def _meta(cells: _Cells) -> dict:
    """site, scanner, field_strength, sex, age: the keys DICOM metadata uses (``with_patients``)."""
    out: dict = {}
    if cells.get("site"):
        out["site"] = cells.get("site")
    scanner = cells.get("scanner") or " ".join(x for x in (cells.get("manufacturer"), cells.get("model")) if x)
    if scanner:
        out["scanner"] = scanner
    if "field_strength" in cells.cols and (tesla := _number(cells, "field_strength", "t", 0.0, 20.0)) is not None:
        out["field_strength"] = tesla
    sex = cells.get("sex")
    if sex.lower() not in NOT_RECORDED:
        if sex.lower() not in SEX_VALUES:
            raise cells.error("sex", f"{sex!r} is not a sex; use F, M or O (female, male, other), or leave the "
                                     "cell empty where it is not recorded")
        out["sex"] = SEX_VALUES[sex.lower()]
    if "age" in cells.cols and (age := _number(cells, "age", "", 0.0, MAX_AGE)) is not None:
        out["age"] = age
    return out


def _exists(path: Path) -> bool | None:
    """True for a file, False when nothing is there, None for anything else (a folder)."""
    if path.is_file():
        return True
    return None if path.exists() else False


def read_rows(csv_file: Path, root: Path, columns: Mapping[str, str], aliases: Mapping[str, str]) -> list[CsvRow]:
    """Every image row of the CSV, checked. Fully blank rows are ignored. InputError naming the CSV,
    the row and the column for anything the table gets wrong (module docstring)."""
    frame = read_table(csv_file)
    where = str(csv_file)
    cols = column_map(frame.columns, columns, where)
    rows: list[CsvRow] = []
    first: dict[Path, int] = {}
    for i, values in enumerate(frame.to_dict("records")):
        if not any(values.values()):
            continue
        cells = _Cells(where, i + 2, values, cols)
        path = _path(cells, root)
        if path in first:
            raise cells.error("path", f"{cells.get('path')!r} is the file of row {first[path]} too; list each "
                                      "image once")
        first[path] = cells.row
        rows.append(CsvRow(cells.row, path, _label(cells, aliases), _split(cells),
                           cells.get("patient") or None, _meta(cells)))
    if not rows:
        raise InputError(f"labels CSV {where!r} lists no images: it needs one row per image below its header")
    if not any(r.path.is_file() for r in rows):
        raise InputError(f"{where}: none of the {len(rows)} files it lists exists (row {rows[0].row}, column "
                         f"{cols['path']!r}: {str(rows[0].path)!r}); paths are relative to the data root "
                         f"{str(root)!r}")
    return rows


def discover_csv(root: Path, labels: str | os.PathLike | None, columns: Mapping[str, str] | None, *,
                 classes: Sequence[str], aliases: Mapping[str, str], test_fraction: float, seed: int,
                 validation_fraction: float | None = None,
                 pseudonymizer: Callable[[], Callable[[str], str]] | None = None):
    """``discovery.discover`` for the "csv" layout: (``"csv"``, records with split train/test).

    With a split column each row's split is kept (validation is carved from train later);
    without one the test split is carved as in the folder-per-class layout: seeded, stratified
    and, when patients have several images, grouped by patient. Records carry the pseudonym of the
    CSV's patient id (else the DICOM PatientID's) and the CSV's metadata over the header's.
    """
    if labels is None:
        raise InputError('data.layout = "csv" needs data.labels, the CSV that lists the images and their labels')
    root = Path(root).resolve()
    csv_file = labels_file(root, labels)
    try:
        rows = read_rows(csv_file, root, columns or {}, aliases)
    except OSError as exc:  # a listed path too long for the file system, a folder without permission
        raise InputError(f"labels CSV {str(csv_file)!r}: cannot check {str(exc.filename or csv_file)!r}: "
                         f"{exc.strerror or exc}") from None
    records = _with_identity(rows, pseudonymizer, root)
    if rows[0].split is not None:
        records = [replace(r, split=row.split) for r, row in zip(records, rows)]
    else:
        records = _carve_test(root, records, rows, test_fraction, seed, validation_fraction)
    missing = [c for c in classes if not any(r.label == c and r.split == "train" for r in records)]
    if missing:
        raise InputError(f"labels CSV {str(csv_file)!r}: no training images for class(es) "
                         f"{', '.join(map(repr, missing))}")
    records.sort(key=lambda r: (r.split, r.label, str(r.path)))
    return "csv", records


def _with_identity(rows: Sequence[CsvRow], pseudonymizer, root: Path):
    """Records with patient pseudonyms and metadata: the CSV's value wins over a DICOM header's,
    key by key; a cell left empty falls back to the header."""
    from engine.data.formats import is_dicom_path
    from engine.data.records import ImageRecord, with_patients, with_references

    records = [ImageRecord(row.path, "train", row.label) for row in rows]
    has_dicom = any(is_dicom_path(r.path) for r in records)
    pseudonym = None
    if pseudonymizer is not None and (has_dicom or any(row.patient for row in rows)):
        pseudonym = pseudonymizer()
        if has_dicom:
            records = with_patients(records, pseudonym)
    out = []
    for r, row in zip(records, rows):
        meta = {**(r.meta or {}), **row.meta}
        patient = pseudonym(row.patient) if pseudonym is not None and row.patient else r.patient
        out.append(replace(r, patient=patient, meta=meta or None))
    return with_references(out, root, pseudonym) if pseudonym is not None else out


def _carve_test(root: Path, records, rows: Sequence[CsvRow], test_fraction: float, seed: int,
                validation_fraction: float | None):
    """The folder-per-class layout's test split, on the CSV's rows: independent of the rows' order."""
    from collections import Counter

    from sklearn.model_selection import train_test_split

    from engine.data.splits import check_test_split_sizes, grouped_test_split

    order = sorted(range(len(records)), key=lambda i: (records[i].label, str(records[i].path)))
    records = [records[i] for i in order]
    raw = [rows[i].patient for i in order]
    if len(records) < 4:
        raise InputError(f"data root {str(root)!r}: the labels CSV lists only {len(records)} images")
    counts = Counter(r.label for r in records)
    check_test_split_sizes(root, {c: counts[c] for c in sorted(counts)}, test_fraction, validation_fraction)
    # A pseudonym groups a patient whichever column named it; the raw id only when nothing pseudonymised it.
    keys = [("patient", r.patient) if r.patient else ("raw", p) if p else ("file", str(r.path))
            for r, p in zip(records, raw)]
    labels = [r.label for r in records]
    idx = list(range(len(records)))
    if len(set(keys)) < len(keys):
        tr, te = grouped_test_split(idx, labels, keys, test_fraction, seed)
    else:
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    del raw, keys
    return [replace(records[i], split="train") for i in tr] + [replace(records[i], split="test") for i in te]


def fingerprint_entries(root: Path, labels: str | os.PathLike | None) -> list[tuple[str, int, str]]:
    """The labels CSV as a ``dataset_fingerprint`` entry (content hash), so that relabelling an
    image changes the data fingerprint as moving it between class folders does; [] without one."""
    import hashlib

    if labels is None:
        return []
    data = labels_file(Path(root).resolve(), labels).read_bytes()
    return [(f"labels-csv:{Path(labels).name}", len(data), hashlib.sha256(data).hexdigest())]
