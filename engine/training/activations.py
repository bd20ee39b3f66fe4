"""Fine-tuning on cached activations.

When fine-tuning unfreezes only the top layers of the backbone, everything below the lowest
unfrozen layer is a fixed function of the input (frozen weights, BatchNorm in inference mode).
Pushing every image through that lower part again every epoch is most of a CPU fine-tuning run,
so the activations at the boundary are computed once per image and per deterministic variant
(the image and its horizontal mirror when ``flip = true``), and the top part with the head trains
on them. The variables are the classifier's own: training the top part trains the classifier.

Both this path and the full-network path draw batches from :class:`Batches`, one seeded order
and one flip choice per image and epoch, so for one seed they see the same data in the same
order and their predictions agree within float tolerance (tests/test_activation_cache.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Default of ``[training] activation_cache_bytes``.
DEFAULT_BUDGET = 4 * 1024**3
#: Above this many bytes, activations are memory-mapped under the cache folder when there is one.
IN_MEMORY_BYTES = 1024**3
#: Augmentation keys that change the input at random; with any of them on, nothing is cacheable.
RANDOM_AUGMENTATIONS = ("rotation", "shift", "zoom", "brightness", "contrast")


def random_augmentations(aug) -> list[str]:
    """The random (non-flip) augmentations that are on: they make the lower part non-cacheable."""
    if not aug.enabled:
        return []
    return [k for k in RANDOM_AUGMENTATIONS if getattr(aug, k)]


def batches_class():
    import keras

    class Batches(keras.utils.PyDataset):
        """Seeded batches: one permutation and one flip draw per epoch, from ``seed`` and the epoch
        (``set_epoch``).

        ``fetch(indices, flips)`` turns image indices and their flip choices into the model's input.
        """

        def __init__(self, fetch, y, batch: int, *, seed: int, shuffle: bool, flip: bool):
            super().__init__()
            self.fetch, self.y, self.batch = fetch, y, batch
            self.seed, self.shuffle, self.flip, self.epoch = seed, shuffle, flip, 0
            self._draw()

        def _draw(self):
            rng = np.random.default_rng([self.seed, self.epoch])
            n = len(self.y)
            self.order = rng.permutation(n) if self.shuffle else np.arange(n)
            self.flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)

        def __len__(self):
            return math.ceil(len(self.y) / self.batch)

        def __getitem__(self, i):
            pos = slice(i * self.batch, (i + 1) * self.batch)
            idx = self.order[pos]
            return self.fetch(idx, self.flips[pos]), self.y[idx]

        def set_epoch(self, epoch: int):
            """Draw epoch ``epoch``'s order and flips. Called from the training callbacks'
            on_epoch_begin, which number epochs truly: Keras' fit also runs the data hooks once
            for its symbolic build, and our own loop (engine.training.loop) does not."""
            if epoch != self.epoch:
                self.epoch = epoch
                self._draw()

    return Batches


def image_fetch(x: np.ndarray):
    """Full-network input: the images, mirrored where drawn, as float32."""

    def fetch(idx, flips):
        out = x[idx].astype("float32")
        out[flips] = out[flips][:, :, ::-1]
        return out

    return fetch


def array_fetch(a: np.ndarray):
    """Rows of ``a`` as they are (features: no flip variant)."""

    def fetch(idx, flips):
        return a[idx]

    return fetch


def cached_fetch(variants: list[list[np.ndarray]]):
    """Cached input: ``variants[v][j]`` holds boundary tensor j of variant v (0 plain, 1 mirrored)."""

    def fetch(idx, flips):
        out = []
        for j in range(len(variants[0])):
            a = variants[0][j][idx]
            if flips.any():
                a[flips] = variants[1][j][idx[flips]]
            out.append(a)
        return tuple(out) if len(out) > 1 else out[0]

    return fetch


@dataclass
class Split:
    """The classifier cut at the lowest unfrozen backbone layer."""

    lower: object  # keras.Model: image (0..255) -> boundary tensors
    upper: object  # keras.Model: boundary tensors -> probabilities (shares the classifier's variables)
    boundary: str  # name of the lowest unfrozen layer
    shapes: list[tuple[int, ...]]  # per-image shape of each boundary tensor
    features: object = None  # keras.Model: boundary tensors -> the pooled backbone features ("gap")

    @property
    def bytes_per_image(self) -> int:
        return sum(4 * int(np.prod(s)) for s in self.shapes)


def _own_nodes(graph, layer) -> list:
    """``layer``'s calls inside ``graph`` (a layer may be called in other graphs too)."""
    keys = getattr(graph, "_nodes", None)
    return [n for i, n in enumerate(layer._inbound_nodes) if keys is None or f"{id(layer)}_ib-{i}" in keys]


