"""Explanation stage: where a model looked.

Takes a saved model, test (and validation) images and their tumour boxes. Gives Grad-CAM heatmaps,
the gallery PNGs with their numbers, and the pointing game.
"""

from engine import lazy_exports

#: Public name -> the module of this stage that defines it (imported on first use).
_EXPORTS = {
    "candidate_layers": "gradcam",
    "explain_backbone": "gallery",
    "find_target_layer": "gradcam",
    "gradcam_heatmaps": "gradcam",
    "heatmap_stats": "gradcam",
    "pointing_game": "gradcam",
    "pointing_game_on": "gallery",
    "read_yolo_boxes": "gradcam",
    "render_gallery_images": "gallery",
    "select_gallery": "gallery",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
