"""Localisation as the field scores it, against a tumour outline (a box, polygon or mask:
engine.data.annotations.Outline), each score with a bootstrap interval and two chance values.

Pointing games, on the map's peak:

* strict (Zhang et al., ECCV 2016, "Top-down neural attention by excitation backprop"): the peak
  lies inside the outline;
* tolerant (the same paper): the peak lies within ``tolerance_px`` (15) pixels of it, measured at
  the ORIGINAL image resolution (the maps are at the model's input size, so each image's original
  (height, width) is needed; without it the tolerance is in map pixels).

Outline scores, on the whole map:

* energy, or relevance mass (Wang et al. 2020, Score-CAM; Arras et al. 2022, "CLEVR-XAI"): the
  share of the map's mass inside the outline;
* coverage: the share of the outline's pixels among the map's top ``top_percent`` % pixels (only
  pixels with positive value count: a map that is zero there points nowhere);
* IoU: intersection over union of the map thresholded at ``iou_threshold`` x its maximum (0.5: the
  dashed contour every overlay draws) with the outline.

Chance values, what a map that knows nothing scores on the same outlines:

* ``random``: a uniformly random peak hits the outline with probability its area share (strict) or
  its dilated area share (tolerant); a uniform map puts the area share of its mass inside (energy);
  a random ranking covers ``top_percent`` % of the outline (coverage); IoU is measured on a seeded
  smooth random map per image (engine.explain.faithfulness.random_maps);
* ``centre``: the centre-weighted Gaussian map of the faithfulness check, scored like the method's
  map: the "tumours are central" prior.

A score beats a chance value when its interval's lower bound lies above it (``beats_chance`` against
random, ``beats_centre`` against the centre map). Images without an outline are not scored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.data.annotations import Outline, as_outline
from engine.explain.similarity import bootstrap_ci

#: Zhang et al. 2016's tolerance.
TOLERANCE_PX = 15.0
#: The coverage score's share of the map's pixels, and the IoU's threshold (fraction of the maximum).
TOP_PERCENT = 20.0
IOU_THRESHOLD = 0.5
#: The scores with an interval and chance values, in the order tables show them.
SCORES = ("rate", "tolerant_rate", "energy", "coverage", "iou")


def _top_pixels(heatmap: np.ndarray, top_percent: float) -> np.ndarray:
    flat = heatmap.ravel()
    k = int(np.ceil(top_percent / 100.0 * flat.size))
    order = np.argsort(-flat, kind="stable")[:k]
    top = np.zeros(flat.size, dtype=bool)
    top[order[flat[order] > 0]] = True
    return top.reshape(heatmap.shape)


def _outline_scores(heatmap: np.ndarray, mask: np.ndarray, near: np.ndarray, top_percent: float,
                    iou_threshold: float) -> dict:
    top = float(heatmap.max()) if heatmap.size else 0.0
    mass = float(heatmap.sum())
    if not top > 0:
        return {"hit": False, "tolerant_hit": False, "energy": 0.0, "coverage": 0.0, "iou": 0.0}
    r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    on = heatmap >= iou_threshold * top
    union = int((on | mask).sum())
    return {"hit": bool(mask[r, c]), "tolerant_hit": bool(near[r, c] or mask[r, c]),
            "energy": float(heatmap[mask].sum() / mass),
            "coverage": float(_top_pixels(heatmap, top_percent)[mask].mean()),
            "iou": float((on & mask).sum() / union) if union else 0.0}


def score_image(heatmap: np.ndarray, outline: Outline, original: tuple[int, int] | None = None, *,
                tolerance_px: float = TOLERANCE_PX, top_percent: float = TOP_PERCENT,
                iou_threshold: float = IOU_THRESHOLD, random_map: np.ndarray | None = None,
                centre: np.ndarray | None = None) -> dict:
    """One image's scores: ``hit``, ``tolerant_hit``, ``energy``, ``coverage``, ``iou``; the chance
    terms ``area``, ``tolerant_area``; and, where given, the ``random_iou`` of ``random_map`` and the
    ``centre_*`` scores of the ``centre`` map."""
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    shape = heatmap.shape
    mask = outline.mask(shape)
    near = outline.distance(shape, tuple(original) if original is not None else shape) <= tolerance_px
    row = _outline_scores(heatmap, mask, near, top_percent, iou_threshold)
    row.update(area=float(mask.mean()), tolerant_area=float((near | mask).mean()))
    if random_map is not None:
        row["random_iou"] = _outline_scores(random_map, mask, near, top_percent, iou_threshold)["iou"]
    if centre is not None:
        for k, v in _outline_scores(centre, mask, near, top_percent, iou_threshold).items():
            row[f"centre_{k}"] = float(v)
    return row


def chance_maps(index: int, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The random map of image ``index`` (its own seeded stream, so chunking changes nothing) and the
    centre-weighted map."""
    from engine.explain.faithfulness import centre_map, random_maps

    return random_maps(1, shape, [int(seed), 31, int(index)])[0], centre_map(shape)


