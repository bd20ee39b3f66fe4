"""Transfer learning in two stages, validation-only model selection.

Stage "head": the backbone is frozen and only the head trains. When nothing random touches the
input (no augmentation), backbone features are computed once and the head trains on them, which
is tens of times cheaper on a CPU. A randomly initialised backbone (ImageNet weights unavailable
and ``weights_fallback = "random"``) trains end to end instead: frozen random features are noise.

Stage "fine_tune": the top N backbone layers are unfrozen at a lower learning rate, with
BatchNormalization kept in inference mode.

Both stages stop early on validation loss and restore the best epoch's weights. The test split
never enters this module.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engine import interrupts
from engine.data import DiskImages, as_images


@dataclass
class StageResult:
    name: str
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    time_s: float

    def to_dict(self) -> dict:
        return {"name": self.name, "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "time_s": round(self.time_s, 2)}


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    #: The frozen-backbone head and the validation features it trained against (None on the
    #: end-to-end path): evaluation reuses them instead of a second backbone pass (validation_probs).
    head: object | None = None
    val_features: np.ndarray | None = None

    def validation_probs(self, batch_size: int = 64) -> np.ndarray | None:
        """Validation probabilities from the cached features; None when there are none to reuse."""
        if self.head is None or self.val_features is None:
            return None
        return self.head.predict(self.val_features, batch_size=batch_size, verbose=0)

    @property
    def time_s(self) -> float:
        return sum(s.time_s for s in self.stages)


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """'balanced' weights as sklearn.utils.class_weight.compute_class_weight; None for 'none'."""
    if mode == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    w = compute_class_weight("balanced", classes=present, y=y)
    out = {int(c): 1.0 for c in range(n_classes)}
    out.update({int(c): float(v) for c, v in zip(present, w)})
    return out


def augmentation_layers(cfg, seed: int):
    """Keras random layers for MRI-appropriate augmentation (geometry and intensity), seeded."""
    import keras

    layers = []
    if cfg.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if cfg.rotation:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="constant", seed=seed + 1))
    if cfg.shift:
        layers.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=seed + 2))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed + 3))
    if cfg.brightness:
        layers.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 4))
    if cfg.contrast:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name="augment") if layers else None


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, *, shuffle: bool, seed: int, augment=None):
    import tensorflow as tf

    if isinstance(x, DiskImages):
        ds = _disk_batches(x, y, batch, shuffle=shuffle, seed=seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch)
    if augment is not None:
        # Sequential on purpose: parallel calls draw from the layers' shared random state in
        # whatever order threads run, so one seed would not give one result. prefetch still
        # overlaps augmentation with the training step.
        ds = ds.map(lambda a, b: (augment(tf.cast(a, "float32"), training=True), b))
    else:
        ds = ds.map(lambda a, b: (tf.cast(a, "float32"), b))
    return ds.prefetch(tf.data.AUTOTUNE)


def _disk_batches(x: DiskImages, y: np.ndarray, batch: int, *, shuffle: bool, seed: int):
    """Batches of images read from disk as they are needed. The shuffle runs over the indices with
    the same seed and buffer, so it draws the same order the in-memory dataset draws over the
    images (tf's shuffle never looks at the elements): one seed, one result, in RAM or on disk."""
    import tensorflow as tf

    labels = np.asarray(y)
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    def read(idx):
        i = idx.astype(np.int64)
        return x[i], labels[i]

    def rows(idx):
        images, labels_ = tf.numpy_function(read, [idx], [tf.uint8, tf.as_dtype(labels.dtype)])
        images.set_shape((None, *x.shape[1:]))
        labels_.set_shape((None, *labels.shape[1:]))
        return images, labels_

    return ds.batch(batch).map(rows)


class _BestWeights:
    """Early stopping on val_loss that always restores the best epoch (keras' own restores only
    when it actually stops early in some versions)."""

    def __new__(cls, patience: int):
        import keras

        class BestWeights(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.best, self.best_epoch, self.weights, self.wait, self.stopped = math.inf, 0, None, 0, False

            def on_epoch_end(self, epoch, logs=None):
                loss = (logs or {}).get("val_loss", math.inf)
                if loss < self.best - 1e-6:
                    self.best, self.best_epoch, self.wait = loss, epoch + 1, 0
                    self.weights = self.model.get_weights()
                else:
                    self.wait += 1
                    if patience and self.wait >= patience:
                        self.stopped = True
                        self.model.stop_training = True

            def on_train_end(self, logs=None):
                if self.weights is not None:
                    self.model.set_weights(self.weights)

        return BestWeights()


class _Progress:
    """Per-epoch progress on stderr: images/s and ETA while an epoch runs (engine.progress), then
    one summary line per epoch."""

    def __new__(cls, label: str, epochs: int, steps: int, echo: Callable[[str], None] | None, n_images: int = 0,
                batch_size: int = 0):
        import keras

        from engine.progress import Progress as Line

        total = n_images or steps

        class Progress(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0, self.epoch = time.perf_counter(), epoch + 1
                self.line = Line.for_echo(echo, f"{label} epoch {epoch + 1}/{epochs}", total,
                                          unit="images" if n_images else "batches")

            def on_train_batch_end(self, batch, logs=None):
                self.line.update((batch + 1) * (batch_size if n_images else 1))

            def on_test_batch_end(self, batch, logs=None):
                interrupts.check()  # validation batches are boundaries too (engine.interrupts)

            def on_epoch_end(self, epoch, logs=None):
                self.line.close()
                if echo:
                    logs = logs or {}
                    echo(f"  {label} epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.3f} "
                         f"acc {logs.get('accuracy', float('nan')):.3f} val_loss {logs.get('val_loss', float('nan')):.3f} "
                         f"val_acc {logs.get('val_accuracy', float('nan')):.3f} ({time.perf_counter() - self.t0:.1f}s)")

        return Progress()


class _EpochDraw:
    """Sets the seeded sampler's epoch (activations.Batches.set_epoch) as each epoch begins."""

    def __new__(cls, data):
        import keras

        class EpochDraw(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                data.set_epoch(epoch)

        return EpochDraw()


def _fit(model, train_ds, val_ds, *, epochs, patience, class_weight, stage, label, steps, echo, history,
         n_images: int = 0, batch_size: int = 0):
    best = _BestWeights(patience)
    t0 = time.perf_counter()
    progress = _Progress(f"{label} [{stage}]", epochs, steps, echo, n_images, batch_size)
    callbacks = [best, progress] + ([_EpochDraw(train_ds)] if hasattr(train_ds, "set_epoch") else [])
    from engine.training import loop

    if loop.needed():  # MultiWorkerMirroredStrategy: Keras' fit cannot drive it (engine.training.loop)
        h = loop.fit(model, train_ds, val_ds, epochs=epochs, class_weight=class_weight, callbacks=callbacks)
    else:
        h = model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=class_weight, verbose=0,
                      shuffle=False, callbacks=callbacks).history
    elapsed = time.perf_counter() - t0
    n = len(h.get("loss", []))
    for i in range(n):
        history.append({"stage": stage, "epoch": i + 1,
                        **{k: float(h[k][i]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in h}})
    return StageResult(stage, n, best.best_epoch or n, best.stopped, elapsed)


def _compile(model, lr: float):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def train_head(model, x_tr, y_tr, x_va, y_va, *, cfg, seed: int, train_backbone: bool, label: str,
               echo=None, features: tuple[np.ndarray, np.ndarray] | None = None) -> TrainResult:
    """Stage 1. ``cfg`` is the manifest's TrainingConfig. Mutates and returns weights in ``model``.

    ``features``: the backbone's pooled (training, validation) features when they were already
    computed (activations.Shared); otherwise the frozen path computes them here.
    """
    import keras

    from engine.training import activations as act

    result = TrainResult()
    n_classes = model.output_shape[-1]
    cw = class_weights(y_tr, n_classes, cfg.class_weights)
    backbone = model.get_layer("backbone")
    backbone.trainable = bool(train_backbone)
    augment = cfg.augmentation.enabled and (train_backbone or cfg.augmentation.augment_head)
    aug = augmentation_layers(cfg.augmentation, seed) if augment else None
    steps = math.ceil(len(x_tr) / cfg.batch_size)
    if not train_backbone and aug is None:
        # Frozen backbone, deterministic input: compute features once, train the head on them.
        t0 = time.perf_counter()
        if features is not None:
            f_tr, f_va = features
        else:
            feat_model = keras.Model(model.inputs, model.get_layer("gap").output)
            f_tr = _predict(feat_model, x_tr, cfg.batch_size, echo=echo, label=f"{label}: backbone features (train)")
            f_va = _predict(feat_model, x_va, cfg.batch_size, echo=echo,
                            label=f"{label}: backbone features (validation)")
            if echo:
                echo(f"  {label}: backbone features for {len(x_tr) + len(x_va)} images in "
                     f"{time.perf_counter() - t0:.1f}s")
        inp = keras.Input(f_tr.shape[1:])
        x = model.get_layer("head_dense")(inp)
        x = model.get_layer("head_dropout")(x)
        x = model.get_layer("logits")(x)
        head = keras.Model(inp, model.get_layer("probabilities")(x))
        _compile(head, cfg.learning_rate)
        # the seeded per-epoch sampler, not tf.data's shuffle: its order depends on how many
        # iterators were made before, which differs between Keras' fit and our own loop
        batches = act.batches_class()
        train_ds = batches(act.array_fetch(f_tr), y_tr, cfg.batch_size, seed=seed, shuffle=True, flip=False)
        val_ds = batches(act.array_fetch(f_va), y_va, cfg.batch_size, seed=seed, shuffle=False, flip=False)
        stage = _fit(head, train_ds, val_ds, epochs=cfg.epochs, patience=cfg.early_stopping_patience,
                     class_weight=cw, stage="head", label=label, steps=steps, echo=echo, history=result.history,
                     n_images=len(x_tr), batch_size=cfg.batch_size)
        stage.time_s = time.perf_counter() - t0  # feature extraction is part of the stage's cost
        result.head, result.val_features = head, f_va
    else:
        _compile(model, cfg.learning_rate)
        train_ds = _dataset(x_tr, y_tr, cfg.batch_size, shuffle=True, seed=seed, augment=aug)
        val_ds = _dataset(x_va, y_va, cfg.batch_size, shuffle=False, seed=seed)
        stage = _fit(model, train_ds, val_ds, epochs=cfg.epochs, patience=cfg.early_stopping_patience,
                     class_weight=cw, stage="head", label=label, steps=steps, echo=echo, history=result.history,
                     n_images=len(x_tr), batch_size=cfg.batch_size)
    result.stages.append(stage)
    return result


def learning_rate_schedule(peak: float, steps_per_epoch: int, epochs: int, schedule: str = "cosine",
                           warmup_epochs: float = 0.0):
    """The fine-tuning learning rate: a float (constant) or a keras LearningRateSchedule.

    "cosine" warms up linearly from 0 to ``peak`` over ``warmup_epochs`` and then decays to 0
    along a cosine by the last step (keras.optimizers.schedules.CosineDecay with warmup).
    """
    import keras

    if schedule == "constant":
        return peak
    total = max(1, steps_per_epoch * epochs)
    warm = min(total - 1, int(round(warmup_epochs * steps_per_epoch)))
    if warm <= 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - warm, warmup_target=peak,
                                                  warmup_steps=warm)


def fine_tune(model, x_tr, y_tr, x_va, y_va, *, cfg, ft, seed: int, label: str, echo=None,
              result: TrainResult | None = None, store=None, cached=None) -> TrainResult:
    """Stage 2: unfreeze the top ``ft.layers`` backbone layers (BatchNorm stays frozen).

    Trains on cached boundary activations when it can (engine.training.activations), else the
    whole network per epoch; the log says which and why. ``store``: a folder for memory-mapped
    activations over ``activations.IN_MEMORY_BYTES`` (None keeps them in RAM); they are deleted
    when fine-tuning ends. ``cached``: an activations.Shared already holding this cut's
    activations (the caller computed them once for every stage).
    """
    from engine.training.backbones import set_backbone_trainable

    result = result or TrainResult()
    n = set_backbone_trainable(model, ft.layers)
    if echo:
        how = (f"peak lr {ft.learning_rate:g}, {ft.warmup_epochs:g}-epoch warm-up, cosine decay"
               if ft.schedule == "cosine" else f"lr {ft.learning_rate:g}")
        echo(f"  {label}: fine-tuning {n} backbone layers ({how})")
    cw = class_weights(y_tr, model.output_shape[-1], cfg.class_weights)
    steps = math.ceil(len(x_tr) / cfg.batch_size)
    t0 = time.perf_counter()
    fit_model, train_ds, val_ds, own = _fine_tune_data(model, x_tr, y_tr, x_va, y_va, cfg=cfg, seed=seed, label=label,
                                                       echo=echo, store=store, cached=cached)
    try:
        _compile(fit_model, learning_rate_schedule(ft.learning_rate, steps, ft.epochs, ft.schedule, ft.warmup_epochs))
        stage = _fit(fit_model, train_ds, val_ds, epochs=ft.epochs, patience=cfg.early_stopping_patience,
                     class_weight=cw, stage="fine_tune", label=label, steps=steps, echo=echo, history=result.history,
                     n_images=len(x_tr), batch_size=cfg.batch_size)
    finally:
        del train_ds, val_ds  # memory-mapped arrays close before their folder goes
        if own is not None:
            own.close()
    stage.time_s = time.perf_counter() - t0  # the activations are part of the stage's cost
    result.stages.append(stage)
    return result


def _fine_tune_data(model, x_tr, y_tr, x_va, y_va, *, cfg, seed, label, echo, store, cached=None):
    """(model to fit, training data, validation data, activations.Shared this call made or None)
    for fine-tuning: cached activations or images."""
    from engine.training import activations as act

    say = echo or (lambda msg: None)
    aug = cfg.augmentation
    batches = act.batches_class()
    own = None
    if cached is not None:
        say(f"  {label}: training the layers above {cached.split.boundary} on the activations cached for this backbone")
    else:
        random_aug = act.random_augmentations(aug)
        if random_aug:
            say(f"  {label}: fine-tuning the whole network every epoch: random augmentation ({', '.join(random_aug)}) "
                "changes the input before the frozen layers, so their activations cannot be cached")
            layers = augmentation_layers(aug, seed)
            return (model, _dataset(x_tr, y_tr, cfg.batch_size, shuffle=True, seed=seed + 7, augment=layers),
                    _dataset(x_va, y_va, cfg.batch_size, shuffle=False, seed=seed), None)
        flips = bool(aug.enabled and aug.flip)
        t0 = time.perf_counter()
        cached, reason = act.share(model, x_tr, x_va, batch=cfg.batch_size, flips=flips, tta=False,
                                   budget=cfg.activation_cache_bytes, store=store, echo=echo,
                                   label=f"{label}: activations")
        if cached is None:
            say(f"  {label}: fine-tuning the whole network every epoch: {reason}")
            return (model,
                    batches(act.image_fetch(x_tr), y_tr, cfg.batch_size, seed=seed + 7, shuffle=True, flip=flips),
                    batches(act.image_fetch(x_va), y_va, cfg.batch_size, seed=seed, shuffle=False, flip=False), None)
        own = cached
        say(f"  {label}: cached {cached.describe()} in {time.perf_counter() - t0:.1f}s; training the layers above them")
    flips = len(cached.train) > 1
    return (cached.split.upper,
            batches(act.cached_fetch(cached.train), y_tr, cfg.batch_size, seed=seed + 7, shuffle=True, flip=flips),
            batches(act.cached_fetch(cached.val[:1]), y_va, cfg.batch_size, seed=seed, shuffle=False, flip=False), own)


def predict(model, x: np.ndarray, batch_size: int = 64, tta_flip: bool = False, *, echo=None,
            label: str = "predicting") -> np.ndarray:
    """(n, H, W, 3) uint8/float 0..255 -> (n, k) model outputs; optional horizontal-flip TTA.

    Runs the compiled forward (``activations.compiled``) over uint8 batches in a plain loop
    (docs/benchmarks.md compares it with a bare compiled loop). ``echo``: the run's echo; unless it
    is quiet, a progress line shows images/s and ETA.
    """
    return _predict(model, x, batch_size, tta_flip, echo=echo, label=label)


def _predict(model, x, batch_size, tta_flip=False, *, echo, label):
    # training's own feature pass calls this, not ``predict``, so a test replacing the evaluation's
    # predictions cannot change what the head trains on
    from engine.progress import Progress

    x = as_images(x)  # a split on disk is read a batch at a time
    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), "float32")
    from engine.training.activations import compiled

    step = compiled(model)

    import tensorflow as tf

    def once(flip, what):
        # A plain loop: on a few CPU cores a prefetching tf.data pipeline's thread competes with
        # the forward pass for the same cores and cost 10-60% of the throughput
        # (benchmarks/bench_predict.py); slicing and the in-graph cast cost next to nothing.
        out = []
        with Progress.for_echo(echo, what, len(x)) as line:
            for i in range(0, len(x), batch_size):
                a = x[i:i + batch_size]
                out.append(np.asarray(step(tf.constant(a[:, :, ::-1] if flip else a)), dtype="float32"))
                line.update(i + len(a))
        return np.concatenate(out)

    p = once(False, label)
    if tta_flip:
        p = (p + once(True, f"{label} (mirrored)")) / 2
    return p
