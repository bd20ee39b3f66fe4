"""A tiny classifier and data for the training tests, and a one-process training run for the
distribution tests (run as ``python tests/tiny_training.py none|mirrored|multiworker``).

The backbone has a skip connection across the fine-tuning cut, so the cached-activation boundary
is two tensors.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def backbone(seed: int):
    import keras

    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)  # noqa: E731
    inp = keras.Input((None, None, 3))
    a = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(0), name="c1")(inp)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init(1), name="c2")(a)
    c = keras.layers.Conv2D(8, 3, padding="same", kernel_initializer=init(2), name="c3")(b)
    d = keras.layers.Add(name="skip")([a, c])
    e = keras.layers.BatchNormalization(name="bn")(d)
    f = keras.layers.Conv2D(16, 1, activation="relu", kernel_initializer=init(3), name="c4")(e)
    return keras.Model(inp, f)


def classifier(seed: int = 3, dropout: float = 0.5):
    import keras

    from engine.training.backbones import build_classifier

    keras.utils.set_random_seed(seed)
    return build_classifier(backbone(seed), "unit", 16, 3, head_units=8, dropout=dropout, seed=seed)


def data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 60, (n, 16, 16, 3)).astype("uint8")
    for i, c in enumerate(y):
        x[i, :, :4 + 4 * c] += 150  # class = the width of a bright band at one edge
    return x, y


def main(distribute: str) -> dict:
    """Head on frozen features, then fine-tuning on cached activations, under ``distribute``."""
    import tensorflow as tf

    if distribute == "mirrored":  # two logical CPUs stand in for two GPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from engine.manifest import AugmentationConfig, FineTuneConfig, TrainingConfig
    from engine.training.devices import setup
    from engine.training.train import fine_tune, train_head

    aug = AugmentationConfig(enabled=True, flip=True, rotation=0.0, shift=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    cfg = TrainingConfig(epochs=3, batch_size=8, learning_rate=1e-2, dropout=0.0, augmentation=aug,
                         early_stopping_patience=0, distribute=distribute)
    ft = FineTuneConfig(layers=4, learning_rate=1e-2, epochs=2, schedule="constant")
    (x_tr, y_tr), (x_va, y_va) = data(48, 1), data(16, 9)
    run = setup(cfg)
    logs: list[str] = []
    with run.scope():
        model = classifier(dropout=0.0)
        result = train_head(model, x_tr, y_tr, x_va, y_va, cfg=cfg, seed=5, train_backbone=False, label="t")
        fine_tune(model, x_tr, y_tr, x_va, y_va, cfg=cfg, ft=ft, seed=5, label="t", echo=logs.append, result=result)
        p = model.predict(x_va.astype("float32"), verbose=0)
    return {"distribute": run.distribute, "replicas": run.replicas, "chief": run.chief,
            "val_loss": [h["val_loss"] for h in result.history], "probabilities": p.tolist(),
            "cached": any("cached activations" in line for line in logs)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])))
