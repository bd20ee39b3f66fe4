"""The data stage of a run: discovery, the integrity audit, the validation split, the fingerprint.

``prepare`` takes the manifest and gives ``PreparedData``: everything later stages read about the
images (the ``Dataset``, its pixel cache, which test images leak, how messages are redacted) and
the blocks results.json keeps (``data``, ``integrity``). It writes nothing but the caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine.data import discovery as data_mod
from engine.data.fingerprint import dataset_fingerprint
from engine.errors import InputError
from engine.manifest import Manifest, integrity_options, windowing_options
from engine.progress import Timer, counted

Echo = Callable[[str], None]


def _unchanged(message: str) -> str:
    return message


@dataclass
class PreparedData:
    dataset: data_mod.Dataset
    cache: data_mod.ImageCache
    #: results.json's ``data`` block (warnings included) and ``integrity`` block (None without an audit).
    block: dict
    integrity: dict | None = None
    #: Record keys (path, frame) of test images with a copy or a patient in training.
    leaked_test: set = field(default_factory=set)
    #: Turns data paths in a message into neutral references (engine.data.identity.Redactor).
    redact: Callable[[str], str] = _unchanged
    #: The echo every later line goes through: redacting when the data holds patient ids.
    echo: Echo | None = None
    #: Tumour outlines per split ("test", "val"): one engine.data.annotations.Outline or None per record.
    outlines: dict[str, list] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return self.block["warnings"]

    def leakage_free_mask(self) -> np.ndarray | None:
        """(n_test,) bool, True for test images with no copy in training; None without an integrity audit."""
        if self.integrity is None:
            return None
        return np.array([r.key not in self.leaked_test for r in self.dataset.test])


def redacting(echo: Echo, redact: Callable[[str], str]) -> Echo:
    """``echo`` with every line passed through ``redact``; keeps the echo's ``quiet`` mark."""
    def out(message: str) -> None:
        echo(redact(message))

    out.quiet = getattr(echo, "quiet", False)  # type: ignore[attr-defined]
    return out


@dataclass
class AuditedImages:
    """What the integrity audit found, handed over before the split."""

    integrity: dict
    root: Path
    windowing: object
    thumbnail_sources: dict


def prepare(m: Manifest, output_root: Path, run_dir: Path, echo: Echo, timings: dict,
            check_test: Callable[[list, Path], None] | None = None,
            audited: Callable[[AuditedImages], None] | None = None,
            found_ids: Callable[[Callable[[str], str], Echo], None] | None = None) -> PreparedData:
    """Find, audit and split the images.

    Where the data holds patient ids, ``found_ids(redact, echo)`` gets the redactor and the
    redacting echo at once, so that an error later in this stage is reported redacted too.
    ``audited`` gets the integrity audit as soon as it is done (a run that stops later, at an
    empty test split, still records it); ``check_test(test_records, root)`` runs once the splits
    are known and may raise InputError (a later stage's rule on the test images: a bad age).
    """
    from engine.data.found import find_images
    from engine.data.labels_csv import fingerprint_entries

    with Timer(echo, "data discovery", timings, "data_s"):
        found = find_images(m, output_root, run_dir=run_dir, for_run=True)
    # the root resolved, as the records are: relative paths in results need both
    root, layout, records, redact = found.root, found.layout, found.records, found.redact
    if redact.active:
        echo = redacting(echo, redact)
        if found_ids is not None:
            found_ids(redact, echo)
    else:
        redact = _unchanged
    windowing = windowing_options(m.data)
    audit = _audit(m, records, output_root, windowing, root, echo, timings) if m.integrity.enabled else None
    if audit is not None:
        records, skipped, groups, integrity, leaked, sources, summary = audit
        if audited is not None:
            audited(AuditedImages(integrity, root, windowing, sources))
        echo(summary)
    else:
        records, skipped = data_mod.readable(records, min_size=m.integrity.min_image_size, windowing=windowing,
                                             root=root)
        groups, integrity, leaked, sources = None, None, set(), {}
    for s in skipped:
        echo(f"warning: skipped image {s['path']}: {s['reason']}")
    dataset, duplicate_grouped = _split(m, records, groups, root, layout, skipped, echo)
    if check_test is not None:
        check_test(dataset.test, root)
    fingerprint = dataset_fingerprint([(data_mod.record_label(r, root), r.path.stat().st_size,
                                        r.path.stat().st_mtime_ns) for r in records]
                                      + fingerprint_entries(root, m.data.labels))
    train, val = dataset.train, dataset.val
    block = {
        "root": str(root), "layout": layout, "class_names": list(m.data.classes), "fingerprint": fingerprint,
        "counts": dataset.counts(), "validation_fraction": m.data.validation_fraction,
        "validation_grouped_by_duplicates": duplicate_grouped,
        "validation_grouped_by_patient": any(r.patient for r in train + val), "skipped": skipped,
    }
    block["warnings"] = data_mod.class_coverage_warnings(dataset.class_names, dataset.counts(),
                                                         (integrity or {}).get("leakage_free_test_counts"))
    outlines, block["annotations"] = _annotations(dataset, root)
    block["warnings"] += [f"annotation {p['path']}" + (f": line {p['line']}" if p["line"] else "") + f": {p['reason']}; "
                          "that image's localisation is not scored" for p in block["annotations"]["problems"]]
    for w in block["warnings"]:
        echo(f"warning: {w}")
    cache = data_mod.ImageCache(output_root / ".cache" if m.data.cache else None, progress=echo, windowing=windowing,
                                memory_bytes=m.data.image_memory_bytes, spill_dir=output_root / ".cache")
    counts = dataset.counts()
    echo("data: " + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()) + f" images ({layout} layout)")
    return PreparedData(dataset, cache, block, integrity, leaked, redact, echo, outlines)


