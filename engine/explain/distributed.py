"""Grad-CAM maps as Dask tasks (engine.compute) for ``auditrun evaluate``'s pointing game: chunks of
images go to the workers, each loads the model once (engine.evaluation.distributed.ModelRef) and
sends back the maps. Chunks are whole multiples of Grad-CAM's batch of 16, so each batch holds
the images the local loop's would."""

from __future__ import annotations

from typing import Callable

import numpy as np

#: Images per task: a multiple of gradcam_heatmaps' batch (16).
CHUNK = 64


def heatmap_chunk(images: np.ndarray, classes: np.ndarray, ref, layer: str | None) -> np.ndarray:
    """One task: the maps of ``classes`` on ``images`` by the model ``ref`` names (Grad-CAM at
    ``layer``, or an imported model's own explanation, engine.explain.agnostic.heatmaps_for)."""
    model = ref.load()
    if hasattr(model, "predict_proba"):
        from engine.explain.agnostic import heatmaps_for

        return heatmaps_for(model)[0](images, classes)
    from engine.explain.gradcam import gradcam_heatmaps

    return gradcam_heatmaps(model, np.asarray(images, dtype="float32"), classes, layer=layer)


def heatmaps_on(cluster, ref, layer: str | None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``heatmaps(images, classes)`` that computes the maps on the cluster's workers."""
    from engine import compute

    def heatmaps(images, classes):
        images, classes = np.asarray(images), np.asarray(classes)
        chunks = list(zip(compute.chunks(images, CHUNK), compute.chunks(classes, CHUNK)))
        parts = list(compute.map_ordered(_pair, chunks, cluster=cluster, sizes=[len(c[0]) for c in chunks],
                                         ref=ref, layer=layer))
        return np.concatenate(parts) if parts else np.zeros((0, *images.shape[1:3]), np.float32)

    return heatmaps


def _pair(chunk, ref, layer):
    return heatmap_chunk(chunk[0], chunk[1], ref, layer)
