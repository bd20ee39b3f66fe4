"""The distribution-shift check of a run: leakage-free test images against training images of
their class, at the first model's input size (engine.integrity.shift)."""

from __future__ import annotations

from typing import Callable

from engine.manifest import Manifest
from engine.progress import Timer


def check_shift(m: Manifest, data, echo: Callable[[str], None], timings: dict) -> dict | None:
    """results.json's ``integrity.shift`` block for ``data`` (engine.data.PreparedData), or None when
    the check is off or cannot run (no audit, no training images).

    Runs at the first backbone's input size, so the arrays it decodes are the ones its training reuses.
    """
    from engine.integrity.shift import measure_shift

    ds, keep = data.dataset, data.leakage_free_mask()
    if keep is None or not m.integrity.shift or not ds.train:
        return None
    size = m.backbones[0].input_size if m.backbones else (m.models[0].input_size or 224)
    with Timer(echo, "distribution-shift check", timings, "shift_s"):
        result = measure_shift(
            data.cache.load(ds.train, size, "training"), ds.labels("train"),
            data.cache.load(ds.val, size, "validation"), ds.labels("val"),
            data.cache.load(ds.test, size, "test"), ds.labels("test"), keep, ds.class_names,
            seed=m.experiment.seed)
    shifted = [f"{name} {c.auc:.2f}" for name, c in result.per_class.items() if c.auc is not None]
    if shifted:
        echo("shift: leakage-free test vs training, domain AUC (0.5 = alike): " + ", ".join(shifted))
    unmeasured = [name for name, c in result.per_class.items() if c.auc is None]
    if unmeasured:
        echo(f"shift: not measured for {', '.join(unmeasured)} (fewer than {result.min_images} images on a side; "
             "results.json integrity.shift notes say which)")
    for name, c in result.per_class.items():
        for note in c.notes:
            if "not measured" not in note:
                echo(f"warning: shift check, {name}: {note}")
    return result.to_dict()
