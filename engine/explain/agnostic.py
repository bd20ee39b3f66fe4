"""Explanations for imported models (``[[models]]``), as ``heatmaps(images, class_index) -> (n, H, W)``.

* a ``.keras`` model with a convolutional layer: Grad-CAM (Selvaraju et al. 2017) on its last 4-D
  layer, through the model's own graph (no "logits" layer needed, unlike engine.explain.gradcam,
  which relies on the structure of the models auditrun trains);
* anything else (SavedModel, ONNX: no gradients here): occlusion sensitivity (Zeiler & Fergus 2014,
  as engine.explain.methods.occlusion_heatmaps) through the model's predict function, all patch
  positions of an image in batches.

The score explained is the class logit where the model outputs logits, else the log-probability
(``ImportedModel.class_score``): a confident model's probability stays at 1.0 while any part of
the evidence is visible, its log still moves. Maps are (n, H, W) float32 in [0, 1], max 1 each.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from engine import interrupts

from engine.explain.gradcam import normalise
from engine.explain.methods import OCCLUSION_PATCH, OCCLUSION_STRIDE, occlusion_masks

Heatmaps = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _outer_output(layer):
    """The layer's output tensor in the graph of the model that holds it. A nested model's own
    ``.output`` belongs to its inner graph and is not connected to the outer model's inputs."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if len(nodes) != 1:  # unused, or used twice: no single tensor to explain
        return None
    outputs = getattr(nodes[0], "outputs", None) or []
    return outputs[0] if len(outputs) == 1 else None


def gradcam_layer(model) -> str | None:
    """Name of the last layer with a 4-D output (a convolutional feature map, or a nested backbone
    ending in one), or None (no such layer, or not a functional model)."""
    if not hasattr(model, "inputs") or not hasattr(model, "layers"):
        return None
    for layer in reversed(model.layers[1:]):
        out = _outer_output(layer)
        shape = getattr(out, "shape", None)
        if shape is not None and len(shape) == 4 and (shape[1] or 2) > 1 and (shape[2] or 2) > 1:
            return layer.name
    return None


def occlusion_maps(score: Callable[[np.ndarray, np.ndarray], np.ndarray], images: np.ndarray,
                   class_index, patch: float = OCCLUSION_PATCH, stride: float = OCCLUSION_STRIDE) -> np.ndarray:
    """Occlusion maps of any ``score(images (m, H, W, 3) 0..255 float, class_index (m,)) -> (m,)``.

    A square patch (``patch`` of the side) of the image's mean colour slides with stride ``stride``
    of the patch; a pixel's value is the mean drop of the score over the patches covering it.
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape[:3]
    cls = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,))
    side = max(1, int(round(min(h, w) * patch)))
    masks = occlusion_masks(h, w, side, max(1, int(round(side * stride))))
    cover = masks.sum(axis=0)
    full = score(images, cls) if n else np.zeros(0)
    out = np.zeros((n, h, w), np.float32)
    for i in range(n):
        fill = images[i].mean(axis=(0, 1))
        occluded = images[i][None] * (1.0 - masks[..., None]) + fill * masks[..., None]
        drop = full[i] - score(occluded, np.full(len(masks), cls[i]))
        out[i] = np.tensordot(drop, masks, axes=(0, 0)) / cover
    return normalise(out)


def keras_gradcam_maps(model, imported, images: np.ndarray, class_index, layer: str,
                       batch_size: int = 16) -> np.ndarray:
    """Grad-CAM of an imported Keras model on ``layer``: the ReLU of the feature map weighted by the
    spatial mean of the score's gradient, upsampled to the input size."""
    import keras
    import tensorflow as tf

    images = np.asarray(images)
    cls = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (len(images),))
    col = np.array([imported.columns.index(int(c)) for c in cls], dtype=np.int32)
    probe = keras.Model(model.inputs, [_outer_output(model.get_layer(layer)), model.outputs[0]])
    logits = imported.output == "logits"
    h, w = images.shape[1:3]
    maps = []
    for s in range(0, len(images), batch_size):
        interrupts.check()
        x = tf.constant(imported.scaling.apply(images[s:s + batch_size]))
        with tf.GradientTape() as tape:
            fmap, out = probe(x, training=False)
            chosen = tf.gather(out, col[s:s + batch_size], axis=1, batch_dims=1)
            target = chosen if logits else tf.math.log(tf.maximum(chosen, 1e-12))
        grads = tape.gradient(target, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))[..., None]
        maps.append(tf.image.resize(cam, (h, w), "bilinear").numpy()[..., 0])
    return normalise(np.concatenate(maps) if maps else np.zeros((0, h, w), np.float32))


def heatmaps_for(imported) -> tuple[Heatmaps, str, str | None]:
    """(heatmaps, method, target layer or None) for an ImportedModel (engine.training.imported)."""
    model = imported.keras_model
    layer = gradcam_layer(model) if model is not None else None
    if layer is not None and imported.layout == "nhwc":
        return (lambda images, cls: keras_gradcam_maps(model, imported, images, cls, layer)), "gradcam", layer
    return (lambda images, cls: occlusion_maps(imported.class_score, images, cls)), "occlusion", None