def _annotations(dataset: data_mod.Dataset, root: Path) -> tuple[dict[str, list], dict]:
    """The tumour outlines of the test and validation images (engine.data.annotations) and the data
    block's ``annotations``: per split the images annotated and by which kind, and every annotation
    that could not be read (file, line, reason)."""
    from engine.data.annotations import read_annotations
    from engine.data.identity import display_path

    def shown(r):
        return display_path(r, root)

    found = {split: read_annotations(getattr(dataset, split), root, shown) for split in ("test", "val")}
    block = {name: {"annotated": sum(o is not None for o in a.outlines), "kinds": a.kinds}
             for name, a in (("test", found["test"]), ("validation", found["val"]))}
    seen, problems = set(), []
    for a in found.values():  # boxes.csv's own problems are listed once, not once per split
        for p in a.problems:
            if (p["path"], p["line"], p["reason"]) not in seen:
                seen.add((p["path"], p["line"], p["reason"]))
                problems.append(p)
    block["problems"] = problems
    return {split: a.outlines for split, a in found.items()}, block


def _audit(m: Manifest, records: list, output_root: Path, windowing, root: Path, echo: Echo, timings: dict):
    """(usable records, skipped, duplicate groups, integrity block, leaked test keys, thumbnail
    sources, the summary line)."""
    from engine.integrity import audit as integrity

    with Timer(echo, "integrity audit", timings, "integrity_s"), counted(echo, "integrity fingerprints") as progress:
        report = integrity.audit(records, integrity_options(m.integrity), cache_dir=output_root / ".cache",
                                 class_names=m.data.classes, windowing=windowing, progress=progress)
    block = report.to_dict(root=root)
    summary = integrity.summary_text(report)
    leaked = set(report.excluded_test_paths)  # twins in training, and patients in training
    bad = set(report.unreadable_paths)
    skipped = [dict(u) for u in block.get("unreadable", [])]
    records = [r for r in records if r.key not in bad]
    groups = integrity.duplicate_groups(records, report) if m.integrity.group_validation_split else None
    return records, skipped, groups, block, leaked, {ref: path for path, ref in report.display.items()}, summary


def _split(m: Manifest, records: list, groups, root: Path, layout: str, skipped: list,
           echo: Echo) -> tuple[data_mod.Dataset, bool]:
    """The Dataset (train / validation / test) and whether duplicate groups shaped the validation split."""
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    if not test:
        raise InputError(f"data root {str(root)!r}: the test split is empty")
    duplicate_grouped = bool(groups)
    groups = data_mod.patient_groups(train, groups)  # a patient's images stay on one side too
    if train or m.backbones:
        train, val = data_mod.split_validation(train, m.data.validation_fraction, m.experiment.seed, groups,
                                               classes=m.data.classes)
    else:  # imported models only, on a data root without a training folder: nothing to hold out
        val = []
        echo("data: no training folder; imported models are evaluated on the test split only "
             "(no validation split: no temperature scaling)")
    return data_mod.Dataset(root, layout, list(m.data.classes), train, val, test, skipped), duplicate_grouped
