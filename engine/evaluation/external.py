"""External validation: a run's saved models on another labelled folder (``auditrun evaluate``).

The folder holds one sub-folder per class (same aliases as the run's manifest), images of any
size; DICOM files and NIfTI volumes give one image per frame or selected slice, decoded with the
run's ``data.windowing``, ``data.window_percentiles`` and ``data.slices``. Where YOLO box files (``<image>.txt``: ``class x_center y_center width height``, normalised)
lie beside tumour images, each backbone also gets the Grad-CAM pointing game on them and the
explanation checks of the run's ``[gradcam] method`` list (``explanations``, docs/explanations.md).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from engine.atomic import write_json
from engine.errors import InputError
from engine.manifest import POINTING_MAX_IMAGES
from engine.paths import check_output_root
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


def _run_manifest(run_dir: Path) -> dict:
    """The run's copy of its manifest as plain TOML; {} when it is missing or not TOML (the
    defaults apply then)."""
    import tomllib

    try:
        return tomllib.loads((run_dir / "manifest.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _aliases_from_run(manifest: dict, class_names: list[str]) -> dict[str, str]:
    """The folder-name aliases the run itself used (``engine.manifest.class_aliases``)."""
    from engine.manifest import folder_aliases

    return folder_aliases(class_names, manifest.get("data", {}).get("aliases", {}))


def _min_image_size_from_run(manifest: dict) -> int:
    """The run's ``integrity.min_image_size``: external images are held to the run's own rule."""
    from engine.integrity.audit import IntegrityConfig

    value = manifest.get("integrity", {}).get("min_image_size", IntegrityConfig.min_image_size)
    return IntegrityConfig(min_image_size=value).min_image_size  # validated: InputError naming the key


def _readers_from_run(manifest: dict):
    """The run's ``data.windowing``/``data.window_percentiles`` and ``data.slices``: external images
    are decoded as the run's own were (InputError naming the key when the copy holds a bad value)."""
    from engine.manifest import slice_selection, windowing_options

    data = manifest.get("data", {})
    data = data if isinstance(data, dict) else {}
    return windowing_options(data), slice_selection(data)


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


