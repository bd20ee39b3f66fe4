"""``auditrun evaluate RUN_DIR --data FOLDER``: a finished run's saved models on another labelled
folder, scored by the run's own stage functions (prediction, metrics, the pointing game and the
explanation checks) with the run's own settings (its manifest copy, engine.manifest.run_settings).

The folder holds one sub-folder per class (same aliases as the run's manifest), images of any
size; DICOM files and NIfTI volumes give one image per frame or selected slice, decoded with the
run's ``data.windowing``, ``data.window_percentiles`` and ``data.slices``. Where tumour outlines lie
beside the images (YOLO boxes or polygons in ``<image>.txt``, mask images, NIfTI label volumes,
``boxes.csv``: engine.data.annotations), each backbone also gets, per ``[gradcam] method``, one
localisation block over every annotated tumour image (``localisation``: the pointing games, energy,
coverage and IoU) and the explanation checks (``explanations``, docs/explanations.md).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from engine import compute, evaluation, explain, tracking
from engine.errors import InputError
from engine.data import display_path
from engine.manifest import Manifest, folder_aliases, run_settings, slice_selection, windowing_options
from engine.paths import check_output_root

Echo = Callable[[str], None]


def evaluate_external(run_dir: Path, data: Path, backbone: str | None = None, *,
                      echo: Echo | None = None, seed: int | None = None,
                      localisation_images: int | None = None, warn: Echo | None = None,
                      scheduler: str | None = None, tracking_uri: str | None = None) -> dict:
    """Score the run's models on ``data``; store and return ``{"data", "backbones": [...]}``.

    Unreadable images and images below the run's ``integrity.min_image_size`` are skipped, each
    passed to ``warn`` (default: ``echo``) and listed under ``"skipped"``; the rest are evaluated.
    ``scheduler``: a Dask scheduler address for the predictions and Grad-CAM maps (default: the
    run's ``[compute] scheduler``; "local": this process). ``localisation_images``: the cap on
    annotated images scored per model and method (default: the run's ``[gradcam] localisation_images``).
    ``tracking_uri``: log the metrics to the audit's MLflow runs there (default: the run's ``[tracking]``).
    """
    run_dir, data = Path(run_dir), Path(data)
    # Before TensorFlow loads: a broken results.json should cost the user no import time.
    results = evaluation.read_run_results(run_dir)
    check_output_root(run_dir, [("--data", data)])  # it writes RUN_DIR/external
    echo = echo or (lambda _m: None)
    warn = warn or (lambda msg: echo(f"warning: {msg}"))
    class_names = results["data"]["class_names"]
    seed = results["experiment"]["seed"] if seed is None else seed
    entries = evaluation.finished_backbones(results, backbone)
    m = run_settings(run_dir)  # the run's own settings: aliases, image size, TTA, windowing, checks
    if localisation_images is not None:
        m.gradcam.localisation_images = localisation_images
    address = compute.check_address(scheduler, "--scheduler") if scheduler is not None else m.compute.scheduler
    # before any model is loaded: MLflow missing, or a required tracker down, is exit 2
    tracker = tracking.open_tracker(m.tracking, run_dir.parent.parent, results["experiment"]["name"], uri=tracking_uri,
                                    warn=warn)
    windowing = windowing_options(m.data)
    records, y = evaluation.discover_folder(data, class_names, folder_aliases(class_names, m.data.aliases),
                                          slice_selection(m.data))
    records = evaluation.with_references(records, data, run_dir, results["experiment"]["name"], warn)
    records, y, skipped = evaluation.usable_images(data, records, y, m.integrity.min_image_size, warn, windowing)
    out_dir = run_dir / "external" / evaluation.folder_key(data)
    outlines, annotations = evaluation.external_annotations(records, data, warn)
    images = evaluation.ExternalImages(records, y, class_names, outlines, [display_path(r, data) for r in records],
                                       windowing=windowing, spill_dir=run_dir / "external")
    try:
        with compute.using(address, echo):
            out = [_evaluate_backbone(run_dir, e, images, echo, m, seed, out_dir) for e in entries]
    finally:
        images.close()
    counts = {c: int((y == i).sum()) for i, c in enumerate(class_names)}
    report = {"data": str(data.resolve()), "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "counts": counts, "skipped": skipped, "annotations": annotations, "backbones": out}
    evaluation.store_report(run_dir, data, results, report)
    if tracker is not None:
        run_id = tracking.log_external(tracker, results, report, data.resolve().name or "data",
                                       run_dir / "external" / f"{evaluation.folder_key(data)}.json")
        if run_id is not None:
            echo(f"tracking: external metrics logged to MLflow run {run_id} at {tracker.target.shown}")
    return report


def _load_model(run_dir: Path, e: dict, class_names: list[str]):
    """The model behind a finished entry: the run's saved Keras model, or an imported model read
    from its own file and preprocessed as the audit did."""
    from engine.training import from_entry, load_saved_model  # loads Keras: after the inputs are checked

    if e.get("source") == "imported":
        return from_entry(e, class_names, folder_aliases(class_names, {}))
    model_path = run_dir / e["artifacts"]["model"]
    if not model_path.is_file():
        raise InputError(f"model file {str(model_path)!r} is missing; external validation needs the run's models")
    return load_saved_model(model_path)


def _evaluate_backbone(run_dir: Path, e: dict, images, echo: Echo, m: Manifest, seed: int, out_dir: Path) -> dict:
    """One backbone's block: its metrics on the images and, where there are outlines, its
    localisation per method (and, for the run's own models, the explanation checks). Predicts as
    the run did: with flip test-time augmentation when its manifest asked for it."""
    t0 = time.perf_counter()
    imported = e.get("source") == "imported"
    model = _load_model(run_dir, e, images.class_names)
    size, cluster = e["input_size"][0], compute.current()
    ref = evaluation.model_ref(run_dir, e, images.class_names) if cluster is not None else None
    if cluster is not None:  # the workers decode and predict their chunks; nothing is shipped but names
        probs = evaluation.predict_on(cluster, ref, images.records, size, images.windowing, m.evaluation.tta_flip,
                                      echo=echo, label=f"{e['name']}: predictions")
    else:
        probs = evaluation.predict_probs(model, images.pixels(size), tta_flip=m.evaluation.tta_flip, echo=echo,
                                         label=f"{e['name']}: predictions")
    block, scores = evaluation.metrics_block(e, images, probs)
    if any(o is not None for o in images.outlines):
        x = images.pixels(size)
        # the layer the run's own Grad-CAM used (a manifest may name one), else the automatic one
        layer = (e.get("gradcam") or {}).get("layer")
        methods, heatmaps = m.gradcam.methods, {}
        if imported:
            heatmaps, method, layer = explain.heatmaps_for(model)
            methods, heatmaps = [method], {method: heatmaps}
        elif cluster is not None:  # Grad-CAM on the workers; other methods here
            heatmaps = {"gradcam": explain.heatmaps_on(cluster, ref, layer)}
        block["localisation"] = explain.localisation_blocks(
            None if imported else model, x, images.y, images.outlines, m.gradcam, seed, out_dir / e["name"], run_dir,
            records=images.records, class_names=images.class_names, names=images.names, layer=layer, methods=methods,
            heatmaps=heatmaps, echo=echo)
        for loc in block["localisation"]:
            if "error" not in loc:
                echo(f"{e['name']}: {loc['method']} localisation on {loc['n_images']} images: pointing game "
                     f"{loc['rate']:.3f} (tolerant {loc['tolerant_rate']:.3f}), energy {loc['energy']:.3f}, "
                     f"coverage {loc['coverage']:.3f}, IoU {loc['iou']:.3f} ({loc['seconds']['maps_and_scores']:.1f}s)")
        if not imported and m.gradcam.enabled and m.gradcam.check_images > 0:
            block["explanations"] = _explanations(model, e, x, images, run_dir, m, seed, out_dir, layer, echo)
    echo(f"{e['name']}: accuracy {scores['accuracy']:.3f}, balanced accuracy {scores['balanced_accuracy']:.3f}, "
         f"macro-F1 {scores['macro_f1']:.3f} on {scores['n_images']} images ({time.perf_counter() - t0:.1f}s)")
    return block


def _explanations(model, e: dict, x, images, run_dir: Path, m: Manifest, seed: int, out_dir: Path,
                  layer: str | None, echo: Echo) -> list[dict]:
    """The run's randomisation and faithfulness checks on the external images (annotated ones
    first), as the run's explain stage runs them."""
    t0 = time.perf_counter()
    out = explain.check_explanations(model, x, images.y, images.outlines, m.gradcam, seed, out_dir / e["name"],
                                     run_dir, layer, echo)
    echo(f"{e['name']}: explanation checks ({', '.join(m.gradcam.methods)}) in {time.perf_counter() - t0:.1f}s")
    return out
