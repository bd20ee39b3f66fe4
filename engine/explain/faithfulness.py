"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018, RISE), against two baseline maps.

Deletion replaces the most salient pixels first with a baseline image, in ``steps`` equal steps
from 0 % to 100 % of the pixels, and records the model's probability of the explained class; a
faithful map makes it fall fast (low area under the curve). Insertion starts from the baseline image
and reveals the most salient pixels first; a faithful map makes the probability rise fast (high AUC).

A low deletion AUC alone means little: deleting any large central region of an MRI slice may kill
the prediction. So the same curves are drawn for two maps that know nothing about the model:

* ``random``: seeded uniform noise on a ``RANDOM_GRID`` x ``RANDOM_GRID`` grid, upsampled bilinearly
  (as smooth as a 7x7 CAM, so it removes blobs, not salt-and-pepper pixels, like the method does);
* ``centre``: a Gaussian bump at the image centre (sigma = ``CENTRE_SIGMA`` of the side) - the
  "tumours are central" prior every brain slice invites.

A method beats a baseline on a curve when the paired bootstrap interval of the per-image AUC
difference lies entirely on the better side of zero.

Baseline image (``baseline``): "mean" (default; every removed pixel takes the image's mean colour),
"blur" (a Gaussian blur, sigma = ``BLUR_SIGMA`` of the side) or "black". RISE's blur (sigma 5 px at
224 px) leaves a tumour-sized bright blob visible, so deleting it would remove little; the mean
removes it, at the price of images further from the training distribution (see docs/explanations.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.errors import InputError
from engine.explain.similarity import bootstrap_ci

BASELINES = ("mean", "blur", "black")
DEFAULT_STEPS = 8
RANDOM_GRID = 7
CENTRE_SIGMA = 0.25
BLUR_SIGMA = 0.1


def baseline_images(images: np.ndarray, kind: str = "mean") -> np.ndarray:
    """The (n, H, W, C) image every removed pixel is taken from."""
    from scipy.ndimage import gaussian_filter

    images = np.asarray(images, dtype=np.float32)
    if kind == "mean":
        return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).copy()
    if kind == "black":
        return np.zeros_like(images)
    if kind == "blur":
        sigma = BLUR_SIGMA * min(images.shape[1:3])
        return gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="nearest").astype(np.float32)
    raise InputError(f"faithfulness baseline {kind!r} unknown; choose one of {', '.join(BASELINES)}")


def random_maps(n: int, shape: tuple[int, int], seed: int | Sequence[int], grid: int = RANDOM_GRID) -> np.ndarray:
    """(n, H, W) smooth random maps in [0, 1] (see the module docstring); ``seed`` an int or a
    sequence of ints (one stream per image, as engine.explain.localisation draws them)."""
    from scipy.ndimage import zoom

    coarse = np.random.default_rng([*(int(s) for s in np.atleast_1d(seed)), 11]).random((n, grid, grid))
    h, w = shape
    return np.stack([zoom(c, (h / grid, w / grid), order=1, grid_mode=True, mode="nearest")[:h, :w]
                     for c in coarse]).astype(np.float32)