def evaluate_external(run_dir: Path, data: Path, backbone: str | None = None, *,
                      echo: Callable[[str], None] | None = None, seed: int | None = None,
                      max_pointing: int = POINTING_MAX_IMAGES, warn: Callable[[str], None] | None = None) -> dict:
    """Score the run's models on ``data``; store and return ``{"data", "backbones": [...]}``.

    Unreadable images and images below the run's ``integrity.min_image_size`` are skipped, each
    passed to ``warn`` (default: ``echo``) and listed under ``"skipped"``; the rest are evaluated.
    """
    run_dir, data = Path(run_dir), Path(data)
    # Before TensorFlow loads: a broken results.json should cost the user no import time.
    results = _read_run_results(run_dir)
    check_output_root(run_dir, [("--data", data)])  # it writes RUN_DIR/external
    echo = echo or (lambda _m: None)
    warn = warn or (lambda msg: echo(f"warning: {msg}"))
    class_names = results["data"]["class_names"]
    seed = results["experiment"]["seed"] if seed is None else seed
    entries = _finished_backbones(results, backbone)
    run_manifest = _run_manifest(run_dir)  # the run's own settings: aliases, image size, TTA, windowing
    windowing, slices = _readers_from_run(run_manifest)
    records, y = discover_folder(data, class_names, _aliases_from_run(run_manifest, class_names), slices)
    records = _with_references(records, data, run_dir, results["experiment"]["name"], warn)
    records, y, skipped = usable_images(data, records, y, _min_image_size_from_run(run_manifest), warn, windowing)
    images = _ExternalImages(records, y, class_names, *_pointing_sample(records, y, class_names, seed, max_pointing),
                             windowing=windowing)
    tta = bool(run_manifest.get("evaluation", {}).get("tta_flip", False))
    checks = _checks_settings(run_manifest, run_dir / "external" / _folder_key(data), seed)
    out = [_evaluate_backbone(run_dir, e, images, echo, tta, checks) for e in entries]
    counts = {c: int((y == i).sum()) for i, c in enumerate(class_names)}
    report = {"data": str(data.resolve()), "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "counts": counts, "skipped": skipped, "n_boxed_images": len(images.boxed), "backbones": out}
    _store(run_dir, data, results, report)
    return report


def _with_references(records: list, data: Path, run_dir: Path, experiment: str, warn) -> list:
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


def _read_run_results(run_dir: Path) -> dict:
    """The run's results.json; InputError when it is invalid or the run stopped before data discovery."""
    results = read_results(run_dir)
    if "data" not in results:  # the schema allows it: a run killed during data discovery
        raise InputError(f"{str(run_dir / 'results.json')!r} has no data block: the run stopped before "
                         "data discovery, so it has no model to evaluate")
    return results


def _finished_backbones(results: dict, backbone: str | None) -> list[dict]:
    """The run's finished backbone entries, or only ``backbone``'s (InputError when it did not finish)."""
    entries = [e for e in results["backbones"] if e.get("status") == "ok"]
    if backbone is not None:
        entries = [e for e in entries if e["name"] == backbone]
        if not entries:
            names = [e["name"] for e in results["backbones"] if e.get("status") == "ok"]
            raise InputError(f"--backbone {backbone!r} is not a finished backbone of this run; use one of {names}")
    return entries


def _pointing_sample(records: list, y: np.ndarray, class_names: list[str], seed: int,
                     max_pointing: int) -> tuple[list, list[int]]:
    """(YOLO boxes per image, the indexes of the tumour images with boxes that play the pointing
    game: at most ``max_pointing``, drawn with ``seed``). A frame of a multi-image file has none:
    one box file beside it cannot say which frame it boxes."""
    from engine.explain.gradcam import read_yolo_boxes

    from engine.explain.gallery import boxed_sample

    boxes = [[] if r.frame_name else read_yolo_boxes(r.path) for r in records]
    no_tumor = class_names.index("no_tumor") if "no_tumor" in class_names else -1
    # The run's own sample rule (engine.explain.gallery), over the tumour images with a box.
    tumour_boxes = [b if y[i] != no_tumor else [] for i, b in enumerate(boxes)]
    return boxes, boxed_sample(tumour_boxes, seed, max_pointing)


@dataclass
class _ExternalImages:
    """The usable images of the external folder (records), their labels and boxes; pixels decoded
    once per size, DICOM and NIfTI frames with the run's ``windowing``."""

    records: list
    y: np.ndarray
    class_names: list[str]
    boxes: list
    boxed: list[int]
    windowing: object = None
    _decoded: dict[int, np.ndarray] = field(default_factory=dict)

    def pixels(self, size: int) -> np.ndarray:
        from engine.data.discovery import decode_image

        if size not in self._decoded:
            self._decoded[size] = np.stack([decode_image(r.path, size, r.frame, self.windowing)
                                            for r in self.records])
        return self._decoded[size]


def _folder_key(data: Path) -> str:
    """``<folder>-<hash>``: one external folder's name under ``<run>/external/``."""
    key = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:8]
    return f"{data.name or 'data'}-{key}"


def _checks_settings(manifest: dict, out_dir: Path, seed: int) -> dict:
    """The run's own ``[gradcam]`` check settings (engine.manifest.GradcamConfig defaults where unset)."""
    from engine.manifest import GradcamConfig

    g, d = manifest.get("gradcam", {}), GradcamConfig()
    methods = g.get("method", d.method)
    return {"enabled": bool(g.get("enabled", d.enabled)) and int(g.get("check_images", d.check_images)) > 0,
            "methods": [methods] if isinstance(methods, str) else list(methods), "seed": seed, "out_dir": out_dir,
            "n_images": int(g.get("check_images", d.check_images)),
            "tolerance_px": float(g.get("tolerance_px", d.tolerance_px)),
            "cascade_steps": int(g.get("cascade_steps", d.cascade_steps)),
            "faithfulness_steps": int(g.get("faithfulness_steps", d.faithfulness_steps))}


def _evaluate_backbone(run_dir: Path, e: dict, images: _ExternalImages, echo: Callable[[str], None],
                       tta: bool, checks: dict | None = None) -> dict:
    """One backbone's block: its metrics on the images and, where there are boxes, its pointing game.

    Predicts as the run did: with flip test-time augmentation when its manifest asked for it.
    """
    from engine.training.backbones import load_saved_model  # loads Keras: after the inputs are checked
    from engine.training.train import predict

    t0 = time.perf_counter()
    if e.get("source") == "imported":
        return _evaluate_imported(e, images, echo, tta, t0)
    model_path = run_dir / e["artifacts"]["model"]
    if not model_path.is_file():
        raise InputError(f"model file {str(model_path)!r} is missing; external validation needs the run's models")
    model = load_saved_model(model_path)
    x = images.pixels(e["input_size"][0])
    probs = predict(model, x, tta_flip=tta, echo=echo, label=f"{e['name']}: predictions")
    block, m = _metrics_block(e, images, probs)
    if images.boxed:
        block["pointing_game"] = _pointing_game(model, e, x, images)
        if checks and checks["enabled"]:
            block["explanations"] = _explanations(model, e, x, images, run_dir, checks, echo)
    echo(f"{e['name']}: accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
         f"macro-F1 {m['macro_f1']:.3f} on {m['n_images']} images ({time.perf_counter() - t0:.1f}s)")
    return block


