"""Images/s of auditrun's frozen-feature and prediction passes against a bare compiled loop over
the same model, in one process.

The bare loop is the practical limit: one ``tf.function`` forward over float32 batches already in
memory (no conversion, no progress accounting). Measured beside it, on the same uint8 images:

* ``features (shared pass)``: what an audit with fine-tuning runs for the frozen head's features:
  the frozen lower backbone once (``activations.compute``), then the layers above the cut
  (``activations.apply``) - ``engine.training.activations.Shared``;
* ``features (train.predict)``: what an audit without fine-tuning runs (and every evaluation
  pass): ``engine.training.train.predict`` of the feature model;
* Keras' ``model.predict`` for reference; and, with ``--xla``, the bare loop under XLA.

    python benchmarks/bench_predict.py --backbone /work/shared/weights/efficientnet_lite0_imagenet.keras \\
        [--size 224] [--images 256] [--batch 32] [--repeats 3] [--ft-layers 40] [--xla]

Ends with ``ratio: X.XX``: the slower of the two frozen-feature paths' images/s over the bare loop's
(best of the repeats each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _best(fn, repeats: int) -> float:
    fn()  # trace and warm up outside the timing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ft-layers", type=int, default=40)
    ap.add_argument("--xla", action="store_true", help="also time the bare loop compiled with XLA")
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from engine.manifest import BackboneConfig
    from engine.training import activations as act
    from engine.training import backbones as bb
    from engine.training.train import predict

    keras.utils.set_random_seed(0)
    loaded = bb.load_backbone(BackboneConfig(name="bench", file=Path(args.backbone), input_size=args.size))
    model = bb.build_classifier(loaded.model, loaded.preprocessing, args.size, 4, seed=0)
    features = keras.Model(model.inputs, model.get_layer("gap").output)
    x = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3)).astype("uint8")
    xf = x.astype("float32")

    def bare_loop(jit: bool):
        step = tf.function(lambda a: features(a, training=False), jit_compile=jit, reduce_retracing=True)
        return lambda: np.concatenate([step(tf.constant(xf[i:i + args.batch])).numpy()
                                       for i in range(0, len(xf), args.batch)])

    bare = bare_loop(False)
    bb.set_backbone_trainable(model, args.ft_layers)
    split = act.split_classifier(model)
    model.get_layer("backbone").trainable = False

    def shared():
        cached = act.compute(split, x, batch=args.batch, flips=False)[0]
        return act.apply(split.features, cached, args.batch)

    reference = bare()
    assert np.allclose(reference, predict(features, x, args.batch), atol=1e-3)
    assert np.allclose(reference, shared(), atol=1e-3)
    n = args.images
    rates = {"bare compiled loop": n / _best(bare, args.repeats),
             "features (shared pass)": n / _best(shared, args.repeats),
             "features (train.predict)": n / _best(lambda: predict(features, x, args.batch), args.repeats),
             "keras model.predict": n / _best(lambda: features.predict(xf, batch_size=args.batch, verbose=0),
                                              args.repeats)}
    if args.xla:
        rates["bare loop, XLA"] = n / _best(bare_loop(True), args.repeats)
    for name, rate in rates.items():
        print(f"{name + ':':27s} {rate:6.1f} images/s  ({rate / rates['bare compiled loop']:.2f}x bare)")
    worst = min(rates["features (shared pass)"], rates["features (train.predict)"])
    print(f"ratio: {worst / rates['bare compiled loop']:.2f}")


if __name__ == "__main__":
    main()
