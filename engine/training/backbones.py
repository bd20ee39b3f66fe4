"""Backbone registry and model assembly.

Every saved model takes raw RGB pixels in 0..255 and carries its own preprocessing as a layer, so
evaluation, Grad-CAM and external validation can never apply the wrong scaling. Getting this wrong
(rescaling to 0..1 for EfficientNet, which expects 0..255) is what sank the study this project
comes from.

Model structure (layer names are an interface: Grad-CAM and the report rely on them)::

    input (H, W, 3) 0..255 -> "preprocess" -> "backbone" (nested Model, last 4-D feature map)
    -> "gap" -> "head_dense" -> "head_dropout" -> "logits" (linear) -> "probabilities" (softmax)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import InputError

#: keras.applications preprocess_input modes.
#:   caffe: RGB->BGR, subtract ImageNet BGR means (VGG, ResNet v1)
#:   tf:    x / 127.5 - 1 (Inception, Xception, MobileNet v1/v2, ResNet v2)
#:   torch: x / 255, then ImageNet mean/std (DenseNet)
#:   none:  the model rescales 0..255 itself (EfficientNet, ConvNeXt, MobileNetV3 with preprocessing)
#:   unit:  x / 255 (a user-supplied backbone trained on 0..1 inputs)
PREPROCESS_MODES = ("caffe", "tf", "torch", "none", "unit")

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """A keras.applications constructor and the input convention its ImageNet weights expect."""

    constructor: str  # attribute of keras.applications
    preprocessing: str
    min_size: int = 32
    module: str = ""  # keras.applications submodule holding preprocess_input (for tests / docs)

    def build(self, weights: str | None, input_size: int):
        import keras

        ctor: Callable = getattr(keras.applications, self.constructor)
        kwargs = dict(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
        if self.constructor.startswith("MobileNetV3"):
            kwargs["include_preprocessing"] = True
        return ctor(**kwargs)


REGISTRY: dict[str, BackboneSpec] = {
    "VGG16": BackboneSpec("VGG16", "caffe", 32, "vgg16"),
    "VGG19": BackboneSpec("VGG19", "caffe", 32, "vgg19"),
    "ResNet50": BackboneSpec("ResNet50", "caffe", 32, "resnet50"),
    "ResNet101": BackboneSpec("ResNet101", "caffe", 32, "resnet"),
    "ResNet50V2": BackboneSpec("ResNet50V2", "tf", 32, "resnet_v2"),
    "InceptionV3": BackboneSpec("InceptionV3", "tf", 75, "inception_v3"),
    "Xception": BackboneSpec("Xception", "tf", 71, "xception"),
    "MobileNetV2": BackboneSpec("MobileNetV2", "tf", 32, "mobilenet_v2"),
    "MobileNetV3Small": BackboneSpec("MobileNetV3Small", "none", 32, "mobilenet_v3"),
    "MobileNetV3Large": BackboneSpec("MobileNetV3Large", "none", 32, "mobilenet_v3"),
    "DenseNet121": BackboneSpec("DenseNet121", "torch", 32, "densenet"),
    "EfficientNetB0": BackboneSpec("EfficientNetB0", "none", 32, "efficientnet"),
    "EfficientNetB1": BackboneSpec("EfficientNetB1", "none", 32, "efficientnet"),
    "EfficientNetB2": BackboneSpec("EfficientNetB2", "none", 32, "efficientnet"),
    "EfficientNetV2B0": BackboneSpec("EfficientNetV2B0", "none", 32, "efficientnet_v2"),
    "ConvNeXtTiny": BackboneSpec("ConvNeXtTiny", "none", 32, "convnext"),
}


def _register():
    import keras

    @keras.saving.register_keras_serializable(package="auditrun")
    class Preprocess(keras.layers.Layer):
        """Backbone input scaling as a serialisable layer (0..255 RGB in)."""

        def __init__(self, mode: str = "none", **kwargs):
            super().__init__(**kwargs)
            if mode not in PREPROCESS_MODES:
                raise ValueError(f"unknown preprocessing mode {mode!r}; use one of {PREPROCESS_MODES}")
            self.mode = mode

        def call(self, x):
            from keras import ops

            x = ops.cast(x, "float32")
            if self.mode == "caffe":
                x = x[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
            elif self.mode == "tf":
                x = x / 127.5 - 1.0
            elif self.mode == "torch":
                mean = ops.convert_to_tensor(_TORCH_MEAN, dtype="float32")
                std = ops.convert_to_tensor(_TORCH_STD, dtype="float32")
                x = (x / 255.0 - mean) / std
            elif self.mode == "unit":
                x = x / 255.0
            return x

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    return Preprocess


@functools.lru_cache(maxsize=1)
def preprocess_class():
    """The Preprocess layer class, defined (and registered with Keras) once, on first use: defining
    it at import would import Keras with this module."""
    return _register()


def preprocess_layer(mode: str, name: str = "preprocess"):
    return preprocess_class()(mode=mode, name=name)


def load_saved_model(path):
    """A classifier auditrun saved (its Preprocess layer included), loaded for inference."""
    import keras

    return keras.saving.load_model(path, compile=False,
                                   custom_objects={"auditrun>Preprocess": preprocess_class()})


@dataclass
class LoadedBackbone:
    model: object  # keras.Model, nested
    preprocessing: str
    source: str  # "keras.applications" | "file"
    weights_requested: str
    weights_used: str  # "imagenet" | "random" | "file"
    note: str

    @property
    def random_init(self) -> bool:
        return self.weights_used == "random"


def apply_global_precision(model) -> int:
    """Give a loaded model's float32 layers Keras' global mixed policy; returns how many changed.

    A model loaded from a file keeps the dtype policy each layer was saved with ("float32"), so
    ``[training] precision = "mixed_*"`` would otherwise leave the whole backbone in float32. Mixed
    policies keep float32 variables, so the loaded weights stay as they are; only the compute dtype
    changes.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    if policy.name == "float32":
        return 0
    changed = 0
    for layer in model._flatten_layers(include_self=False):
        if layer.dtype_policy.name == "float32" and all(w.dtype == "float32" for w in layer.weights):
            layer.dtype_policy = policy
            changed += 1
    return changed


