"""Classifiers trained elsewhere (``[[models]]``): a ``.keras`` file, a SavedModel folder, an ``.onnx`` file.

One small adapter per format behind one interface, chosen by file type (as the image readers are):
``ImportedModel.predict_proba(uint8 images) -> (n, k)`` probabilities in the MANIFEST's class
order, whatever the model's own input scaling, channel order, layout, output kind and class order.
Everything downstream (metrics, calibration, comparisons, gates, the report) then treats it as one
more backbone. onnxruntime is imported only when an ONNX model is listed (``auditrun[onnx]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.errors import InputError

#: ``preprocess`` presets: (scale, offset, mean, std, channels) applied to 0..255 RGB pixels as
#: ((x * scale + offset) - mean) / std, in the model's channel order.
PRESETS = {
    "none": (1.0, 0.0, None, None, "rgb"),
    "unit": (1 / 255, 0.0, None, None, "rgb"),
    "minus_one_one": (1 / 127.5, -1.0, None, None, "rgb"),
    # keras.applications "caffe": BGR, ImageNet mean (in BGR order) subtracted, no scaling
    "imagenet_caffe": (1.0, 0.0, [103.939, 116.779, 123.68], None, "bgr"),
    # torchvision: /255, then ImageNet mean / std (RGB)
    "imagenet_torch": (1 / 255, 0.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "rgb"),
}
#: The collapse check: one class taking at least this share of the predictions (where the data's
#: largest class is smaller), or a balanced accuracy within CHANCE_MARGIN of 1/k.
COLLAPSE_SHARE = 0.9
CHANCE_MARGIN = 0.05
FORMATS = {".keras": "keras", ".onnx": "onnx"}
INSTALL_ONNX = "pip install 'auditrun[onnx]'  (or: pip install onnxruntime)"


@dataclass
class Scaling:
    scale: float = 1.0
    offset: float = 0.0
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: str = "rgb"  # "rgb" | "bgr" | "gray"

    def apply(self, images: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) 0..255 RGB -> float32 (n, H, W, c) as the model takes it (NHWC)."""
        x = np.asarray(images, dtype=np.float32)
        if self.channels == "gray":
            x = x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
            x = x[..., None]
        elif self.channels == "bgr":
            x = x[..., ::-1]
        x = x * np.float32(self.scale) + np.float32(self.offset)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def describe(self) -> str:
        parts = [f"x*{self.scale:.6g}{self.offset:+.6g}"]
        if self.mean is not None:
            parts.append(f"-mean{[round(v, 4) for v in self.mean]}")
        if self.std is not None:
            parts.append(f"/std{[round(v, 4) for v in self.std]}")
        return f"{self.channels.upper()}, " + " ".join(parts)


def scaling_of(cfg) -> tuple[Scaling, str]:
    """The Scaling a ModelConfig asks for and its one-word name for results.json."""
    if cfg.preprocess is not None:
        scale, offset, mean, std, channels = PRESETS[cfg.preprocess]
        return Scaling(scale, offset, mean, std, cfg.channels or channels), cfg.preprocess
    return Scaling(1.0 if cfg.scale is None else cfg.scale, 0.0 if cfg.offset is None else cfg.offset,
                   cfg.mean, cfg.std, cfg.channels or "rgb"), "explicit"


# ------------------------------------------------------------------------------------------------ formats


class _Runner:
    """One format: the model's declared input shape and a float32 batch -> raw outputs function."""

    format = ""
    keras_model = None
    input_shape: tuple = ()

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _KerasRunner(_Runner):
    format = "keras"

    def __init__(self, path: Path):
        import keras

        from engine.training.backbones import preprocess_class

        # A model auditrun trained carries its Preprocess layer; any other .keras file loads as it is.
        self.keras_model = keras.saving.load_model(path, compile=False,
                                                   custom_objects={"auditrun>Preprocess": preprocess_class()})
        self.input_shape = tuple(self.keras_model.inputs[0].shape)

    def run(self, batch):
        return np.asarray(self.keras_model(batch, training=False))


