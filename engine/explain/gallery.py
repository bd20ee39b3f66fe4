"""Grad-CAM galleries: which test images to show, their three PNGs, and the results.json block.

``explain_backbone`` is the one entry point the pipeline calls per trained backbone; the pieces
(``select_gallery``, ``render_gallery_images``) are separate so each can be tested alone.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.data import as_images
from engine.errors import InputError
from engine.data.annotations import as_outline
from engine.explain import gradcam
from engine.manifest import POINTING_MAX_IMAGES
from engine.paths import relative_to_root
from engine.results import GALLERY_METHOD_NAMES

#: Contour levels drawn on the overlay (fraction of the map's maximum) and their line styles, so
#: the two are told apart without colour.
CONTOUR_LEVELS = (0.5, 0.8)
CONTOUR_STYLES = ("dashed", "solid")
#: Okabe-Ito orange for the tumour box outline: visible on viridis and on greyscale.
BOX_COLOUR = "#E69F00"


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        from engine.atomic import write_bytes
    except ImportError:  # pragma: no cover - engine.atomic is part of the package
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    write_bytes(path, data)


def _class_indices(labels, class_names: Sequence[str], what: str) -> np.ndarray:
    """Labels as int indices into ``class_names`` (accepts names or ints)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu":
        out = labels.astype(np.int64)
    else:
        lookup = {name: i for i, name in enumerate(class_names)}
        try:
            out = np.array([lookup[str(v)] for v in labels], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"{what}: unknown class {exc.args[0]!r}; classes are {list(class_names)}") from None
    if out.size and (out.min() < 0 or out.max() >= len(class_names)):
        raise InputError(f"{what}: class index out of range 0..{len(class_names) - 1}")
    return out


def select_gallery(y_true, y_pred, paths: Sequence[str], class_names: Sequence[str],
                   n_per_class: int, seed: int) -> list[int]:
    """Indices of the gallery images: per class, N correct and up to N misclassified.

    Args:
        y_true, y_pred: (n,) class indices (or class names) of the test images.
        paths: (n,) image paths; candidates are ordered by path before sampling, so the choice does
            not depend on the order the images were listed in.
        n_per_class: N.
        seed: the experiment seed. Each (class, correct/wrong) group draws from its own
            ``numpy.random.default_rng([seed, class, group])`` stream, so one class's counts never
            shift another class's picks.

    Returns:
        Indices grouped by class (canonical order), correct before misclassified, each group sorted
        by path. Fewer than N appear where a group has fewer images.
    """
    y_true = _class_indices(y_true, class_names, "gallery y_true")
    y_pred = _class_indices(y_pred, class_names, "gallery y_pred")
    paths = [str(p) for p in paths]
    if not len(y_true) == len(y_pred) == len(paths):
        raise ValueError("y_true, y_pred and paths must have the same length")
    chosen: list[int] = []
    for c in range(len(class_names)):
        for group, ok in enumerate((True, False)):
            idx = np.flatnonzero((y_true == c) & ((y_pred == c) == ok))
            idx = sorted(idx.tolist(), key=lambda i: (paths[i], i))
            if len(idx) > n_per_class:
                rng = np.random.default_rng([int(seed), c, group])
                pick = rng.choice(len(idx), size=n_per_class, replace=False)
                idx = [idx[k] for k in sorted(pick.tolist())]
            chosen.extend(idx)
    return chosen


def new_figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    # No "Software" stamp: the same inputs give the same bytes across matplotlib patch releases.
    fig.savefig(buf, format="png", metadata={"Software": None})
    _write_bytes(path, buf.getvalue())


def as_grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return image


def _draw_outline(ax, outline, shape) -> None:
    """The tumour outline, dashed orange: a box as its rectangle, a polygon or mask as the contour
    of the pixels it covers at the map's size."""
    from matplotlib.patches import Rectangle

    outline = as_outline(outline)
    if outline is None:
        return
    h, w = shape
    if outline.kind == "box":
        for xc, yc, bw, bh in outline.boxes:
            ax.add_patch(Rectangle(((xc - bw / 2) * w - 0.5, (yc - bh / 2) * h - 0.5), bw * w, bh * h,
                                   fill=False, edgecolor=BOX_COLOUR, linewidth=1.5, linestyle=(0, (4, 2))))
        return
    mask = outline.mask(shape)
    if not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=BOX_COLOUR, linewidths=1.5, linestyles="dashed")