def unreadable_file(path: Path | str) -> str | None:
    """Why a backbone file cannot even be read (gone since the manifest was checked, no permission,
    an I/O error), found without loading it; None when its first bytes read. A file that reads but
    is no model is the load's to report, for that backbone alone."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def load_backbone(cfg, *, label: str | None = None) -> LoadedBackbone:
    """Build the feature extractor named by a BackboneConfig.

    ImageNet weights that cannot be downloaded raise InputError unless the manifest allows
    ``weights_fallback = "random"``; then the backbone is randomly initialised and the note says so.
    """
    import keras

    label = label or cfg.name
    if cfg.file is not None:
        try:
            model = keras.saving.load_model(cfg.file, compile=False)
        except Exception as exc:  # noqa: BLE001 - any load failure is an input problem
            raise InputError(f"backbone {label!r}: cannot load file {str(cfg.file)!r}: {exc}") from None
        if len(model.output_shape) != 4:
            raise InputError(
                f"backbone {label!r}: file {str(cfg.file)!r} must output a 4-D feature map "
                f"(batch, h, w, channels); it outputs {model.output_shape}"
            )
        apply_global_precision(model)
        pre = "none" if cfg.preprocessing == "auto" else cfg.preprocessing
        return LoadedBackbone(model, pre, "file", "file", "file",
                              f"pretrained backbone loaded from local file {cfg.file.name}")
    spec = REGISTRY[cfg.name]
    if cfg.weights == "none":
        model = spec.build(None, cfg.input_size)
        return LoadedBackbone(model, spec.preprocessing, "keras.applications", "none", "random",
                              "randomly initialised as requested (weights = \"none\")")
    try:
        model = spec.build("imagenet", cfg.input_size)
        return LoadedBackbone(model, spec.preprocessing, "keras.applications", "imagenet", "imagenet",
                              "ImageNet weights from keras.applications")
    except Exception as exc:  # noqa: BLE001 - keras raises bare Exception on URL fetch failure
        reason = str(exc).split(" -- ")[-1].strip() or type(exc).__name__
        if cfg.weights_fallback != "random":
            raise InputError(
                f"backbone {label!r}: ImageNet weights for {cfg.name} could not be downloaded ({reason}). "
                "Copy the weights into ~/.keras/models, use a local backbone file (file = ...), or allow "
                "training from scratch with weights_fallback = \"random\"."
            ) from None
        model = spec.build(None, cfg.input_size)
        return LoadedBackbone(
            model, spec.preprocessing, "keras.applications", "imagenet", "random",
            f"ImageNet weights could not be downloaded ({reason}); trained from random initialisation "
            "because the manifest allows weights_fallback = \"random\". Results are NOT transfer learning.",
        )


def build_classifier(backbone, preprocessing: str, input_size: int, n_classes: int,
                     head_units: int = 128, dropout: float = 0.5, seed: int = 0):
    """Wrap a nested backbone with preprocessing and the study's head.

    Returns a keras.Model mapping (batch, S, S, 3) 0..255 to (batch, n_classes) probabilities.
    """
    import keras

    backbone.name = "backbone"  # an interface: Grad-CAM and fine-tuning find it by name
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = preprocess_layer(preprocessing)(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.layers.Dense(head_units, activation="relu", name="head_dense", kernel_initializer=init)(x)
    x = keras.layers.Dropout(dropout, name="head_dropout", seed=seed)(x)
    x = keras.layers.Dense(n_classes, name="logits",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1))(x)
    out = keras.layers.Activation("softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, out, name="classifier")


def set_backbone_trainable(model, top_layers: int | None) -> int:
    """Freeze the backbone, then unfreeze its top ``top_layers`` layers (None or -1: all).

    BatchNormalization layers stay frozen (``trainable = False`` runs them in inference mode in
    Keras 3): fine-tuning with BN statistics updating on small batches wrecked accuracy in trials.
    Returns the number of unfrozen layers.
    """
    import keras

    backbone = model.get_layer("backbone")
    layers = backbone.layers
    if top_layers is None or top_layers < 0:
        chosen = layers
    else:
        chosen = layers[len(layers) - top_layers:] if top_layers else []
    backbone.trainable = bool(chosen)
    for layer in layers:
        layer.trainable = False
    n = 0
    for layer in chosen:
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        if layer.weights:
            layer.trainable = True
            n += 1
    return n


def converge_batchnorm(backbone, momentum: float = 0.9) -> int:
    """Lower BatchNorm momentum for a backbone trained from scratch.

    keras.applications uses 0.99-0.999, tuned for ImageNet's millions of steps; on a few hundred
    steps the moving statistics barely leave their initial values and inference-mode predictions
    collapse to one class while training accuracy climbs. Returns the number of layers changed.
    """
    import keras

    n = 0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > momentum:
            layer.momentum = momentum
            n += 1
    return n
