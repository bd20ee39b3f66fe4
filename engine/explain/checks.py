"""The three explanation checks of one backbone and method, as one typed result for results.json.

``explanation_checks`` computes the method's maps once and runs:

1. localisation (``localisation.localisation_scores``): strict, tolerant and energy pointing games;
2. model-parameter randomisation (``randomisation.randomisation_test``): do the maps depend on the
   learned weights?
3. faithfulness (``faithfulness.faithfulness_test``): deletion / insertion AUCs against a random and
   a centre-weighted map.

See docs/explanations.md for the verdict rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.explain import gradcam
from engine.explain.faithfulness import DEFAULT_STEPS as FAITH_STEPS
from engine.explain.faithfulness import FaithfulnessResult, faithfulness_test
from engine.explain.localisation import TOLERANCE_PX, localisation_scores
from engine.explain.methods import Explainer, explainer, probability_fn, uses_target_layer
from engine.explain.randomisation import DEFAULT_STEPS as CASCADE_STEPS
from engine.explain.randomisation import RandomisationResult, randomisation_test


@dataclass
class ExplanationChecks:
    """One backbone's checks for one method; ``to_json`` gives its results.json block."""

    method: str
    layer: str | None
    n_images: int
    pointing_game: dict
    randomisation: RandomisationResult
    faithfulness: FaithfulnessResult
    seconds: dict[str, float]
    maps: np.ndarray = field(default=None, repr=False)  # (n, H, W) the trained model's maps

    def to_json(self) -> dict:
        """``{"method", "layer", "n_images", "pointing_game": {rate, hits, total, tolerance_px,
        tolerant_rate, energy, chance_rate, ...}, "randomisation": {spearman_median, ssim_median,
        passed, ...}, "faithfulness": {deletion_auc, insertion_auc, random_deletion_auc,
        random_insertion_auc, centre_deletion_auc, centre_insertion_auc, ...}, "seconds"}``."""
        return {"method": self.method, "layer": self.layer, "n_images": self.n_images,
                "pointing_game": dict(self.pointing_game), "randomisation": self.randomisation.to_json(),
                "faithfulness": self.faithfulness.to_json(),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def _layer_of(model, method, layer: str | None) -> str | None:
    if uses_target_layer(method):
        return gradcam.find_target_layer(model, layer)
    return None  # occlusion and custom explainers have no target layer


def explanation_checks(model, images: np.ndarray, class_index: Sequence[int], boxes: Sequence,
                       method: str | Explainer = "gradcam", seed: int = 0, *,
                       original_sizes: Sequence | None = None, tolerance_px: float = TOLERANCE_PX,
                       layer: str | None = None, batch_size: int = 32,
                       cascade_steps: int | None = CASCADE_STEPS, cascade_draws: int = 1,
                       faithfulness_steps: int = FAITH_STEPS,
                       baseline: str = "mean", n_boot: int = 1000, example_index: int = 0,
                       **options) -> ExplanationChecks:
    """Localisation, randomisation and faithfulness of ``method``'s maps on ``images``.

    Args:
        model: the trained classifier (saved-model structure: "backbone" ... "logits" -> softmax).
        images: (n, H, W, 3) as the model takes them (RGB 0..255 at the model's input size); keep n
            small (16-32): randomisation costs ``cascade_steps`` extra map passes, faithfulness
            ``6 * (faithfulness_steps + 1)`` forward passes per image.
        class_index: (n,) the class explained for each image (the TRUE class, as in the pointing game).
        boxes: per image, None / [] or YOLO boxes (only boxed images enter the pointing games).
        method: a name in ``methods.METHODS`` (gradcam, gradcam++, layercam, scorecam, occlusion), or an
            explainer callable.
        seed: the experiment seed; drives the cascade permutations, the random baseline map, pixel
            tie-breaking and every bootstrap.
        original_sizes: per image (height, width) of the original file, for the 15-px tolerance.
        options: passed to the method (``channels`` for Score-CAM; ``patch``, ``stride`` for occlusion).
    """
    images = np.asarray(images, dtype=np.float32)
    class_index = np.asarray(class_index, dtype=np.int64)
    if not len(images) == len(class_index) == len(boxes):
        raise ValueError("images, class_index and boxes must have the same length")
    explain = explainer(method, layer=layer, batch_size=batch_size, **options)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    maps = explain(model, images, class_index)
    seconds["maps"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    game = localisation_scores(maps, boxes, original_sizes, tolerance_px, seed=seed, n_boot=n_boot)
    seconds["localisation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    randomised = randomisation_test(model, images, class_index, explain, seed=seed, steps=cascade_steps,
                                    trained_maps=maps, n_boot=n_boot, example_index=example_index,
                                    draws=cascade_draws)
    seconds["randomisation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    faithful = faithfulness_test(probability_fn(model, images.shape[1:]), images, class_index, maps,
                                 faithfulness_steps, baseline, seed, batch_size * 2, n_boot)
    seconds["faithfulness"] = time.perf_counter() - t0
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    return ExplanationChecks(name, _layer_of(model, method, layer), len(images), game, randomised,
                             faithful, seconds, maps)
