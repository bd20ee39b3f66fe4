"""External validation's images and records: a labelled folder for a run's saved models
(``auditrun evaluate``, engine.workflows.evaluate).

The folder holds one sub-folder per class (same aliases as the run's manifest), images of any
size; DICOM files and NIfTI volumes give one image per frame or selected slice, decoded with the
run's ``data.windowing``, ``data.window_percentiles`` and ``data.slices``. Where tumour outlines lie
beside the images (engine.data.annotations: YOLO boxes or polygons, masks, NIfTI label volumes,
``boxes.csv``), each backbone also gets localisation per ``[gradcam] method`` on every annotated
image and the explanation checks (``localisation``, ``explanations``, docs/explanations.md).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine.atomic import write_json
from engine.errors import InputError
from engine.results import read_results, write_results


def discover_folder(folder: Path, class_names: list[str], aliases: dict[str, str],
                    slices=None) -> tuple[list, np.ndarray]:
    """(records, labels) for a folder-per-class tree, one record per image (a DICOM frame, a NIfTI
    slice that ``slices`` selects; ``engine.data.discovery.frame_records``); unknown class folders
    are an error naming them."""
    from engine.data.discovery import frame_records, images_by_class

    if not folder.is_dir():
        raise InputError(f"--data {str(folder)!r} is not a folder")
    by_class = images_by_class(folder, aliases)
    records, labels = [], []
    for i, c in enumerate(class_names):
        for p in by_class.get(c, []):
            found = frame_records(p, "test", c, slices)
            records += found
            labels += [i] * len(found)
    if not records:
        raise InputError(f"--data {str(folder)!r} holds no images in class folders ({', '.join(class_names)})")
    return records, np.array(labels, dtype=np.int64)


def usable_images(folder: Path, records: list, y: np.ndarray, min_size: int,
                  warn: Callable[[str], None], windowing=None) -> tuple[list, np.ndarray, list[dict]]:
    """Drop unreadable and too-small images (``records`` from ``discover_folder``; DICOM and NIfTI
    frames decoded with ``windowing``), each listed as ``{"path", "reason"}`` (its neutral reference
    where the files carry patient ids, else its path relative to ``folder``; with the frame of a
    multi-image file) and warned about; InputError when none is left."""
    from engine.data.discovery import readable

    # With the folder as root, readable names each skipped file as every artefact does and keeps
    # the path out of the reader's reason.
    ok, skipped = readable(records, min_size=min_size, windowing=windowing, root=folder)
    for entry in skipped:
        warn(f"skipped image {entry['path']}: {entry['reason']}")
    keep = {r.key for r in ok}
    if not ok:
        raise InputError(f"--data {str(folder)!r}: none of its {len(records)} images can be used; first: "
                         f"{skipped[0]['path']}: {skipped[0]['reason']}")
    mask = np.array([r.key in keep for r in records])
    return [r for r in records if r.key in keep], y[mask], skipped


def with_references(records: list, data: Path, run_dir: Path, experiment: str, warn) -> list:
    """DICOM records with their patient pseudonyms and, when any file carries a patient id, the
    neutral file references every listing shows instead of paths (``records.with_patients``), as
    the run named its own files. The key is the run's (``<output root>/.keys`` beside its
    experiment folder, or ``$AUDITRUN_PSEUDONYM_KEY_FILE``), so the references agree with the
    run's; where the run was copied without its key, a one-off key keeps the listing neutral (its
    references then match no other run's) and nothing is written outside the run."""
    from engine.data.formats import is_dicom_path
    from engine.data.records import with_patients
    from engine.data.identity import Pseudonymizer, default_key_dir, key_file, load_key

    if not any(is_dicom_path(r.path) for r in records):
        return records
    path = key_file(default_key_dir(run_dir.resolve().parent.parent), experiment)
    known = path.is_file()
    pseudonymize = Pseudonymizer(load_key(path) if known else os.urandom(32), str(path) if known else "one-off")
    records = with_patients(records, pseudonymize, root=data)
    if not known and any(r.patient for r in records):
        warn(f"the run's pseudonym key is not at {str(path)!r}: files are listed under references of a "
             "one-off key, which match no run's")
    return records


