"""Localisation as the field scores it: strict and tolerant pointing game, energy pointing game.

* Strict pointing game: the map's peak lies inside a tumour box (``gradcam.heatmap_stats``).
* Tolerant pointing game (Zhang et al., ECCV 2016, "Top-down neural attention by excitation
  backprop"): a hit when the peak lies within ``tolerance_px`` (15) pixels of a box, measured at the
  ORIGINAL image resolution - the maps are computed at the model's input size, so each image's
  original (height, width) is needed to convert; without it the tolerance is in model-input pixels.
* Energy pointing game (Wang et al. 2020, Score-CAM): the share of the map's mass inside the boxes.

Chance rates (what a map knowing nothing would score): a uniformly random peak hits a box with
probability equal to the box's share of the image area (strict), or of the box dilated by the
tolerance (tolerant); a uniform map puts the box's area share of its mass inside the box (energy).
Each rate comes with a seeded percentile-bootstrap interval over images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.explain import gradcam
from engine.explain.similarity import bootstrap_ci

#: Zhang et al. 2016's tolerance.
TOLERANCE_PX = 15.0


def _distance_to_boxes(shape: tuple[int, int], boxes: list, original: tuple[int, int]) -> np.ndarray:
    """(h, w) distance in ORIGINAL pixels from each map pixel's centre to the nearest box (0 inside)."""
    h, w = shape
    oh, ow = original
    ys = (np.arange(h) + 0.5) / h * oh
    xs = (np.arange(w) + 0.5) / w * ow
    best = np.full((h, w), np.inf)
    for xc, yc, bw, bh in boxes:
        dy = np.maximum.reduce([(yc - bh / 2) * oh - ys, np.zeros(h), ys - (yc + bh / 2) * oh])
        dx = np.maximum.reduce([(xc - bw / 2) * ow - xs, np.zeros(w), xs - (xc + bw / 2) * ow])
        best = np.minimum(best, np.hypot(dy[:, None], dx[None, :]))
    return best


def _score_one(heatmap: np.ndarray, boxes: list, original: tuple[int, int], tolerance: float) -> dict:
    stats = gradcam.heatmap_stats(heatmap, boxes)
    mask = gradcam.box_mask(heatmap.shape, boxes)
    near = _distance_to_boxes(heatmap.shape, boxes, original) <= tolerance
    mass = float(heatmap.sum())
    tolerant = False
    if stats["peak"] is not None:
        r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        tolerant = bool(near[r, c] or mask[r, c])
    return {"hit": bool(stats["peak_in_box"]), "tolerant_hit": tolerant,
            "energy": float(heatmap[mask].sum() / mass) if mass > 0 else 0.0,
            "area": float(mask.mean()), "tolerant_area": float((near | mask).mean())}


def localisation_scores(maps: np.ndarray, boxes: Sequence, original_sizes: Sequence | None = None,
                        tolerance_px: float = TOLERANCE_PX, seed: int = 0, n_boot: int = 1000) -> dict:
    """Pointing games over the images that have a box.

    Args:
        maps: (n, h, w) saliency maps in [0, 1].
        boxes: per image, None / [] (skipped) or YOLO boxes (xc, yc, w, h normalised; one or a list).
        original_sizes: per image, the (height, width) in pixels of the file before resizing to the
            model input; None (for all or for one image) uses the map's own size.
        tolerance_px: the tolerant game's radius, in original pixels.

    Returns ``rate``, ``hits``, ``total`` (strict), ``tolerant_rate``, ``tolerant_hits``,
    ``tolerance_px``, ``energy`` (mean share of mass in the boxes), ``chance_rate`` (mean box area
    share: the chance level of the strict game and of energy), ``tolerant_chance_rate`` (mean share
    of the dilated box), each rate's ``*_ci``, and ``beats_chance`` per score (its interval's lower
    bound above its chance level). Rates are None when no image has a box.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if len(boxes) != len(maps) or (original_sizes is not None and len(original_sizes) != len(maps)):
        raise ValueError("maps, boxes and original_sizes must have the same length")
    rows = []
    for i, (heatmap, b) in enumerate(zip(maps, boxes)):
        box_list = gradcam.as_boxes(b)
        if box_list:
            # an unreadable original size measures the tolerance in map pixels, as without sizes
            size = original_sizes[i] if original_sizes is not None else None
            original = tuple(size) if size is not None else heatmap.shape
            rows.append(_score_one(heatmap, box_list, original, float(tolerance_px)))
    return _summary(rows, float(tolerance_px), seed, n_boot)


def _summary(rows: list[dict], tolerance: float, seed: int, n_boot: int) -> dict:
    def column(key):
        return np.array([r[key] for r in rows], dtype=np.float64)

    def mean(key):
        return float(column(key).mean()) if rows else None

    def ci(key):
        return bootstrap_ci(column(key), np.mean, seed=seed, n_boot=n_boot)

    out = {"rate": mean("hit"), "hits": int(column("hit").sum()), "total": len(rows),
           "tolerance_px": tolerance, "tolerant_rate": mean("tolerant_hit"),
           "tolerant_hits": int(column("tolerant_hit").sum()), "energy": mean("energy"),
           "chance_rate": mean("area"), "tolerant_chance_rate": mean("tolerant_area"),
           "rate_ci": ci("hit"), "tolerant_rate_ci": ci("tolerant_hit"), "energy_ci": ci("energy")}
    out["beats_chance"] = None if not rows else {
        "rate": out["rate_ci"][0] > out["chance_rate"],
        "tolerant_rate": out["tolerant_rate_ci"][0] > out["tolerant_chance_rate"],
        "energy": out["energy_ci"][0] > out["chance_rate"]}
    return out
