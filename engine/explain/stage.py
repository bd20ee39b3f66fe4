"""The explanation stage: galleries, localisation on every annotated image and the explanation
checks of each finished model, for a run (``explain``) and for ``auditrun evaluate``
(``localisation``, ``check_explanations``), so both explain a model the same way.

``explain`` yields one ``Explained`` per model as it finishes, so the caller can checkpoint
between models; a failure is recorded in the block, never raised (a full disk is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from engine.data import display_path, record_label
from engine.failures import failure_message
from engine.manifest import GradcamConfig, Manifest
from engine.paths import slug
from engine.progress import Timer

Echo = Callable[[str], None]


@dataclass
class Explained:
    """What one model's results.json entry gains (engine.results.BackboneResult fields)."""

    name: str
    gradcam: dict | None = None
    explanations: list[dict] | None = None
    #: one localisation block per method on every annotated test image (engine.explain.localise)
    localisation: list[dict] | None = None
    #: The method an imported model was explained by (its entry's ``explanation_method``).
    method: str | None = None
    timings: dict = field(default_factory=dict)


def original_sizes(records, outlines: Sequence) -> list:
    """(height, width) of each annotated plain image's file, for the tolerant pointing game's 15
    original pixels; None for the rest (a DICOM frame or NIfTI slice: the tolerance is then in
    model-input pixels)."""
    from engine.explain.reliability import original_size

    return [original_size(r.path) if o is not None and not r.frame_name else None for r, o in zip(records, outlines)]


def localisation_blocks(model, images, y: np.ndarray, outlines: Sequence, g: GradcamConfig, seed: int, out_dir: Path,
                 run_dir: Path, *, records, class_names: Sequence[str], names: Sequence[str], layer: str | None,
                 methods: Sequence | None = None, heatmaps: dict | None = None, echo: Echo | None = None) -> list[dict]:
    """The model's localisation blocks (engine.explain.localise) with the ``[gradcam]`` settings:
    every annotated tumour image (no_tumor images never are), or a seeded sample of
    ``localisation_images``; per ``method`` (default the ``[gradcam] method`` list)."""
    from engine.explain.localise import localise

    skip = list(class_names).index("no_tumor") if "no_tumor" in class_names else None
    return localise(model, images, y, outlines, list(methods or g.methods), seed, out_dir, run_dir,
                    class_names=class_names, names=names, original_sizes=original_sizes(records, outlines),
                    layer=layer, max_images=g.localisation_images, skip_class=skip, tolerance_px=g.tolerance_px,
                    top_percent=g.coverage_top_percent, iou_threshold=g.iou_threshold, heatmaps=heatmaps, echo=echo)


def check_explanations(model, images: np.ndarray, y: np.ndarray, outlines: Sequence, g: GradcamConfig,
                       seed: int, out_dir: Path, run_dir: Path, layer: str | None, echo: Echo) -> list[dict]:
    """The randomisation and faithfulness checks of docs/explanations.md per ``[gradcam] method``
    (engine.explain.reliability), on their own ``check_images`` sample."""
    from engine.explain.reliability import explain_reliability

    return explain_reliability(model, images, y, outlines, g.methods, seed, out_dir, run_dir, layer=layer,
                               n_images=g.check_images, cascade_steps=g.cascade_steps,
                               faithfulness_steps=g.faithfulness_steps, echo=echo)


def explain(m: Manifest, data, entries: list, outputs: dict[str, dict], run_dir: Path,
            echo: Echo) -> Iterator[Explained]:
    """Galleries and pointing games of ``entries`` (engine.results.BackboneResult) from their saved
    models; ``data``: engine.data.PreparedData, ``outputs``: the models' probabilities by name."""
    layers = {c.name: c.gradcam_layer for c in m.backbones}
    for res in entries:
        if res.source == "imported":  # issue 19: a model trained elsewhere, explained through its adapter
            model = outputs[res.name].get("imported")
            if model is not None:  # an entry adopted from an earlier run: its model is not loaded here
                yield _explain_imported(m, data, res, model, outputs[res.name], run_dir, echo)
            continue
        yield _explain_backbone(m, data, res, outputs[res.name], layers.get(res.fine_tuned_from or res.name),
                                run_dir, echo)