def centre_map(shape: tuple[int, int], sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """(H, W) Gaussian bump at the image centre, max 1."""
    h, w = shape
    yy = (np.arange(h) + 0.5) / h - 0.5
    xx = (np.arange(w) + 0.5) / w - 0.5
    return np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _order(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices, most salient first; ties in a random (seeded) order, not raster order."""
    flat = saliency.ravel()
    return np.lexsort((rng.random(flat.size), -flat))


def _step_images(image: np.ndarray, base: np.ndarray, order: np.ndarray, steps: int) -> np.ndarray:
    """(2 (steps - 1), H, W, C): deletion then insertion images of steps 1 .. steps - 1.

    Step k swaps the first k/steps of ``order``; steps 0 and ``steps`` are the image itself and the
    baseline image, the same for every map, so they are scored once per image (``_ends``).
    """
    h, w = image.shape[:2]
    rank = np.empty(h * w, np.int64)
    rank[order] = np.arange(h * w)
    cut = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int64)[1:-1]
    swapped = (rank.reshape(1, h, w) < cut[:, None, None])[..., None]  # (steps - 1, H, W, 1)
    return np.concatenate([np.where(swapped, base, image), np.where(swapped, image, base)])


def _ends(probability, images: np.ndarray, bases: np.ndarray, cls: np.ndarray, batch_size: int):
    """Class score of each image and of its baseline image: (n,), (n,)."""
    both = np.concatenate([images, bases])
    owner = np.concatenate([cls, cls])
    scores = np.concatenate([np.asarray(probability(both[s:s + batch_size], owner[s:s + batch_size]))
                             for s in range(0, len(both), batch_size)])
    return scores[:len(images)], scores[len(images):]


def perturbation_curves(probability, images: np.ndarray, class_index: Sequence[int], maps: np.ndarray,
                        steps: int = DEFAULT_STEPS, baseline: str = "mean", seed: int = 0,
                        batch_size: int = 32, ends: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves, each (n, steps + 1): class probability after step k.

    ``probability``: ``(images, class_index) -> (n,)`` (``methods.probability_fn``) or any function
    with that contract. ``maps``: (n, H, W) saliency at the image resolution. ``ends``: the scores
    of the images and of their baseline images when already known (``_ends``).
    """
    images = np.asarray(images, dtype=np.float32)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != images.shape[:3]:
        raise ValueError(f"maps {maps.shape} do not match images {images.shape[:3]}")
    if steps < 2:
        raise ValueError(f"perturbation curves need at least 2 steps; got {steps}")
    cls = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (len(images),))
    bases = baseline_images(images, baseline)
    full, empty = ends if ends is not None else _ends(probability, images, bases, cls, batch_size)
    rng = np.random.default_rng([int(seed), 13])
    per_image = 2 * (steps - 1)
    per_call = max(1, batch_size // per_image)
    inner = []
    for start in range(0, len(images), per_call):
        idx = range(start, min(start + per_call, len(images)))
        batch = np.concatenate([_step_images(images[i], bases[i], _order(maps[i], rng), steps) for i in idx])
        inner.append(np.asarray(probability(batch, np.repeat(cls[list(idx)], per_image))).reshape(-1, 2, steps - 1))
    inner = np.concatenate(inner) if inner else np.zeros((0, 2, steps - 1), np.float32)
    deletion = np.column_stack([full, inner[:, 0], empty])
    insertion = np.column_stack([empty, inner[:, 1], full])
    return deletion, insertion


def auc(curves: np.ndarray) -> np.ndarray:
    """Per-row area under a curve sampled at equal steps over 0..1 (trapezoid rule)."""
    curves = np.asarray(curves, dtype=np.float64)
    return np.trapezoid(curves, dx=1.0 / (curves.shape[-1] - 1), axis=-1)


@dataclass
class FaithfulnessResult:
    """Per-image AUCs of the method and the two baseline maps, with their summaries."""

    auc: dict[str, np.ndarray] = field(repr=False)  # "<map>_<curve>" -> (n,), e.g. "method_deletion"
    steps: int
    baseline: str
    seed: int
    n_boot: int = 1000

    def _beats(self, rival: str, curve: str) -> bool:
        sign = 1.0 if curve == "deletion" else -1.0  # deletion: lower is better
        diff = sign * (self.auc[f"{rival}_{curve}"] - self.auc[f"method_{curve}"])
        ci = bootstrap_ci(diff, np.mean, seed=self.seed, n_boot=self.n_boot)
        return bool(ci is not None and ci[0] > 0)

    def to_json(self) -> dict:
        out: dict = {}
        for key, values in self.auc.items():
            name = key.replace("method_", "") + "_auc"
            out[name] = float(np.mean(values))
            out[name + "_ci"] = bootstrap_ci(values, np.mean, seed=self.seed, n_boot=self.n_boot)
        beats = {f"{rival}_{curve}": self._beats(rival, curve)
                 for rival in ("random", "centre") for curve in ("deletion", "insertion")}
        out.update({"beats": beats, "beats_baselines": all(beats.values()), "steps": self.steps,
                    "baseline": self.baseline, "n_images": len(self.auc["method_deletion"])})
        return out


def faithfulness_test(probability, images: np.ndarray, class_index: Sequence[int], maps: np.ndarray,
                      steps: int = DEFAULT_STEPS, baseline: str = "mean", seed: int = 0,
                      batch_size: int = 32, n_boot: int = 1000) -> FaithfulnessResult:
    """Deletion/insertion AUCs of ``maps`` and of the random and centre baseline maps."""
    images = np.asarray(images, dtype=np.float32)
    shape = images.shape[1:3]
    rivals = {"method": np.asarray(maps, np.float32),
              "random": random_maps(len(images), shape, seed),
              "centre": np.broadcast_to(centre_map(shape), images.shape[:3])}
    cls = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (len(images),))
    ends = _ends(probability, images, baseline_images(images, baseline), cls, batch_size)
    aucs: dict[str, np.ndarray] = {}
    for name, m in rivals.items():
        deletion, insertion = perturbation_curves(probability, images, cls, m, steps, baseline,
                                                  seed, batch_size, ends)
        aucs[f"{name}_deletion"], aucs[f"{name}_insertion"] = auc(deletion), auc(insertion)
    return FaithfulnessResult(aucs, steps, baseline, seed, n_boot)