def score_maps(maps: np.ndarray, outlines: Sequence, original_sizes: Sequence | None = None, *,
               tolerance_px: float = TOLERANCE_PX, top_percent: float = TOP_PERCENT,
               iou_threshold: float = IOU_THRESHOLD, seed: int = 0, indices: Sequence[int] | None = None) -> list[dict]:
    """``score_image`` of each map with an outline (rows carry ``index``: ``indices[i]`` or i)."""
    rows = []
    for i, (heatmap, o) in enumerate(zip(maps, outlines)):
        outline = as_outline(o)
        if outline is None:
            continue
        index = int(indices[i]) if indices is not None else i
        size = original_sizes[i] if original_sizes is not None else None
        random_map, centre = chance_maps(index, np.shape(heatmap), seed)
        row = score_image(heatmap, outline, size, tolerance_px=tolerance_px, top_percent=top_percent,
                          iou_threshold=iou_threshold, random_map=random_map, centre=centre)
        rows.append({"index": index, **row})
    return rows


def summarise(rows: Sequence[dict], *, tolerance_px: float = TOLERANCE_PX, top_percent: float = TOP_PERCENT,
              iou_threshold: float = IOU_THRESHOLD, seed: int = 0, n_boot: int = 1000,
              classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None) -> dict:
    """The localisation block over ``rows`` (``score_maps``).

    ``rate``/``hits``/``total`` (strict), ``tolerant_rate``/``tolerant_hits``, ``energy``,
    ``coverage``, ``iou``, each score's ``*_ci``; ``chance`` {"random", "centre"} per score;
    ``chance_rate`` and ``tolerant_chance_rate`` (random, the pointing games' chance as before);
    ``beats_chance`` and ``beats_centre`` per score; the settings; and with ``classes`` (the class of
    each row) ``per_class`` {class: {total, rate, energy, coverage, iou}}. Scores are None without rows.
    """
    def column(key):
        return np.array([r[key] for r in rows], dtype=np.float64)

    def mean(key):
        return float(column(key).mean()) if rows else None

    keys = {"rate": "hit", "tolerant_rate": "tolerant_hit", "energy": "energy", "coverage": "coverage", "iou": "iou"}
    out: dict = {"total": len(rows), "hits": int(column("hit").sum()) if rows else 0,
                 "tolerant_hits": int(column("tolerant_hit").sum()) if rows else 0,
                 "tolerance_px": float(tolerance_px), "coverage_top_percent": float(top_percent),
                 "iou_threshold": float(iou_threshold)}
    for score, key in keys.items():
        out[score] = mean(key)
        out[f"{score}_ci"] = bootstrap_ci(column(key), np.mean, seed=seed, n_boot=n_boot)
    random = {"rate": mean("area"), "tolerant_rate": mean("tolerant_area"), "energy": mean("area"),
              "coverage": float(top_percent) / 100.0 if rows else None,
              "iou": mean("random_iou") if rows and "random_iou" in rows[0] else None}
    centre = {score: mean(f"centre_{key}") if rows and f"centre_{key}" in rows[0] else None
              for score, key in keys.items()}
    out["chance"] = {"random": random, "centre": centre}
    out["chance_rate"], out["tolerant_chance_rate"] = random["rate"], random["tolerant_rate"]

    def beats(baseline):
        return None if not rows else {s: bool(out[f"{s}_ci"][0] > baseline[s]) for s in SCORES
                                      if baseline[s] is not None}

    out["beats_chance"], out["beats_centre"] = beats(random), beats(centre)
    if classes is not None and class_names is not None:
        classes = np.asarray(classes)
        out["per_class"] = {}
        for c in sorted({int(v) for v in classes}):
            sub = [r for r, k in zip(rows, classes) if k == c]
            out["per_class"][class_names[c]] = {
                "total": len(sub), "hits": int(sum(r["hit"] for r in sub)),
                **{score: float(np.mean([r[key] for r in sub])) for score, key in keys.items()}}
    return out


def localisation_scores(maps: np.ndarray, boxes: Sequence, original_sizes: Sequence | None = None,
                        tolerance_px: float = TOLERANCE_PX, seed: int = 0, n_boot: int = 1000, *,
                        top_percent: float = TOP_PERCENT, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """Every score of ``summarise`` over the maps whose image has an outline.

    Args:
        maps: (n, h, w) saliency maps in [0, 1].
        boxes: per image, None / [] (not scored), YOLO boxes (xc, yc, w, h normalised; one or a
            list) or an engine.data.annotations.Outline.
        original_sizes: per image the (height, width) of the file before resizing to the model
            input; None (for all or for one image) measures the tolerance in map pixels.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if len(boxes) != len(maps) or (original_sizes is not None and len(original_sizes) != len(maps)):
        raise ValueError("maps, boxes and original_sizes must have the same length")
    rows = score_maps(maps, boxes, original_sizes, tolerance_px=tolerance_px, top_percent=top_percent,
                      iou_threshold=iou_threshold, seed=seed)
    return summarise(rows, tolerance_px=tolerance_px, top_percent=top_percent, iou_threshold=iou_threshold,
                     seed=seed, n_boot=n_boot)