def _gallery(m: Manifest, data, res, out: dict, run_dir: Path, *, model, layer: str | None, heatmaps=None,
             method: str = "gradcam", echo: Echo | None = None) -> dict:
    """One model's ``gradcam`` block: its test gallery, and the pointing game on annotated
    validation images. ``model`` None with ``heatmaps``: an imported model explained through its adapter."""
    from engine.explain.gallery import explain_backbone, pointing_game_on

    ds, cache, g, seed = data.dataset, data.cache, m.gradcam, m.experiment.seed
    size = res.input_size
    block = explain_backbone(
        model, cache.load(ds.test, size, "test"), ds.labels("test"), out["test_probs"],
        [record_label(r) for r in ds.test], ds.class_names, run_dir / "gradcam" / slug(res.name),
        g.images_per_class, seed, layer=layer, data_root=ds.root, run_dir=run_dir,
        outlines=data.outlines.get("test"), names=[display_path(r, ds.root) for r in ds.test], heatmaps=heatmaps, method=method, echo=echo)
    # Annotated validation images score the explanation without the test split, so Grad-CAM
    # settings (layer, input size) can be tuned on them.
    val_game = pointing_game_on(
        model, cache.load(ds.val, size, "validation"), ds.labels("val"),
        [record_label(r) for r in ds.val], ds.class_names, seed, layer=block["layer"],
        max_images=g.max_pointing_images, outlines=data.outlines.get("val"), heatmaps=heatmaps) if ds.val else None
    if val_game is not None:
        block["pointing_game_validation"] = val_game
    return block


def _explain_backbone(m: Manifest, data, res, out: dict, layer: str | None, run_dir: Path, echo: Echo) -> Explained:
    from engine.training import load_saved_model

    ds, cache, g, seed = data.dataset, data.cache, m.gradcam, m.experiment.seed
    done = Explained(res.name)
    with Timer(echo, f"Grad-CAM {res.name}"):
        try:
            model = load_saved_model(run_dir / res.artifacts["model"])
            done.gradcam = _gallery(m, data, res, out, run_dir, model=model, layer=g.layer or layer, echo=echo)
        except Exception as exc:  # noqa: BLE001 - one failed explanation must not lose the report
            message = failure_message(exc, f"gradcam-{res.name}", run_dir, data.redact)
            done.gradcam = {"error": message}
            echo(f"error: Grad-CAM for {res.name}: {message}")
    if "error" in done.gradcam:
        return done
    outlines = data.outlines.get("test") or [None] * len(ds.test)
    images, out_dir = cache.load(ds.test, res.input_size, "test"), run_dir / "gradcam" / slug(res.name)
    if any(o is not None for o in outlines):
        with Timer(echo, f"localisation {res.name} ({', '.join(g.methods)})", done.timings, "localisation_s"):
            done.localisation = localisation_blocks(
                model, images, ds.labels("test"), outlines, g, seed, out_dir, run_dir, records=ds.test,
                class_names=ds.class_names, names=[display_path(r, ds.root) for r in ds.test],
                layer=done.gradcam.get("layer"), echo=echo)
    if g.check_images:
        with Timer(echo, f"explanation checks {res.name} ({', '.join(g.methods)})", done.timings,
                   "explanation_checks_s"):
            done.explanations = check_explanations(model, images, ds.labels("test"), outlines, g, seed, out_dir,
                                                   run_dir, done.gradcam.get("layer"), echo)
    return done


def _explain_imported(m: Manifest, data, res, model, out: dict, run_dir: Path, echo: Echo) -> Explained:
    """Gallery and pointing game of an imported model: Grad-CAM where a .keras model has a
    convolutional layer, occlusion sensitivity through its predict function otherwise
    (engine.explain.agnostic); the method is recorded in the block and named in every caption."""
    from engine.explain.agnostic import heatmaps_for

    heatmaps, method, layer = heatmaps_for(model)
    done = Explained(res.name)
    with Timer(echo, f"explanations ({method}) {res.name}"):
        try:
            done.gradcam = _gallery(m, data, res, out, run_dir, model=None, layer=layer, heatmaps=heatmaps,
                                    method=method)
            done.method = method
            outlines = data.outlines.get("test") or []
            if any(o is not None for o in outlines):
                ds = data.dataset
                done.localisation = localisation_blocks(
                    None, data.cache.load(ds.test, res.input_size, "test"), ds.labels("test"), outlines, m.gradcam,
                    m.experiment.seed, run_dir / "gradcam" / slug(res.name), run_dir, records=ds.test,
                    class_names=ds.class_names, names=[display_path(r, ds.root) for r in ds.test], layer=layer,
                    methods=[method], heatmaps={method: heatmaps})
        except Exception as exc:  # noqa: BLE001 - one failed explanation must not lose the report
            message = failure_message(exc, f"explain-{res.name}", run_dir, data.redact)
            done.gradcam = {"error": message, "method": method}
            echo(f"error: explanations for {res.name}: {message}")
    return done
