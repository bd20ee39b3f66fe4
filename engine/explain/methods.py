"""Saliency methods behind one signature: ``(model, images, class_index) -> (n, H, W) maps in [0, 1]``.

* ``gradcam``   - Selvaraju et al. 2017 (``gradcam.gradcam_heatmaps``).
* ``gradcam++`` - Chattopadhay et al. 2018: per-location weights on the positive gradients.
* ``layercam``  - Jiang et al. 2021: per-location positive gradients times the activations, at the
  target layer and at the last layer of the next finer stage (14 x 14 under a 7 x 7 top), each
  upsampled and scaled to max 1, fused by their element-wise maximum: a finer map than Grad-CAM's
  from the same gradients.
* ``scorecam``  - Wang et al. 2020: each feature-map channel, upsampled and scaled to 0..1, masks
  the input; the channel's weight is how much that masked input raises the class probability over
  a black image. Gradient-free. The full method needs one forward pass per channel (1280 for an
  EfficientNet top layer), so only the ``channels`` most active channels of each image are used
  (default 32; "Faster Score-CAM" keeps the top channels the same way).
* ``occlusion`` - Zeiler & Fergus 2014: a square patch of the image's mean grey slides over the
  image; each pixel's value is the mean drop in the class score over the patches covering it. The
  score is the class LOGIT where the model has a "logits" layer: a confident model's probability
  stays at 1.0 while any part of the evidence is visible, so hiding one patch would change nothing
  and the map would come out blank. Model-agnostic otherwise (it needs no target layer).

Every method returns maps at the input resolution, each scaled to max 1, zeros where there is no
positive evidence, never NaN. The expensive ones (Score-CAM, occlusion) run as traced
``tf.function`` graphs over batches of masked images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from engine import interrupts

from engine.errors import InputError
from engine.explain import gradcam
from engine.registry import Registry

#: An explainer: (model, images (n, H, W, 3) as the model takes them, class_index (n,)) -> (n, H, W).
Explainer = Callable[..., np.ndarray]
#: What a method registers: (layer, batch_size, **options) -> its explainer. ``layer`` is the CAM
#: target layer (None: gradcam.find_target_layer); ``options`` come from ``explainer(**options)``.
MethodFactory = Callable[..., Explainer]


@dataclass(frozen=True)
class Method:
    """A registered explanation method. ``target_layer``: its maps come from a CAM target layer,
    which the checks then record (occlusion and other model-agnostic methods have none)."""

    name: str
    make: MethodFactory
    target_layer: bool = False


#: Every explanation method by name, in the order messages list them.
METHODS: Registry[Method] = Registry("explanation method")


def register_method(name: str, *, target_layer: bool = False):
    """Decorator: register ``make(layer, batch_size, **options) -> Explainer`` as method ``name``."""
    def add(make: MethodFactory) -> MethodFactory:
        METHODS.add(name, Method(name, make, target_layer))
        return make

    return add


def uses_target_layer(method: str | Explainer) -> bool:
    """Whether ``method`` (a name, or an explainer callable: never) explains from a CAM target layer."""
    entry = METHODS.get(method) if isinstance(method, str) else None
    return entry is not None and entry.target_layer

#: Score-CAM channels kept per image (those with the highest mean activation).
SCORECAM_CHANNELS = 32
#: Occlusion patch side as a fraction of the image side (1/7: one cell of a 7x7 Grad-CAM grid at
#: 224 px, i.e. 32 px) and the stride as a fraction of the patch (1/2: each pixel under ~4 patches).
OCCLUSION_PATCH = 1 / 7
OCCLUSION_STRIDE = 1 / 2


def probability_fn(model, image_shape: tuple[int, int, int], output: str = "probability"):
    """A traced ``(images, class_index) -> (n,)`` class score of ``model`` (batch size free).

    ``output``: "probability" (the model's softmax output) or "logit" (layer "logits": unlike a
    saturated probability, it still moves when part of the evidence is hidden).
    """
    import keras
    import tensorflow as tf

    net = model
    if output == "logit":
        net = keras.Model(model.inputs, model.get_layer(gradcam.LOGITS_LAYER).output)

    @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32),
                                  tf.TensorSpec((None,), tf.int32)])
    def probability(batch, cls):
        return tf.gather(net(batch, training=False), cls, axis=1, batch_dims=1)

    def checked(batch, cls):
        interrupts.check()  # every explanation loop calls this once a batch (engine.interrupts)
        return probability(batch, cls)

    return checked


def class_probabilities(probability, images: np.ndarray, class_index: Sequence[int] | int,
                        batch_size: int) -> np.ndarray:
    """``probability`` (from ``probability_fn``) over ``images`` in batches; one class or one per image."""
    images = np.asarray(images, dtype=np.float32)
    cls = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (len(images),))
    out = [probability(images[s:s + batch_size], cls[s:s + batch_size]).numpy()
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Each (…, H, W) map scaled to 0..1 by its own range; a flat map becomes zeros."""
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def feature_maps(model, images: np.ndarray, layer: str, batch_size: int) -> np.ndarray:
    """(n, h, w, c) activations of ``layer`` (top-level or inside the nested backbone)."""
    import tensorflow as tf

    path = gradcam.GradPath(model, layer)
    gradcam.verify_chain(model, path, images[:2])

    @tf.function(input_signature=[tf.TensorSpec((None, *images.shape[1:]), tf.float32)])
    def fmap_of(batch):
        with tf.GradientTape() as tape:  # _GradPath watches a top-level target on a tape
            fmap, _ = path(batch, tape)
        return fmap

    return np.concatenate([fmap_of(tf.convert_to_tensor(images[s:s + batch_size], tf.float32)).numpy()
                           for s in range(0, len(images), batch_size)])


