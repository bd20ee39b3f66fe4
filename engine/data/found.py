"""The data stage as a run and the data commands call it: a manifest's images found, once.

``auditrun MANIFEST`` and the data commands (``check-data``, ``locate``) discover a data set the
same way and must redact its paths the same way; this is that one call, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from engine.data.identity import Redactor, experiment_pseudonymizer
from engine.data.records import ImageRecord


@dataclass(frozen=True)
class FoundImages:
    """Every image of a manifest's data root, its class and split, and the redactor for messages."""

    root: Path
    layout: str
    records: list[ImageRecord]
    redact: Redactor


def find_images(m, output_root: Path, *, run_dir: Path | None = None, for_run: bool = False) -> FoundImages:
    """The images of manifest ``m`` (engine.manifest.Manifest), pseudonymised with the experiment's
    key under ``output_root``.

    ``for_run``: as a run sees them: the data root resolved, validation carved from training
    (``data.validation_fraction``) and at least one training image required when backbones are
    listed. Without it (the data commands) the records keep their train/test split only.
    """
    from engine import manifest as manifest_mod
    from engine.data import discovery

    data = m.data
    root = data.root.resolve() if for_run else data.root

    def pseudonymizer():
        return experiment_pseudonymizer(output_root, m.experiment.name, run_dir=run_dir)

    aliases = manifest_mod.class_aliases(m)
    extra = {"validation_fraction": data.validation_fraction, "require_train": bool(m.backbones)} if for_run else {}
    layout, records = discovery.discover(
        root, layout=data.layout, train_dir=data.train_dir, test_dir=data.test_dir, classes=data.classes,
        aliases=aliases, test_fraction=data.test_fraction, seed=m.experiment.seed, pseudonymizer=pseudonymizer,
        labels=data.labels, columns=data.columns, slices=manifest_mod.slice_selection(data), **extra)
    redact = discovery.redactor(root, records, pseudonymizer, train_dir=data.train_dir, test_dir=data.test_dir,
                                aliases=aliases, labels=data.labels)
    return FoundImages(root, layout, records, redact)