def _boundary_tensors(backbone, k: int) -> list:
    """Outputs of layers below index ``k`` that layers at ``k`` and above read (skip connections too)."""
    lower_ops = {id(layer) for layer in backbone.layers[:k]}
    seen, out = set(), []
    for layer in backbone.layers[k:]:
        for node in _own_nodes(backbone, layer):
            for t in node.input_tensors:
                op = t._keras_history.operation
                if id(op) in lower_ops and id(t) not in seen:
                    seen.add(id(t))
                    out.append(t)
    return out


def _outer_node(model, backbone):
    """The classifier's call of its nested backbone (the backbone's own graph has nodes too)."""
    return _own_nodes(model, backbone)[-1]


def split_classifier(model) -> Split | None:
    """Cut ``model`` below its lowest trainable backbone layer; None when nothing below is frozen."""
    import keras

    backbone = model.get_layer("backbone")
    layers = backbone.layers
    k = next((i for i, layer in enumerate(layers) if layer.trainable and layer.trainable_weights), None)
    if k is None or k <= 1:
        return None
    cut = _boundary_tensors(backbone, k)
    if not cut:
        return None
    lower_bb = keras.Model(backbone.inputs, cut, name="lower_backbone")
    upper_bb = keras.Model(cut if len(cut) > 1 else cut[0], backbone.outputs[0], name="upper_backbone")
    node = _outer_node(model, backbone)
    before = keras.Model(model.inputs, node.input_tensors[0], name="before_backbone")
    after = keras.Model(node.output_tensors[0], model.outputs, name="head_part")
    image = keras.Input(model.inputs[0].shape[1:], name="image")
    feats = lower_bb(before(image))
    feats = feats if isinstance(feats, (list, tuple)) else [feats]
    lower = keras.Model(image, feats, name="lower")
    shapes = [tuple(int(d) for d in f.shape[1:]) for f in feats]
    ins = [keras.Input(shape) for shape in shapes]
    top = upper_bb(ins if len(ins) > 1 else ins[0])
    upper = keras.Model(ins, after(top), name="upper")
    pooled = None
    if "gap" in {layer.name for layer in model.layers}:
        pooled = keras.Model(ins, keras.Model(node.output_tensors[0], model.get_layer("gap").output)(top),
                             name="upper_features")
    return Split(lower, upper, layers[k].name, shapes, pooled)