class _SavedModelRunner(_Runner):
    format = "savedmodel"

    def __init__(self, path: Path):
        import tensorflow as tf

        self._obj = tf.saved_model.load(str(path))
        sigs = self._obj.signatures
        if not sigs:
            raise InputError("the SavedModel has no serving signature")
        self._fn = sigs["serving_default"] if "serving_default" in sigs else next(iter(sigs.values()))
        args = self._fn.structured_input_signature[1]
        if len(args) != 1:
            raise InputError(f"the SavedModel's signature takes {len(args)} inputs ({', '.join(args)}); "
                             "auditrun feeds one image tensor")
        self._arg, spec = next(iter(args.items()))
        self.input_shape = tuple(spec.shape)

    def run(self, batch):
        import tensorflow as tf

        out = self._fn(**{self._arg: tf.constant(batch)})
        if len(out) != 1:
            raise InputError(f"the SavedModel's signature returns {len(out)} outputs ({', '.join(out)}); "
                             "auditrun reads one class-score tensor")
        return next(iter(out.values())).numpy()


class _OnnxRunner(_Runner):
    format = "onnx"

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError(f"onnxruntime is not installed; ONNX models need it: {INSTALL_ONNX}") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for a bad file
            raise InputError(f"cannot load ONNX model: {str(exc).splitlines()[0]}") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"the ONNX model takes {len(inputs)} inputs; auditrun feeds one image tensor")
        if inputs[0].type != "tensor(float)":
            raise InputError(f"the ONNX model's input is {inputs[0].type}; auditrun feeds tensor(float)")
        self._input = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)

    def run(self, batch):
        return np.asarray(self._session.run(None, {self._input: batch})[0])


