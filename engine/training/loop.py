"""Our own training loop, for the one strategy Keras' ``fit`` cannot drive.

Keras 3's ``Model.fit`` under ``tf.distribute.MultiWorkerMirroredStrategy`` fails before its
first step (keras-team/keras#20585, open; reproduced with Keras 3.15 / TensorFlow 2.21): its
symbolic build all-reduces a per-replica data batch, which the collective ops reject. So with
``[training] distribute = "multiworker"`` each epoch runs here: every worker draws the same
seeded global batch, each replica takes its contiguous slice of it
(``experimental_distribute_values_from_function``), ``strategy.run`` computes the loss and
gradients, and the Keras optimizer all-reduces the gradients across workers before applying them.

It does what ``fit`` does for these models: the compiled optimizer (learning-rate schedule
included), ``class_weight`` as per-image loss weights summed over the global batch (Keras'
``sum_over_batch_size``), Keras callbacks' epoch hooks (best-weight restore, early stop, progress),
and the validation loss and accuracy without class weights. Validation needs no collective: every
worker holds the same weights, so each scores the whole validation split itself.
"""

from __future__ import annotations

import numpy as np

from engine import interrupts


def needed(strategy=None) -> bool:
    """True when the strategy in scope is one Keras' fit cannot drive."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def global_batches(data):
    """(inputs, labels) numpy batches of a tf.data.Dataset or a keras PyDataset, one epoch."""
    import keras

    if isinstance(data, keras.utils.PyDataset):
        for i in range(len(data)):
            yield data[i]
        data.on_epoch_end()
    else:
        yield from data.as_numpy_iterator()


def replica_slices(n: int, replicas: int) -> list[slice]:
    """Contiguous, near-equal slices of a global batch of ``n``, one per replica (some may be
    empty on a short last batch: their loss and gradient are zero)."""
    bounds = np.linspace(0, n, replicas + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def fit(model, train_data, val_data, *, epochs: int, class_weight: dict | None, callbacks, strategy=None) -> dict:
    """Train ``model`` (compiled: its optimizer, with schedule, is used) for ``epochs`` under the
    strategy in scope; returns a Keras-style history dict (loss, accuracy, val_loss, val_accuracy)."""
    import keras
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    optimizer = model.optimizer
    n_classes = model.output_shape[-1]
    weights = np.ones(n_classes, "float32")
    for c, w in (class_weight or {}).items():
        weights[int(c)] = w
    weights = tf.constant(weights)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(x, y, n_global):
        with tf.GradientTape() as tape:
            probs = tf.cast(model(x, training=True), "float32")
            per_image = keras.losses.sparse_categorical_crossentropy(y, probs)
            loss = tf.reduce_sum(per_image * tf.gather(weights, y)) / n_global
            scaled_loss = optimizer.scale_loss(loss) if scaled else loss
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=y.dtype), y), "float32"))
        return loss, correct

    @tf.function(reduce_retracing=True)
    def train_step(x, y, n_global):
        loss, correct = strategy.run(replica_step, args=(x, y, n_global))
        sum_ = tf.distribute.ReduceOp.SUM
        return strategy.reduce(sum_, loss, axis=None), strategy.reduce(sum_, correct, axis=None)

    @tf.function(reduce_retracing=True)
    def val_step(x, y):
        probs = tf.cast(model(x, training=False), "float32")
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=y.dtype), y), "float32"))
        return loss, correct

    def distribute(batch):
        n = len(batch[1])
        parts = replica_slices(n, replicas)

        def value(ctx):
            part = parts[ctx.replica_id_in_sync_group]
            return tf.nest.map_structure(lambda a: tf.constant(a[part]), batch)

        return strategy.experimental_distribute_values_from_function(value), n

    cbs = keras.callbacks.CallbackList(callbacks, model=model)
    history: dict[str, list[float]] = {k: [] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    model.stop_training = False
    cbs.on_train_begin()
    for epoch in range(epochs):
        cbs.on_epoch_begin(epoch)
        loss_sum = correct = seen = steps = 0
        for i, batch in enumerate(global_batches(train_data)):
            cbs.on_train_batch_begin(i)
            (x, y), n = distribute((batch[0], np.asarray(batch[1]).astype("int64")))
            loss, right = train_step(x, y, tf.constant(float(n)))
            loss_sum, correct, seen, steps = loss_sum + float(loss), correct + float(right), seen + n, steps + 1
            cbs.on_train_batch_end(i, {"loss": loss_sum / steps})
        val_loss = val_correct = val_n = 0.0
        for x, y in global_batches(val_data):
            interrupts.check()
            loss, right = val_step(x, np.asarray(y).astype("int64"))
            val_loss, val_correct, val_n = val_loss + float(loss), val_correct + float(right), val_n + len(y)
        logs = {"loss": loss_sum / max(steps, 1), "accuracy": correct / max(seen, 1),
                "val_loss": val_loss / max(val_n, 1), "val_accuracy": val_correct / max(val_n, 1)}
        for k, v in logs.items():
            history[k].append(v)
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end()
    return history