def render_gallery_images(image_uint8: np.ndarray, heatmap: np.ndarray, out_dir: Path | str, stem: str,
                          boxes=None, label: str = "Grad-CAM") -> dict[str, str]:
    """Write ``<stem>_original.png``, ``<stem>_heatmap.png`` and ``<stem>_overlay.png``.

    original: the model input as shown to the network; heatmap: viridis, 0..1, with a colour bar;
    overlay: greyscale image under a translucent viridis map with white contours at 0.5 (dashed)
    and 0.8 (solid) of the maximum, plus the tumour outline ``boxes`` (an
    engine.data.annotations.Outline or YOLO boxes; dashed orange) and a white "+" on the peak.
    Files are written atomically. Returns file names relative to ``out_dir`` keyed
    "original" / "heatmap" / "overlay".
    """
    out_dir = Path(out_dir)
    image = np.asarray(image_uint8)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"image {image.shape[:2]} and heatmap {heatmap.shape} sizes differ")
    names = {kind: f"{stem}_{kind}.png" for kind in ("original", "heatmap", "overlay")}
    h, w = heatmap.shape
    side = 2.4

    fig = new_figure(side, side)
    ax = fig.add_axes((0, 0, 1, 1))
    if image.ndim == 2 or image.shape[-1] == 1:
        ax.imshow(image.reshape(h, w), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image[..., :3].astype(np.uint8), interpolation="nearest")
    ax.set_axis_off()
    save_figure(fig, out_dir / names["original"])

    fig = new_figure(side * 1.3, side)
    ax = fig.add_axes((0.02, 0.04, 0.72, 0.92))
    im = ax.imshow(heatmap, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    cax = fig.add_axes((0.78, 0.1, 0.05, 0.8))
    bar = fig.colorbar(im, cax=cax)
    bar.set_label(f"{label} (max = 1)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    save_figure(fig, out_dir / names["heatmap"])

    fig = new_figure(side, side)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(as_grey(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.imshow(heatmap, cmap="viridis", vmin=0.0, vmax=1.0, alpha=0.45, interpolation="bilinear")
    if heatmap.max() > 0 and heatmap.min() < max(CONTOUR_LEVELS):
        ax.contour(heatmap, levels=list(CONTOUR_LEVELS), colors="white", linewidths=1.0,
                   linestyles=list(CONTOUR_STYLES))
    _draw_outline(ax, boxes, (h, w))
    if heatmap.max() > 0:
        r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        ax.plot([c], [r], marker="+", color="white", markersize=9, markeredgewidth=1.5)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    save_figure(fig, out_dir / names["overlay"])
    return names


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def _outlines(paths: Sequence[str], outlines: Sequence | None) -> list:
    if outlines is None:
        return [None] * len(paths)
    if len(outlines) != len(paths):
        raise ValueError("outlines and paths must have the same length")
    return [as_outline(o) for o in outlines]


def explain_backbone(model, images: np.ndarray, y_true, probs: np.ndarray, paths: Sequence[str],
                     class_names: Sequence[str], out_dir: Path | str, n_per_class: int, seed: int,
                     layer: str | None = None, data_root: Path | str | None = None,
                     run_dir: Path | str | None = None, batch_size: int = 16,
                     outlines: Sequence | None = None, names: Sequence[str] | None = None,
                     heatmaps=None, method: str = "gradcam", echo=None) -> dict:
    """Grad-CAM gallery of one trained backbone; returns its ``gradcam`` block.

    Args:
        model: the trained classifier (saved-model structure).
        images: (n, H, W, 3) uint8 test images at the model input size, RGB 0..255.
        y_true: (n,) true class indices (or names); probs: (n, k) predicted probabilities.
        paths: (n,) image file paths (a frame of a multi-image file as ``record_label`` shows it:
            ``x.nii.gz [slice 3]``).
        outlines: (n,) each image's tumour outline (engine.data.annotations.Outline, or None), drawn
            on its overlay; default none.
        out_dir: folder for the PNGs (e.g. ``<run>/gradcam/<backbone name>``).
        n_per_class, seed: gallery size and the experiment seed (see ``select_gallery``).
        layer: Grad-CAM target layer (None: automatic).
        data_root: image paths in the block are relative to it when given.
        run_dir: file paths in the block are relative to it (default ``out_dir``).
        names: (n,) how the block names each image (``identity.display_path``: a neutral reference
            when the data holds patient ids); default: its path relative to ``data_root``.
        heatmaps, method: another explanation than Grad-CAM on ``model`` (an imported model's,
            engine.explain.agnostic.heatmaps_for): ``heatmaps(images, class_index) -> (m, H, W)``
            and its name, recorded as the block's ``method`` (``layer`` is then the given one or None).
        echo: the run's echo, for Grad-CAM's progress line (none when None or quiet).

    Gallery maps explain the PREDICTED class (why the model said what it said); localisation
    (engine.explain.localise, every annotated image) explains the TRUE class.
    """
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir
    images = as_images(images)  # a split on disk stays there: only the gallery's rows are read
    probs = np.asarray(probs, dtype=np.float64)
    y_true = _class_indices(y_true, class_names, "Grad-CAM y_true")
    y_pred = probs.argmax(axis=1)
    paths = [str(p) for p in paths]
    if not len(images) == len(y_true) == len(probs) == len(paths):
        raise ValueError("images, y_true, probs and paths must have the same length")
    target = gradcam.find_target_layer(model, layer) if heatmaps is None else layer

    gallery = select_gallery(y_true, y_pred, paths, class_names, n_per_class, seed)
    boxes = _outlines(paths, outlines)

    jobs = sorted({(i, int(y_pred[i])) for i in gallery})
    explain = heatmaps or (lambda x, cls: gradcam.gradcam_heatmaps(model, x, cls, layer=target,
                                                                   batch_size=batch_size, echo=echo))
    heat = explain(images[[i for i, _ in jobs]], np.array([c for _, c in jobs])) if jobs else []
    stats = {key: gradcam.heatmap_stats(hm, boxes[key[0]]) for key, hm in zip(jobs, heat)}
    maps = dict(zip(jobs, heat))

    items = []
    for rank, i in enumerate(gallery):
        key = (i, int(y_pred[i]))
        true_name, pred_name = class_names[y_true[i]], class_names[y_pred[i]]
        correct = bool(y_true[i] == y_pred[i])
        stem = _safe(f"{rank:03d}_{true_name}_{'correct' if correct else 'as-' + pred_name}")
        image = images[i]
        if image.dtype != np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        files = render_gallery_images(image, maps[key], out_dir, stem, boxes=boxes[i],
                                      label=GALLERY_METHOD_NAMES.get(method, method))
        s = stats[key]
        items.append({
            "image": names[i] if names is not None else relative_to_root(paths[i], data_root),
            "true_class": true_name,
            "predicted_class": pred_name,
            "explained_class": pred_name,
            "probability": float(probs[i, y_pred[i]]),
            "correct": correct,
            "peak": s["peak"],
            "top20_area_fraction": s["top20_area_fraction"],
            "peak_in_box": s["peak_in_box"],
            "files": {kind: relative_to_root(out_dir / name, run_dir) for kind, name in files.items()},
        })

    block = {"layer": target, "images_per_class": int(n_per_class), "items": items}
    if heatmaps is not None:
        block["method"] = method
    return block


def boxed_sample(boxes: Sequence[list], seed: int, max_images: int) -> list[int]:
    """Indices of the images with a box; a seeded sample of ``max_images`` when there are more."""
    boxed = [i for i in range(len(boxes)) if boxes[i] is not None and (not isinstance(boxes[i], list) or boxes[i])]
    if len(boxed) > max_images:
        rng = np.random.default_rng([int(seed), 7])
        boxed = sorted(rng.choice(boxed, size=max_images, replace=False).tolist())
    return boxed


def _game(stats_by_index: dict[int, dict], y_true: np.ndarray, class_names: Sequence[str]) -> dict:
    game = gradcam.pointing_game(list(stats_by_index.values()))
    game["explained_class"] = "true"
    game["per_class"] = {
        class_names[c]: {k: v for k, v in gradcam.pointing_game(
            [s for i, s in stats_by_index.items() if y_true[i] == c]).items() if k in ("hits", "total", "rate")}
        for c in sorted({int(y_true[i]) for i in stats_by_index})
    }
    return game


def pointing_game_on(model, images: np.ndarray, y_true, paths: Sequence[str], class_names: Sequence[str],
                     seed: int, layer: str | None = None, batch_size: int = 16,
                     max_images: int = POINTING_MAX_IMAGES, outlines: Sequence | None = None,
                     heatmaps=None) -> dict | None:
    """The pointing game alone (no gallery) on any labelled image set, e.g. the validation split.

    Args:
        images: (n, H, W, 3) RGB 0..255 at the model input size; y_true: (n,) class indices or
            names; paths: (n,) image files; outlines: (n,) their tumour outlines (None: none).

    Returns the strict pointing game (hits, total, rate, chance_rate, explained_class "true",
    per_class), or None when no image has an outline. Scoring the validation split lets Grad-CAM
    settings (target layer, input size) be chosen without looking at the test split.
    """
    y_true = _class_indices(y_true, class_names, "pointing game y_true")
    if not len(images) == len(y_true) == len(paths):
        raise ValueError("images, y_true and paths must have the same length")
    boxes = _outlines(paths, outlines)
    boxed = boxed_sample(boxes, seed, max_images)
    if not boxed:
        return None
    images = as_images(images)
    heat = heatmaps(images[boxed], y_true[boxed]) if heatmaps is not None else \
        gradcam.gradcam_heatmaps(model, images[boxed], y_true[boxed], layer=layer, batch_size=batch_size)
    return _game({i: gradcam.heatmap_stats(hm, boxes[i]) for i, hm in zip(boxed, heat)}, y_true, class_names)
