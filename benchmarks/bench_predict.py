"""Images/s of ``engine.training.train.predict`` against a bare compiled loop over the same model.

The bare loop is the floor of overhead: one ``tf.function`` forward over float32 batches already in
memory. ``predict`` adds what a run needs (per-batch uint8 -> float32 conversion through a prefetched
tf.data pipeline, progress accounting); the ratio says what that costs.

    python benchmarks/bench_predict.py --backbone /work/shared/weights/efficientnet_lite0_imagenet.keras \\
        [--size 224] [--images 64] [--batch 32] [--repeats 3]

Ends with ``ratio: X.XX`` (predict images/s / bare images/s, best of the repeats each).
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
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from engine.training.train import predict

    backbone = keras.saving.load_model(args.backbone)
    inp = keras.Input((args.size, args.size, 3))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(backbone(inp)))
    x = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3)).astype("uint8")
    xf = x.astype("float32")

    @tf.function(reduce_retracing=True)
    def bare_step(a):
        return model(a, training=False)

    def bare():
        return [bare_step(tf.constant(xf[i:i + args.batch])).numpy() for i in range(0, len(xf), args.batch)]

    assert np.allclose(np.concatenate(bare()), predict(model, x, args.batch), atol=1e-4)
    t_bare = _best(bare, args.repeats)
    t_pred = _best(lambda: predict(model, x, args.batch), args.repeats)
    keras_pred = _best(lambda: model.predict(xf, batch_size=args.batch, verbose=0), args.repeats)
    n = args.images
    print(f"bare compiled loop: {n / t_bare:.1f} images/s")
    print(f"train.predict:      {n / t_pred:.1f} images/s")
    print(f"keras model.predict: {n / keras_pred:.1f} images/s")
    print(f"ratio: {t_bare / t_pred:.2f}")


if __name__ == "__main__":
    main()
