"""Explanation stage: where a model looked.

Takes a saved model, test (and validation) images and their tumour outlines (engine.data.annotations:
boxes, polygons, masks). Gives Grad-CAM heatmaps and the gallery PNGs with their numbers; and, for a
choice of methods (Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM, occlusion), localisation on every
annotated image (``localise``: strict and tolerant pointing games, energy, coverage, IoU) and the
checks of docs/explanations.md: model-parameter randomisation and deletion/insertion faithfulness
(``explanation_checks``).
"""

from engine import lazy_exports

#: Public name -> the module of this stage that defines it (imported on first use).
_EXPORTS = {
    "heatmaps_for": "agnostic",
    "heatmaps_on": "distributed",
    "Explained": "stage",
    "explain": "stage",
    "check_explanations": "stage",
    "localisation_blocks": "stage",
    "localise": "localise",
    "original_sizes": "stage",
    "candidate_layers": "gradcam",
    "cascade_groups": "randomisation",
    "cascade_panels": "figures",
    "explain_backbone": "gallery",
    "explain_maps": "methods",
    "explanation_checks": "checks",
    "explain_reliability": "reliability",
    "ExplanationChecks": "checks",
    "faithfulness_test": "faithfulness",
    "find_target_layer": "gradcam",
    "gradcam_heatmaps": "gradcam",
    "heatmap_stats": "gradcam",
    "localisation_scores": "localisation",
    "METHODS": "methods",
    "pointing_game": "gradcam",
    "pointing_game_on": "gallery",
    "randomisation_cascade_figure": "figures",
    "randomisation_test": "randomisation",
    "register_method": "methods",
    "render_gallery_images": "gallery",
    "select_gallery": "gallery",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
