"""Explanation stage: where a model looked.

Takes a saved model, test (and validation) images and their tumour boxes. Gives Grad-CAM heatmaps,
the gallery PNGs with their numbers, and the pointing game.
"""

from importlib import import_module

#: Public name -> the module of this stage that defines it, imported on first use so that importing
#: the stage (or one module of it) does not import the others (TensorFlow among them).
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


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
