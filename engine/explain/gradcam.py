"""Grad-CAM (Selvaraju et al. 2017) for the engine's saved classifiers, as pure functions.

Follows the keras-io ``examples/vision/grad_cam.py`` recipe (gradient of a class score with respect
to a 4-D feature map, channel weights = spatially averaged gradients, ReLU of the weighted sum),
adapted to the saved model structure (see ``engine.training.backbones``)::

    input -> "preprocess" -> "backbone" (nested Model) -> "gap" -> "head_dense" -> "head_dropout"
    -> "logits" -> "probabilities"

Three traps shape the code:

* The class score is the LOGIT, not the softmax probability: a confident prediction saturates the
  softmax, its gradient underflows to zero and the map comes out blank.
* The target layer usually lives inside the nested backbone. ``keras.Model(model.inputs,
  inner_layer.output)`` fails with "Graph disconnected", so the forward pass is re-run layer by layer
  (see ``_forward``) with a sub-model of the backbone returning [target map, backbone output].
* An all-zero map (no positive evidence) must normalise to zeros, not 0/0 = NaN.
"""

from __future__ import annotations

import weakref

import difflib
from typing import Iterator, Sequence

import numpy as np

from engine.errors import AuditrunError, InputError
from engine.data.annotations import as_outline

#: A YOLO box: (x_center, y_center, width, height), normalised to 0..1.
Box = tuple[float, float, float, float]

#: Pixels at or above this fraction of the map's maximum form the "top 20 %" hot area.
TOP_FRACTION_LEVEL = 0.8

BACKBONE_LAYER = "backbone"
LOGITS_LAYER = "logits"


# --------------------------------------------------------------------------------------------
# Target layer
# --------------------------------------------------------------------------------------------

def nested_backbone(model):
    """The nested backbone Model: layer "backbone", else the last top-level layer that is a Model."""
    import keras

    names = {layer.name for layer in model.layers}
    if BACKBONE_LAYER in names:
        layer = model.get_layer(BACKBONE_LAYER)
        return layer if isinstance(layer, keras.Model) else None
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[-1] if nested else None


def _rank(tensor) -> int | None:
    try:
        return len(tensor.shape)
    except Exception:  # noqa: BLE001 - shared layers have no single output
        return None


def _layer_output(layer):
    try:
        return layer.output
    except Exception:  # noqa: BLE001 - a layer called more than once has no single output
        return None


def _is_4d(layer) -> bool:
    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return False
    out = _layer_output(layer)
    return out is not None and _rank(out) == 4


def candidate_layers(model) -> list[str]:
    """Names of every 4-D (batch, h, w, c) layer Grad-CAM could target, nearest the output last.

    Top-level layers come first, then the layers inside the nested backbone in graph order.
    """
    backbone = nested_backbone(model)
    names = [layer.name for layer in model.layers if _is_4d(layer)]
    if backbone is not None:
        names += [layer.name for layer in backbone.layers if _is_4d(layer)]
    return names


def _output_layer_name(submodel) -> str | None:
    """Name of the layer producing a functional model's (first) output."""
    try:
        return submodel.outputs[0]._keras_history.operation.name
    except Exception:  # noqa: BLE001 - private attribute; fall back to layer order
        return None