def _metrics_block(e: dict, images: "_ExternalImages", probs: np.ndarray) -> tuple[dict, dict]:
    """One backbone's block of metrics on the external images, and the metrics themselves."""
    from engine.evaluation.metrics import classification_metrics
    from engine.sklearn_warnings import hold_back

    # A small folder (one class, one image) makes sklearn warn about cases the metrics already
    # handle; nothing in those warnings is news to the reader of the figures.
    with hold_back():
        m = classification_metrics(images.y, probs, images.class_names).to_dict()
    block = {"name": e["name"], "display_name": e.get("display_name", e["name"]),
             "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
             "classes_in_macro": m["classes_in_macro"], "per_class": m["per_class"],
             "confusion_matrix": m["confusion_matrix"], "n_images": m["n_images"]}
    return block, m


def _evaluate_imported(e: dict, images: _ExternalImages, echo: Callable[[str], None], tta: bool,
                       t0: float) -> dict:
    """An imported model's block (``[[models]]``, engine.training.imported): read from its own file,
    preprocessed as the audit did, the pointing game by the method its audit used."""
    from engine.explain.agnostic import heatmaps_for
    from engine.explain.gradcam import heatmap_stats, pointing_game
    from engine.manifest import folder_aliases
    from engine.training.imported import from_entry

    model = from_entry(e, images.class_names, folder_aliases(images.class_names, {}))
    x = images.pixels(e["input_size"][0])
    probs = model.predict_proba(x, tta_flip=tta)
    block, m = _metrics_block(e, images, probs)
    if images.boxed:
        heatmaps, _method, _layer = heatmaps_for(model)
        idx = np.array(images.boxed)
        maps = heatmaps(x[idx], images.y[idx])
        block["pointing_game"] = pointing_game([heatmap_stats(h, images.boxes[i]) for h, i in zip(maps, idx)])
    echo(f"{e['name']}: accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
         f"macro-F1 {m['macro_f1']:.3f} on {m['n_images']} images ({time.perf_counter() - t0:.1f}s)")
    return block


def _pointing_game(model, e: dict, x: np.ndarray, images: _ExternalImages) -> dict:
    from engine.explain.gradcam import gradcam_heatmaps, heatmap_stats, pointing_game

    idx = np.array(images.boxed)
    # the layer the run's own Grad-CAM used (a manifest may name one), else the automatic one
    layer = (e.get("gradcam") or {}).get("layer")
    maps = gradcam_heatmaps(model, x[idx].astype("float32"), images.y[idx], layer=layer)
    return pointing_game([heatmap_stats(h, images.boxes[i]) for h, i in zip(maps, idx)])


def _explanations(model, e: dict, x: np.ndarray, images: _ExternalImages, run_dir: Path, checks: dict,
                  echo: Callable[[str], None]) -> list[dict]:
    """The run's explanation checks on the external tumour images with boxes (and, to make up the
    number, other external images), as ``engine.explain.reliability.explain_reliability`` runs them."""
    from engine.explain.reliability import explain_reliability

    boxed = set(images.boxed)
    box_paths = [str(r.path) if i in boxed else None for i, r in enumerate(images.records)]
    t0 = time.perf_counter()
    out = explain_reliability(model, x, images.y, box_paths, checks["methods"], checks["seed"],
                              checks["out_dir"] / e["name"], run_dir, layer=(e.get("gradcam") or {}).get("layer"),
                              n_images=checks["n_images"], tolerance_px=checks["tolerance_px"],
                              cascade_steps=checks["cascade_steps"], faithfulness_steps=checks["faithfulness_steps"],
                              echo=echo)
    echo(f"{e['name']}: explanation checks ({', '.join(checks['methods'])}) in {time.perf_counter() - t0:.1f}s")
    return out


def _store(run_dir: Path, data: Path, results: dict, report: dict) -> None:
    """``external/<folder>-<hash>.json``, and the report in results.json (one entry per folder)."""
    write_json(run_dir / "external" / f"{_folder_key(data)}.json", report)
    # results.json keeps one entry per external folder, so `auditrun render` can show them
    results["external"] = [x for x in results.get("external", []) if x.get("data") != report["data"]] + [report]
    write_results(run_dir, results)