def scorecam_heatmaps(model, images: np.ndarray, class_index: Sequence[int], layer: str | None = None,
                      batch_size: int = 32, channels: int = SCORECAM_CHANNELS) -> np.ndarray:
    """Score-CAM maps (see the module docstring); ``channels`` most active channels per image."""
    import tensorflow as tf

    images, cls = gradcam.check_inputs(model, images, class_index)
    images = images.astype(np.float32)
    if len(images) == 0:
        return np.zeros((0, *images.shape[1:3]), np.float32)
    layer = gradcam.find_target_layer(model, layer)
    acts = feature_maps(model, images, layer, batch_size)  # (n, h, w, c)
    size = images.shape[1:3]
    probability = probability_fn(model, images.shape[1:])
    black = np.zeros_like(images[:1])
    base = {int(c): float(class_probabilities(probability, black, c, 1)[0]) for c in np.unique(cls)}
    out = np.zeros((len(images), *acts.shape[1:3]), np.float32)
    for i in range(len(images)):
        top = np.argsort(-acts[i].mean(axis=(0, 1)), kind="stable")[:channels]
        chosen = acts[i][..., top]  # (h, w, k)
        masks = _minmax(np.moveaxis(tf.image.resize(chosen[None], size, "bilinear").numpy()[0], -1, 0))
        gain = class_probabilities(probability, images[i][None] * masks[..., None], cls[i], batch_size) - base[int(cls[i])]
        out[i] = np.maximum(np.tensordot(chosen, gain, axes=([2], [0])), 0.0)
    up = tf.image.resize(out[..., None], size, "bilinear").numpy()[..., 0]
    return gradcam.normalise(up)


def occlusion_masks(h: int, w: int, patch: int, stride: int) -> np.ndarray:
    """(p, h, w) 0/1 masks of every patch position; the last row and column reach the image edge."""
    def starts(side: int) -> list[int]:
        last = max(side - patch, 0)
        s = list(range(0, last + 1, stride))
        return s if s[-1] == last else s + [last]

    rows, cols = starts(h), starts(w)
    masks = np.zeros((len(rows) * len(cols), h, w), np.float32)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        masks[k, r:r + patch, c:c + patch] = 1.0
    return masks


_occlusion_masks = occlusion_masks  # the old name, which tests/test_explain_checks.py reaches for