def find_target_layer(model, layer: str | None = None) -> str:
    """Name of the layer whose feature map Grad-CAM weighs.

    Automatic (``layer=None``): the nested backbone's output when it is 4-D (the usual case, e.g.
    ``top_bn_relu6`` for the EfficientNet-Lite0 file), else the backbone's last 4-D layer, else the
    last 4-D top-level layer before "logits". An explicit name may be a top-level layer or a layer
    inside the nested backbone; an unknown or non-4-D name raises InputError listing the candidates.
    """
    candidates = candidate_layers(model)
    if layer is not None:
        if layer in candidates:
            return layer
        known = {lay.name for lay in model.layers}
        backbone = nested_backbone(model)
        if backbone is not None:
            known |= {lay.name for lay in backbone.layers}
        why = "is not a 4-D feature map" if layer in known else "does not exist"
        close = difflib.get_close_matches(layer, candidates, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = candidates[-25:]
        more = f" (the {len(shown)} nearest the output of {len(candidates)})" if len(shown) < len(candidates) else ""
        raise InputError(
            f"Grad-CAM layer {layer!r} {why} in model {model.name!r}.{hint} "
            f"Candidate 4-D layers{more}: {', '.join(shown) or 'none'}"
        )
    backbone = nested_backbone(model)
    if backbone is not None:
        out_name = _output_layer_name(backbone)
        if out_name in candidates and _rank(backbone.outputs[0]) == 4:
            return out_name
        inner = [lay.name for lay in backbone.layers if _is_4d(lay)]
        if inner:
            return inner[-1]
    top = [lay for lay in layer_chain(model) if lay is not backbone and _is_4d(lay)]
    if top:
        return top[-1].name
    raise InputError(f"model {model.name!r} has no 4-D feature-map layer for Grad-CAM")


# --------------------------------------------------------------------------------------------
# Flat forward path to the logits
# --------------------------------------------------------------------------------------------

def layer_chain(model) -> list:
    """Top-level layers from the input to "logits" (the saved models are a linear chain)."""
    import keras

    layers = [lay for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]
    names = [lay.name for lay in layers]
    if LOGITS_LAYER not in names:
        raise InputError(
            f"model {model.name!r} has no layer named {LOGITS_LAYER!r}; Grad-CAM needs the linear "
            f"class scores (top-level layers: {', '.join(names)})"
        )
    return layers[: names.index(LOGITS_LAYER) + 1]


class GradPath:
    """Runs the model up to its logits while exposing the target feature map.

    Every layer object is the model's own (no copies), called in inference mode. When the target
    lies inside the nested backbone, that backbone is replaced by a sub-model built on its own graph
    returning [target map, backbone output]; this stays inside one functional graph, so Keras never
    sees a disconnected input.
    """

    def __init__(self, model, layer: str):
        import keras

        self.chain = layer_chain(model)
        self.backbone = nested_backbone(model)
        top = {lay.name: lay for lay in self.chain}
        self.top_target = None
        self.sub = None
        if layer in top:  # a top-level layer, or the nested backbone itself (its output)
            self.top_target = top[layer]
        elif self.backbone is None or self.backbone not in self.chain:
            raise InputError(f"Grad-CAM layer {layer!r} is not on the path to the logits of {model.name!r}")
        else:
            inner = self.backbone.get_layer(layer)
            self.sub = keras.Model(self.backbone.inputs, [inner.output, self.backbone.outputs[0]],
                                   name="gradcam_backbone")

    def __call__(self, x, tape):
        fmap = None
        for lay in self.chain:
            if lay is self.backbone and self.sub is not None:
                fmap, x = self.sub(x, training=False)
            else:
                x = lay(x, training=False)
                if lay is self.top_target:
                    fmap = x
                    tape.watch(fmap)
        return fmap, x


def verify_chain(model, path: GradPath, sample: np.ndarray) -> None:
    """Refuse models that are not the linear chain ``GradPath`` replays: their maps would be fiction.

    The model's own logits come from a top-level sub-model (no nesting involved, so no
    "Graph disconnected"); the replayed chain must reproduce them on a couple of images.
    """
    import keras
    import tensorflow as tf

    x = tf.convert_to_tensor(sample, dtype=tf.float32)
    reference = keras.Model(model.inputs, model.get_layer(LOGITS_LAYER).output)(x, training=False)
    try:
        with tf.GradientTape() as tape:
            _, replayed = path(x, tape)
        ok = np.allclose(np.asarray(replayed), np.asarray(reference), rtol=1e-4,
                         atol=1e-4 * max(1.0, float(np.abs(reference).max())))
    except Exception:  # noqa: BLE001 - a branched model fails inside some layer call
        ok = False
    if not ok:
        raise AuditrunError(
            f"Grad-CAM: model {model.name!r} is not a single chain of layers from its input to "
            f"{LOGITS_LAYER!r} (input -> preprocess -> backbone -> gap -> head -> logits); "
            "replaying it does not reproduce its logits"
        )


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map to max 1; a map with no positive value becomes zeros (never 0/0 = NaN)."""
    maps = np.nan_to_num(np.maximum(np.asarray(maps, dtype=np.float32), 0.0), nan=0.0, posinf=0.0)
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(len(maps))
    scale = np.where(peak > 0, peak, 1.0).astype(np.float32)
    return np.clip(maps / scale[:, None, None], 0.0, 1.0)


_normalise = normalise  # the old name, which tests/test_explain_checks.py reaches for


def _gradcam_weights(grads, fmap):
    """Grad-CAM channel weights: the spatial mean of the gradients, (n, 1, 1, c)."""
    import tensorflow as tf

    return tf.reduce_mean(grads, axis=(1, 2), keepdims=True)


def _gradcam_plusplus_weights(grads, fmap):
    """Grad-CAM++ channel weights (Chattopadhay et al. 2018, eq. 19), (n, 1, 1, c).

    With the class score taken as exp(logit), the second and third derivatives of the score are the
    square and cube of the first (times the same positive factor, which normalisation removes), so
    one gradient suffices: alpha = g^2 / (2 g^2 + sum(A) g^3), weight = sum(alpha * relu(g)).
    """
    import tensorflow as tf

    g2 = tf.square(grads)
    denom = 2.0 * g2 + tf.reduce_sum(fmap, axis=(1, 2), keepdims=True) * g2 * grads
    alpha = g2 / tf.where(tf.abs(denom) > 1e-12, denom, tf.ones_like(denom))
    return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2), keepdims=True)


def _layercam_weights(grads, fmap):
    """LayerCAM weights (Jiang et al. 2021): the positive gradient at each location and channel,
    (n, h, w, c). Per-location weights keep what a spatial mean blurs, so maps from an earlier,
    finer layer stay meaningful."""
    import tensorflow as tf

    return tf.nn.relu(grads)


_WEIGHTS = {"gradcam": _gradcam_weights, "gradcam++": _gradcam_plusplus_weights, "layercam": _layercam_weights}


def _spatial_size(model, name: str) -> int | None:
    """Height of the feature map of layer ``name`` (top level or inside the nested backbone)."""
    backbone = nested_backbone(model)
    layers = {lay.name: lay for lay in model.layers}
    if backbone is not None:
        layers.update({lay.name: lay for lay in backbone.layers})
    out = _layer_output(layers[name]) if name in layers else None
    return None if out is None or _rank(out) != 4 else out.shape[1]


def finer_layer(model, target: str) -> str | None:
    """The last 4-D layer before ``target`` whose map is finer than ``target``'s (the next
    resolution stage: 14 x 14 under a 7 x 7 EfficientNet top), or None."""
    names = candidate_layers(model)
    if target not in names:
        return None
    coarse = _spatial_size(model, target)
    finer = [n for n in names[:names.index(target)] if (h := _spatial_size(model, n)) and coarse and h > coarse]
    if not finer:
        return None
    step = min(_spatial_size(model, n) for n in finer)  # the stage just below the target's
    return [n for n in finer if _spatial_size(model, n) == step][-1]


def _iter_heatmaps(model, images: np.ndarray, class_index: np.ndarray, layer: str,
                   batch_size: int, upsample: bool, variant: str = "gradcam") -> Iterator[np.ndarray]:
    import tensorflow as tf

    cams_of = _cams_function(model, layer, variant, images, upsample)
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start:start + batch_size], dtype=tf.float32)
        cls = tf.convert_to_tensor(class_index[start:start + batch_size], dtype=tf.int32)
        yield normalise(cams_of(batch, cls).numpy())


#: model -> {(layer, variant, image shape, upsample): traced function}. The traced graph reads the
#: model's variables, so it stays valid when their values change (the randomisation check assigns
#: new weights in place, then restores them) and is traced and verified once per model, not once
#: per call: the checks call Grad-CAM once per cascade step.
_TRACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cams_function(model, layer: str, variant: str, images: np.ndarray, upsample: bool):
    import tensorflow as tf

    key = (layer, variant, images.shape[1:], upsample)
    per_model = _TRACED.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    weigh = _WEIGHTS[variant]
    path = GradPath(model, layer)
    verify_chain(model, path, images[:2])
    size = images.shape[1:3]

    # One traced graph (batch dimension left free): ~6x faster than eager on CPU for an
    # EfficientNet at 224 px, and the trace costs about one eager batch.
    @tf.function(input_signature=[tf.TensorSpec((None, *size, images.shape[3]), tf.float32),
                                  tf.TensorSpec((None,), tf.int32)])
    def cams_of(batch, cls):
        with tf.GradientTape() as tape:
            # Watching the input records every op downstream of it; otherwise no gradient reaches a
            # map with no trainable variable upstream (e.g. a backbone's own rescaling layer).
            tape.watch(batch)
            fmap, logits = path(batch, tape)
            # Each sample's logit depends only on its own input (inference mode), so the gradient of
            # the sum is the per-sample gradient.
            score = tf.reduce_sum(tf.gather(logits, cls, axis=1, batch_dims=1))
        grads = tape.gradient(score, fmap)
        if grads is None:
            raise AuditrunError(f"Grad-CAM: no gradient reaches layer {layer!r} from the logits")
        weights = weigh(grads, fmap)  # (n, 1, 1, c)
        cams = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))  # (n, h, w)
        if upsample:
            cams = tf.image.resize(cams[..., None], size, method="bilinear")[..., 0]
        return cams

    per_model[key] = cams_of
    return cams_of


def check_inputs(model, images, class_index) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"Grad-CAM expects images of shape (n, H, W, 3); got {images.shape}")
    class_index = np.asarray(class_index, dtype=np.int64).reshape(-1)
    if len(class_index) != len(images):
        raise InputError(f"Grad-CAM: {len(images)} images but {len(class_index)} class indices")
    n_classes = model.get_layer(LOGITS_LAYER).output.shape[-1] if LOGITS_LAYER in {
        lay.name for lay in model.layers} else None
    if n_classes is not None and len(class_index) and not (0 <= class_index.min() and class_index.max() < n_classes):
        raise InputError(f"Grad-CAM: class index out of range 0..{n_classes - 1}")
    want = tuple(model.input_shape[1:3])
    if all(d is not None for d in want) and want != tuple(images.shape[1:3]):
        raise InputError(f"Grad-CAM: model {model.name!r} takes {want[0]}x{want[1]} images; "
                         f"got {images.shape[1]}x{images.shape[2]} (resize to the model input size first)")
    return images, class_index


def gradcam_heatmaps(model, images: np.ndarray, class_index: Sequence[int], layer: str | None = None,
                     batch_size: int = 16, upsample: bool = True, variant: str = "gradcam",
                     echo=None) -> np.ndarray:
    """Grad-CAM maps of ``class_index`` for each image.

    Args:
        model: classifier with the saved-model structure (layers "backbone" ... "logits").
        images: (n, H, W, 3) RGB, 0..255 (any numeric dtype), at the model's input size.
        class_index: (n,) int, the class whose logit is explained for each image.
        layer: target layer name (None: ``find_target_layer``).
        upsample: True returns maps resized (bilinear) to H x W; False the raw feature-map grid.
        variant: "gradcam" (Selvaraju et al. 2017), "layercam" (Jiang et al. 2021: per-location positive
            gradients, one layer) or "gradcam++" (Chattopadhay et al. 2018: positive
            gradients weighted per location, so several instances of a class all light up).
        echo: the run's echo; unless it is quiet, a progress line with images/s and ETA shows.

    Returns:
        (n, H, W) float32 in [0, 1], each map scaled to max 1; all zeros where the class has no
        positive evidence. No NaN.
    """
    if variant not in _WEIGHTS:
        raise InputError(f"Grad-CAM variant {variant!r} unknown; choose one of {', '.join(_WEIGHTS)}")
    images, class_index = check_inputs(model, images, class_index)
    layer = find_target_layer(model, layer)
    if len(images) == 0:
        return np.zeros((0, *images.shape[1:3]), dtype=np.float32)
    from engine.progress import Progress

    out = []
    with Progress.for_echo(echo, f"Grad-CAM ({variant})", len(images)) as line:
        for maps in _iter_heatmaps(model, images, class_index, layer, batch_size, upsample, variant):
            out.append(maps)
            line.update(sum(len(m) for m in out))
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------
# Statistics and the pointing game
# --------------------------------------------------------------------------------------------

def heatmap_stats(heatmap: np.ndarray, boxes: Box | Sequence[Box] | None = None) -> dict:
    """Where a Grad-CAM map points and how concentrated it is.

    Args:
        heatmap: (h, w) map in [0, 1] (from ``gradcam_heatmaps``).
        boxes: the tumour outline (engine.data.annotations.Outline), one YOLO box (xc, yc, w, h
            normalised) or a list of them; None or [] for none.

    Returns a dict:
        ``peak``: [y, x] of the maximum pixel's centre, normalised 0..1 (None for an empty map);
        ``top20_area_fraction``: fraction of the image's pixels whose value is >= 0.8 x the map's
        maximum, i.e. the area of the top 20 % of the value range (small = focused; None for an
        empty map);
        ``peak_in_box``: True/False when an outline is given (peak inside it; an empty map points
        nowhere and counts as a miss), None without;
        ``box_area_fraction``: fraction of pixels inside the outline (the chance hit rate of a
        random peak), None without.
    """
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w); got shape {heatmap.shape}")
    h, w = heatmap.shape
    top = float(heatmap.max()) if heatmap.size else 0.0
    empty = not top > 0.0
    stats: dict = {"peak": None, "top20_area_fraction": None, "peak_in_box": None, "box_area_fraction": None}
    if not empty:
        r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        stats["peak"] = [float((r + 0.5) / h), float((c + 0.5) / w)]
        stats["top20_area_fraction"] = float(np.mean(heatmap >= TOP_FRACTION_LEVEL * top))
    outline = as_outline(boxes)
    if outline is not None:
        mask = outline.mask((h, w))
        stats["box_area_fraction"] = float(mask.mean())
        stats["peak_in_box"] = False if empty else bool(mask[r, c])
    return stats


def pointing_game(stats_list: Sequence[dict]) -> dict:
    """Pointing game (Zhang et al. 2016): share of boxed images whose heatmap peak lies in a box.

    Only stats with ``peak_in_box`` not None count. ``chance_rate`` is the mean box area fraction,
    the hit rate a uniformly random peak would score.

    Returns ``{"hits": int, "total": int, "rate": float | None, "chance_rate": float | None}``.
    """
    scored = [s for s in stats_list if s.get("peak_in_box") is not None]
    hits = sum(1 for s in scored if s["peak_in_box"])
    total = len(scored)
    areas = [s["box_area_fraction"] for s in scored if s.get("box_area_fraction") is not None]
    return {
        "hits": hits,
        "total": total,
        "rate": hits / total if total else None,
        "chance_rate": float(np.mean(areas)) if areas else None,
    }