def compiled(model):
    """``model`` in inference mode as one tf.function, cached on the model: one trace per batch shape
    and dtype (``reduce_retracing`` lets a short last batch share it), not one per call.

    Takes one batch or a list of batches (a model over several boundary tensors); uint8 batches are
    cast inside the graph, so no float32 copy of a batch is made in Python. Every forward pass of
    the audit goes through it: predictions (train.predict), the frozen layers (``compute``) and the
    layers above them (``apply``).
    """
    import tensorflow as tf

    step = getattr(model, "_auditrun_forward", None)
    if step is None:
        @tf.function(reduce_retracing=True)
        def step(inputs):
            xs = [tf.cast(a, "float32") for a in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
            return model(xs if len(xs) > 1 else xs[0], training=False)

        model._auditrun_forward = step
    return step


def _forward(lower, x: np.ndarray, out: list[np.ndarray], batch: int, flip: bool, line=None) -> None:
    import tensorflow as tf

    step = compiled(lower)
    for i in range(0, len(x), batch):
        if line is not None:
            line.update(i)
        a = x[i:i + batch]
        if flip:
            a = a[:, :, ::-1]
        r = step(tf.constant(a))  # uint8 stays uint8 until the graph casts it
        for j, t in enumerate(r if isinstance(r, (list, tuple)) else [r]):
            out[j][i:i + len(a)] = t.numpy()
    if line is not None:
        line.update(len(x))


def compute(split: Split, x: np.ndarray, *, batch: int, flips: bool, store: Path | None = None,
            name: str = "train", echo=None, label: str = "activations") -> list[list[np.ndarray]]:
    """Boundary activations of ``x``: ``[variant][tensor] -> (n, ...)`` float32, in RAM or memory-mapped.

    ``echo``: the run's echo; unless it is quiet, a progress line with images/s and ETA shows.
    """
    from engine.progress import Progress

    variants = []
    for v in range(2 if flips else 1):
        arrays = []
        for j, shape in enumerate(split.shapes):
            if store is not None:
                arrays.append(_mapped(store / f"{name}-{v}-{j}.npy", (len(x), *shape)))
            else:
                arrays.append(np.empty((len(x), *shape), "float32"))
        what = f"{label}{' mirrored' if v else ''}"
        with Progress.for_echo(echo, what, len(x)) as line:
            _forward(split.lower, x, arrays, batch, flip=bool(v), line=line)
        variants.append(arrays)
    return variants


def _mapped(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array memory-mapped at ``path``, its blocks allocated up front: a sparse file on a
    full disk would raise SIGBUS at the first write into a page it has no room for, where
    ``posix_fallocate`` raises ENOSPC (a StorageError naming the file)."""
    from engine.atomic import writing

    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=shape)
        if hasattr(os, "posix_fallocate"):
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            finally:
                os.close(fd)
    return array


def apply(part, arrays: list[np.ndarray], batch: int, *, echo=None, label: str = "cached") -> np.ndarray:
    """``part`` (a model over the boundary tensors) on cached ``arrays``, compiled, in batches."""
    import tensorflow as tf

    from engine.progress import Progress

    step = compiled(part)
    n = len(arrays[0])
    out = []
    with Progress.for_echo(echo, label, n) as line:
        for i in range(0, n, batch):
            out.append(np.asarray(step([tf.constant(a[i:i + batch]) for a in arrays]), dtype="float32"))
            line.update(i + len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, *part.output_shape[1:]), "float32")


@dataclass
class Shared:
    """Boundary activations of one backbone's training (both flips), validation and test images,
    computed once and used by every stage: the frozen head's features, the frozen model's
    predictions, fine-tuning, and the fine-tuned model's predictions. The lower part is frozen in
    all of them, so one pass of it per image and variant is all a run needs.

    The test activations are only read by :meth:`probs`, which evaluation calls after training.
    """

    split: Split
    train: list[list[np.ndarray]]  # [variant][tensor]
    val: list[list[np.ndarray]]
    test: list[list[np.ndarray]]
    batch: int
    nbytes: int
    tmp: object = None  # TemporaryDirectory holding memory-mapped arrays, or None

    def features(self, echo=None, label: str = "features") -> tuple[np.ndarray, np.ndarray]:
        """The frozen head's (training, validation) inputs: pooled features of the unmirrored images."""
        f = self.split.features
        return (apply(f, self.train[0], self.batch, echo=echo, label=f"{label} (train)"),
                apply(f, self.val[0], self.batch, echo=echo, label=f"{label} (validation)"))

    def probs(self, which: str, echo=None, label: str = "predictions") -> np.ndarray:
        """The whole classifier's probabilities on "val" or "test" (flip TTA when it was cached)."""
        variants = self.val if which == "val" else self.test
        p = [apply(self.split.upper, v, self.batch, echo=echo, label=f"{label}{' (mirrored)' if i else ''}")
             for i, v in enumerate(variants)]
        return sum(p) / len(p)

    def describe(self) -> str:
        """What the cache holds, for the log: ``activations below <layer> (<shapes> per image) for
        <n> training images x <k> flips, <n> validation [and <n> test] [x 2 flips] (<GiB>, in memory)``."""
        def count(variants):
            return len(variants[0][0]) if variants else 0

        held = f"{count(self.val)} validation" + (f" and {count(self.test)} test" if self.test else "")
        tta = " x 2 flips" if len(self.val) > 1 else ""
        where = "memory-mapped under the cache" if self.tmp is not None else "in memory"
        return (f"activations below {self.split.boundary} ({' + '.join(str(s) for s in self.split.shapes)} per "
                f"image) for {count(self.train)} training images x {len(self.train)} flips, {held}{tta} "
                f"({gib(self.nbytes)}, {where})")

    def close(self) -> None:
        self.train = self.val = self.test = []
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def share(model, x_tr, x_va, x_te=None, *, batch: int, flips: bool, tta: bool, budget: int,
          store: Path | None, echo=None, label: str = "activations") -> tuple[Shared | None, str]:
    """(Shared, "") with the boundary activations of every split given, cut below ``model``'s lowest
    trainable backbone layer, or (None, why not). ``x_te``: None when only fine-tuning needs them.
    Above ``IN_MEMORY_BYTES`` they are memory-mapped in a temporary folder under ``store``, which
    ``Shared.close`` deletes."""
    import tempfile

    if budget <= 0:
        return None, "the activation cache is off (training.activation_cache_bytes = 0)"
    split = split_classifier(model)
    if split is None:
        return None, "no frozen backbone layers below the unfrozen ones to cache"
    x_te = x_va[:0] if x_te is None else x_te
    views = 2 if tta else 1
    need = split.bytes_per_image * (len(x_tr) * (2 if flips else 1) + (len(x_va) + len(x_te)) * views)
    if need > budget:
        return None, (f"cached activations would take {gib(need)}, over the budget of {gib(budget)} "
                      "(training.activation_cache_bytes)")
    tmp = tempfile.TemporaryDirectory(prefix="activations-", dir=store) \
        if store is not None and need > IN_MEMORY_BYTES else None
    folder = Path(tmp.name) if tmp is not None else None
    try:
        tr = compute(split, x_tr, batch=batch, flips=flips, store=folder, name="train", echo=echo,
                     label=f"{label} (train)")
        va = compute(split, x_va, batch=batch, flips=tta, store=folder, name="validation", echo=echo,
                     label=f"{label} (validation)")
        te = compute(split, x_te, batch=batch, flips=tta, store=folder, name="test", echo=echo,
                     label=f"{label} (test)") if len(x_te) else []
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Shared(split, tr, va, te, batch, need, tmp), ""


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"