def occlusion_heatmaps(model, images: np.ndarray, class_index: Sequence[int], batch_size: int = 32,
                       patch: float = OCCLUSION_PATCH, stride: float = OCCLUSION_STRIDE) -> np.ndarray:
    """Occlusion maps (see the module docstring); ``patch`` and ``stride`` as fractions (see constants)."""
    images, cls = gradcam.check_inputs(model, images, class_index)
    images = images.astype(np.float32)
    n, h, w = images.shape[:3]
    side = max(1, int(round(min(h, w) * patch)))
    masks = occlusion_masks(h, w, side, max(1, int(round(side * stride))))
    cover = masks.sum(axis=0)
    has_logits = gradcam.LOGITS_LAYER in {lay.name for lay in model.layers}
    probability = probability_fn(model, images.shape[1:], "logit" if has_logits else "probability")
    full = class_probabilities(probability, images, cls, batch_size)
    out = np.zeros((n, h, w), np.float32)
    for i in range(n):
        fill = images[i].mean(axis=(0, 1))
        occluded = images[i][None] * (1.0 - masks[..., None]) + fill * masks[..., None]
        drop = full[i] - class_probabilities(probability, occluded, cls[i], batch_size)
        out[i] = np.tensordot(drop, masks, axes=(0, 0)) / cover
    return gradcam.normalise(out)


def layercam_heatmaps(model, images: np.ndarray, class_index: Sequence[int], layer: str | None = None,
                      batch_size: int = 32) -> np.ndarray:
    """LayerCAM fused over the target layer and the next finer stage (see the module docstring);
    the target layer alone when the model has no finer 4-D layer before it."""
    target = gradcam.find_target_layer(model, layer)
    layers = [target] + [f for f in [gradcam.finer_layer(model, target)] if f]
    maps = [gradcam.gradcam_heatmaps(model, images, class_index, layer=name, batch_size=batch_size,
                                     variant="layercam") for name in layers]
    return gradcam.normalise(np.maximum.reduce(maps))


@register_method("gradcam", target_layer=True)
def _gradcam(layer: str | None, batch_size: int, **options) -> Explainer:
    return lambda model, images, cls: gradcam.gradcam_heatmaps(
        model, images, cls, layer=layer, batch_size=batch_size, variant="gradcam")


@register_method("gradcam++", target_layer=True)
def _gradcam_plus_plus(layer: str | None, batch_size: int, **options) -> Explainer:
    return lambda model, images, cls: gradcam.gradcam_heatmaps(
        model, images, cls, layer=layer, batch_size=batch_size, variant="gradcam++")


@register_method("layercam", target_layer=True)
def _layercam(layer: str | None, batch_size: int, **options) -> Explainer:
    return lambda model, images, cls: layercam_heatmaps(model, images, cls, layer=layer, batch_size=batch_size)


@register_method("scorecam", target_layer=True)
def _scorecam(layer: str | None, batch_size: int, **options) -> Explainer:
    return lambda model, images, cls: scorecam_heatmaps(model, images, cls, layer=layer,
                                                        batch_size=batch_size, **options)


@register_method("occlusion")
def _occlusion(layer: str | None, batch_size: int, **options) -> Explainer:
    return lambda model, images, cls: occlusion_heatmaps(model, images, cls, batch_size=batch_size, **options)


def explainer(method: str | Explainer, layer: str | None = None, batch_size: int = 32, **options) -> Explainer:
    """The ``(model, images, class_index) -> maps`` function of ``method`` (a name in METHODS, or a
    callable with that signature, returned as it is). ``options`` go to the method
    (``channels`` for Score-CAM; ``patch``, ``stride`` for occlusion)."""
    if callable(method):
        return method
    entry = METHODS.get(method)
    if entry is None:
        raise InputError(f"explanation method {method!r} unknown; choose one of {', '.join(METHODS)}")
    return entry.make(layer=layer, batch_size=batch_size, **options)


def explain_maps(model, images: np.ndarray, class_index: Sequence[int], method: str = "gradcam",
                 layer: str | None = None, batch_size: int = 32, **options) -> np.ndarray:
    """(n, H, W) float32 maps in [0, 1] of ``method`` for ``class_index`` of each image.

    ``images``: (n, H, W, 3) as the model takes them (RGB 0..255, the model's input size).
    ``layer`` is the target layer of the CAM methods (None: ``gradcam.find_target_layer``).
    """
    return explainer(method, layer=layer, batch_size=batch_size, **options)(model, images, class_index)