def model_format(path: Path) -> str:
    """"keras", "savedmodel" or "onnx" by file type; InputError for anything else."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise InputError(f"{str(path)!r} is a folder without saved_model.pb, not a SavedModel")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{str(path)!r}: unknown model file type; use a .keras file, a SavedModel folder or "
                         "an .onnx file")
    return fmt


_RUNNERS: dict[str, Callable[[Path], _Runner]] = {
    "keras": _KerasRunner, "savedmodel": _SavedModelRunner, "onnx": _OnnxRunner}


# ------------------------------------------------------------------------------------------------ model


@dataclass
class ImportedModel:
    name: str
    file: Path
    format: str
    input_size: int
    layout: str  # "nhwc" | "nchw"
    output: str  # "probabilities" | "logits"
    scaling: Scaling
    preprocess: str
    #: column j of the model's output -> index of its class in the manifest's classes
    columns: list[int]
    class_order: list[str]
    runner: _Runner = field(repr=False)
    batch_size: int = 32
    #: the manifest's class name of each output (class_order with the aliases resolved)
    classes: list[str] = field(default_factory=list)

    @property
    def keras_model(self):
        """The Keras model behind a ``.keras`` file (Grad-CAM needs its layers); None otherwise."""
        return self.runner.keras_model

    @property
    def explain_method(self) -> str:
        from engine.explain.agnostic import heatmaps_for

        return heatmaps_for(self)[1]

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) RGB -> the float32 tensor the model takes (scaling, channels, layout)."""
        x = self.scaling.apply(images)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.layout == "nchw" else x

    def raw_outputs(self, images: np.ndarray, flip: bool = False) -> np.ndarray:
        """(n, width) the model's own outputs, in its own class order; ``flip``: of the mirrored
        images (mirrored a batch at a time: a split may be on disk)."""
        def batch(s: int) -> np.ndarray:
            b = np.asarray(images[s:s + self.batch_size])
            return b[:, :, ::-1] if flip else b

        outs = [self.runner.run(self.model_input(batch(s))) for s in range(0, len(images), self.batch_size)]
        out = np.concatenate(outs) if outs else np.zeros((0, len(self.columns)), np.float32)
        return out.reshape(len(out), -1).astype(np.float64)

    def predict_proba(self, images: np.ndarray, tta_flip: bool = False) -> np.ndarray:
        """(n, k) probabilities in the manifest's class order; optional horizontal-flip TTA (as trained
        backbones get with ``evaluation.tta_flip``)."""
        p = self._proba(images)
        if tta_flip:
            p = (p + self._proba(images, flip=True)) / 2
        return p

    def _proba(self, images: np.ndarray, flip: bool = False) -> np.ndarray:
        out = self.raw_outputs(images, flip)
        if out.shape[1] != len(self.columns):
            raise InputError(f"model {self.name!r} outputs {out.shape[1]} scores per image, but class_order "
                             f"names {len(self.columns)} classes")
        if self.output == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        elif len(out) and (out.min() < -1e-4 or np.abs(out.sum(axis=1) - 1).max() > 1e-3):
            raise InputError(f"model {self.name!r}: output = \"probabilities\", but its outputs do not sum to 1 "
                             f"(row sums {out.sum(axis=1).min():.3g}..{out.sum(axis=1).max():.3g}); "
                             "set output = \"logits\" in its [[models]] entry")
        probs = np.zeros((len(out), len(self.columns)))
        probs[:, self.columns] = out
        return probs

    def class_score(self, images: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        """(n,) the score explanations rank by: the logit, or the log-probability (a probability
        saturates at 1 while any evidence is visible, its log still moves)."""
        out = self.raw_outputs(images)
        col = np.array([self.columns.index(int(c)) for c in np.atleast_1d(class_index)])
        col = np.broadcast_to(col, (len(out),))
        chosen = out[np.arange(len(out)), col]
        return chosen if self.output == "logits" else np.log(np.clip(chosen, 1e-12, None))

    def describe(self) -> dict:
        """The ``imported`` block of the model's results.json entry."""
        sc = self.scaling
        return {"format": self.format, "file": self.file.name, "preprocess": self.preprocess,
                "scaling": sc.describe(), "scale": sc.scale, "offset": sc.offset, "mean": sc.mean, "std": sc.std,
                "channels": sc.channels, "layout": self.layout, "output": self.output,
                "class_order": list(self.class_order), "classes": list(self.classes), "training_data": "unknown"}


def _class_columns(cfg, class_names: Sequence[str], aliases: dict[str, str]) -> list[int]:
    cols = []
    for name in cfg.class_order:
        canonical = aliases.get(name.lower(), name if name in class_names else None)
        if canonical not in class_names:
            raise InputError(f"model {cfg.name!r}: class_order names {name!r}, a class the data does not have "
                             f"(classes: {', '.join(class_names)}; map other names under [data.aliases])")
        if class_names.index(canonical) in cols:
            raise InputError(f"model {cfg.name!r}: class_order names {canonical!r} twice")
        cols.append(class_names.index(canonical))
    missing = [c for i, c in enumerate(class_names) if i not in cols]
    if missing:
        raise InputError(f"model {cfg.name!r}: class_order has no output for {', '.join(missing)}, which the data "
                         "has; an imported model must score every class")
    return cols


def _geometry(cfg, shape: tuple) -> tuple[int, str]:
    """(input_size, layout) from the model's input shape and the manifest; InputError on a conflict."""
    if len(shape) != 4:
        raise InputError(f"model {cfg.name!r} takes a rank-{len(shape)} input; auditrun feeds images (rank 4)")
    _, a, b, c = shape
    layout = cfg.layout
    if layout == "auto":
        layout = "nchw" if a in (1, 3) and c not in (1, 3) else "nhwc"
    h, w, ch = (b, c, a) if layout == "nchw" else (a, b, c)
    want = 1 if (cfg.channels == "gray") else 3
    if ch is not None and ch != want:
        hint = '"gray"' if ch == 1 else '"rgb" or "bgr"'
        raise InputError(f"model {cfg.name!r} takes {ch} channel(s) ({layout}); set channels = {hint} "
                         "(or layout) in its [[models]] entry")
    fixed = {d for d in (h, w) if d is not None}
    if len(fixed) > 1:
        raise InputError(f"model {cfg.name!r} takes {h}x{w} images; auditrun feeds square images")
    size = next(iter(fixed), None)
    if size is not None and cfg.input_size is not None and cfg.input_size != size:
        raise InputError(f"model {cfg.name!r}: input_size = {cfg.input_size}, but the model takes {size} px")
    size = size or cfg.input_size
    if size is None:
        raise InputError(f"model {cfg.name!r} accepts any image size; set input_size in its [[models]] entry")
    return int(size), layout


def load_imported(cfg, class_names: Sequence[str], aliases: dict[str, str]) -> ImportedModel:
    """The ImportedModel of a ``[[models]]`` entry, checked against the data's classes.

    InputError (exit 2) naming the model for a class_order naming a class the data lacks, a model
    file that cannot be loaded, an input shape auditrun cannot feed.
    """
    columns = _class_columns(cfg, list(class_names), aliases)
    fmt = model_format(cfg.file)
    try:
        runner = _RUNNERS[fmt](Path(cfg.file))
    except InputError as exc:
        raise InputError(f"model {cfg.name!r} ({str(cfg.file)!r}): {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"model {cfg.name!r}: cannot load {str(cfg.file)!r}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    size, layout = _geometry(cfg, runner.input_shape)
    scaling, preprocess = scaling_of(cfg)
    return ImportedModel(cfg.name, Path(cfg.file), fmt, size, layout, cfg.output, scaling, preprocess, columns,
                         list(cfg.class_order), runner, classes=[class_names[c] for c in columns])


def from_entry(entry: dict, class_names: Sequence[str], aliases: dict[str, str]) -> ImportedModel:
    """The ImportedModel behind a results.json entry (``auditrun evaluate`` on a finished run): its
    ``file`` and the ``imported`` block hold everything the manifest entry said."""
    from engine.manifest import ModelConfig

    block = entry.get("imported") or {}
    preset = block.get("preprocess")
    explicit = preset not in PRESETS
    cfg = ModelConfig(name=entry["name"], file=Path(entry["file"]), input_size=entry["input_size"][0],
                      preprocess=None if explicit else preset,
                      scale=block.get("scale") if explicit else None, offset=block.get("offset") if explicit else None,
                      mean=block.get("mean") if explicit else None, std=block.get("std") if explicit else None,
                      channels=block.get("channels"), layout=block.get("layout", "auto"),
                      output=block.get("output", "probabilities"),
                      class_order=list(block.get("classes") or block.get("class_order") or []))
    if not cfg.file.exists():
        raise InputError(f"model {cfg.name!r}: its file {str(cfg.file)!r} is missing; evaluating an imported "
                         "model needs the file the audit read")
    return load_imported(cfg, class_names, aliases)


def collapse_warnings(name: str, split: str, y_true: np.ndarray, probs: np.ndarray,
                      class_names: Sequence[str]) -> list[str]:
    """Warnings for predictions that collapse to one class or sit at chance: the usual sign of a wrong
    ``preprocess``. Empty when the predictions look like a working classifier's."""
    if len(y_true) == 0:
        return []
    k = len(class_names)
    pred = probs.argmax(axis=1)
    share = np.bincount(pred, minlength=k) / len(pred)
    top = int(share.argmax())
    true_top = float(np.bincount(y_true, minlength=k).max() / len(y_true))
    out = []
    if share[top] >= COLLAPSE_SHARE and share[top] > true_top:
        out.append(f"check `preprocess`: predictions collapse to one class ({share[top]:.0%} of the {split} images "
                   f"predicted {class_names[top]!r}; the largest true class is {true_top:.0%})")
    if out:  # a collapse is at chance too; one line says it
        return out
    present = [c for c in range(k) if (y_true == c).any()]
    balanced = float(np.mean([(pred[y_true == c] == c).mean() for c in present]))
    if balanced <= 1 / k + CHANCE_MARGIN:
        out.append(f"check `preprocess`: predictions are at chance on the {split} images (balanced accuracy "
                   f"{balanced:.2f}; chance is {1 / k:.2f} for {k} classes)")
    return out
