"""Training stage: backbones and the transfer-learning recipe.

Takes a backbone entry of the manifest (keras.applications name or local ``.keras`` file) and the
``Dataset``'s arrays. Gives a Keras classifier (frozen-feature head, then optional fine-tuning of the
top layers) and its ``TrainResult`` (history, stages, timings). The only stage that builds models.
"""

from engine import lazy_exports

#: Public name -> the module of this stage that defines it (imported on first use).
_EXPORTS = {
    "is_chief": "devices",
    "from_entry": "imported",
    "Trained": "stage",
    "Place": "stage",
    "train_backbone": "stage",
    "import_model": "stage",
    "fine_tune_saved": "stage",
    "check_model_files": "stage",
    "setup_training": "stage",
    "count_params": "stage",
    "load_saved_model": "backbones",
    "BackboneSpec": "backbones",
    "LoadedBackbone": "backbones",
    "StageResult": "train",
    "TrainResult": "train",
    "augmentation_layers": "train",
    "build_classifier": "backbones",
    "class_weights": "train",
    "converge_batchnorm": "backbones",
    "fine_tune": "train",
    "learning_rate_schedule": "train",
    "load_backbone": "backbones",
    "predict": "train",
    "preprocess_layer": "backbones",
    "preprocess_class": "backbones",
    "set_backbone_trainable": "backbones",
    "train_head": "train",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