def read_run_results(run_dir: Path) -> dict:
    """The run's results.json; InputError when it is invalid or the run stopped before data discovery."""
    results = read_results(run_dir)
    if "data" not in results:  # the schema allows it: a run killed during data discovery
        raise InputError(f"{str(run_dir / 'results.json')!r} has no data block: the run stopped before "
                         "data discovery, so it has no model to evaluate")
    return results


def finished_backbones(results: dict, backbone: str | None) -> list[dict]:
    """The run's finished backbone entries, or only ``backbone``'s (InputError when it did not finish)."""
    entries = [e for e in results["backbones"] if e.get("status") == "ok"]
    if backbone is not None:
        entries = [e for e in entries if e["name"] == backbone]
        if not entries:
            names = [e["name"] for e in results["backbones"] if e.get("status") == "ok"]
            raise InputError(f"--backbone {backbone!r} is not a finished backbone of this run; use one of {names}")
    return entries


def external_annotations(records: list, folder: Path, warn: Callable[[str], None]):
    """The tumour outlines of the folder's images (engine.data.annotations: YOLO boxes or polygons,
    mask images, NIfTI label volumes, ``boxes.csv``), each unreadable annotation warned about and
    listed; returns (outlines, the report's ``annotations`` block)."""
    from engine.data import display_path
    from engine.data.annotations import read_annotations

    found = read_annotations(records, folder, lambda r: display_path(r, folder))
    for p in found.problems:
        warn(f"annotation {p['path']}" + (f": line {p['line']}" if p["line"] else "") + f": {p['reason']}; "
             "that image's localisation is not scored")
    return found.outlines, {"annotated": sum(o is not None for o in found.outlines), "kinds": found.kinds,
                            "problems": found.problems}


@dataclass
class ExternalImages:
    """The usable images of the external folder (records), their labels, names and tumour outlines;
    pixels decoded once per size, DICOM and NIfTI frames with the run's ``windowing``."""

    records: list
    y: np.ndarray
    class_names: list[str]
    #: per record its engine.data.annotations.Outline or None, and how blocks name it
    outlines: list
    names: list[str]
    windowing: object = None
    #: Where a folder too large for data.image_memory_bytes is decoded to (a temporary folder
    #: inside it, deleted by ``close``); None: the system's temp folder.
    spill_dir: Path | None = None
    _cache: object = None

    def pixels(self, size: int):
        """The images at ``size`` (an ndarray, or engine.data.DiskImages above the memory budget),
        decoded once per size, on the Dask cluster's workers when the command has one."""
        from engine.data import ImageCache

        if self._cache is None:
            self._cache = ImageCache(None, windowing=self.windowing, spill_dir=self.spill_dir)
        return self._cache.load(self.records, size, "external")

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


def folder_key(data: Path) -> str:
    """``<folder>-<hash>``: one external folder's name under ``<run>/external/``."""
    key = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:8]
    return f"{data.name or 'data'}-{key}"


def metrics_block(e: dict, images: ExternalImages, probs: np.ndarray) -> tuple[dict, dict]:
    """One backbone's block of metrics on the external images, and the metrics themselves."""
    from engine.evaluation.scores import split_metrics

    m = split_metrics(images.y, probs, images.class_names)
    block = {"name": e["name"], "display_name": e.get("display_name", e["name"]),
             "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
             "classes_in_macro": m["classes_in_macro"], "per_class": m["per_class"],
             "confusion_matrix": m["confusion_matrix"], "n_images": m["n_images"]}
    return block, m


def store_report(run_dir: Path, data: Path, results: dict, report: dict) -> None:
    """``external/<folder>-<hash>.json``, and the report in results.json (one entry per folder)."""
    write_json(run_dir / "external" / f"{folder_key(data)}.json", report)
    # results.json keeps one entry per external folder, so `auditrun render` can show them
    results["external"] = [x for x in results.get("external", []) if x.get("data") != report["data"]] + [report]
    write_results(run_dir, results)
