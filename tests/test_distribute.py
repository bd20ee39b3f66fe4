"""[training] distribute (issue 20): MirroredStrategy on two logical CPUs matches one device.

Each run is its own process (tests/tiny_training.py): logical devices can only be set before
TensorFlow starts. Tolerance: the same predicted class for every validation image, probabilities
within 0.05 and validation losses within 0.03 of the single-device run. Adam's first steps are
close to lr * sign(gradient), so the summation order of a cross-replica all-reduce moves small
gradients' signs; measured here 0.029 and 0.013.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _run(distribute: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "tiny_training.py"), distribute], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device():
    one, two = _run("none"), _run("mirrored")
    assert (one["distribute"], one["replicas"]) == ("none", 1)
    assert (two["distribute"], two["replicas"]) == ("mirrored", 2)
    assert one["cached"] and two["cached"], "fine-tuning should run on cached activations in both"
    p1, p2 = np.array(one["probabilities"]), np.array(two["probabilities"])
    assert (p1.argmax(1) == p2.argmax(1)).all()
    assert np.abs(p1 - p2).max() < 0.05
    assert np.abs(np.array(one["val_loss"]) - np.array(two["val_loss"])).max() < 0.03


def test_chief_is_worker_zero_unless_a_chief_task_exists():
    from engine.training.devices import is_chief

    cluster = {"worker": ["localhost:1", "localhost:2"]}
    assert is_chief("") is True
    assert is_chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})) is True
    assert is_chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})) is False
    with_chief = {**cluster, "chief": ["localhost:3"]}
    assert is_chief(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})) is False
    assert is_chief(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}})) is True
    with pytest.raises(InputError, match="TF_CONFIG"):
        is_chief("{not json")


def test_multiworker_without_tf_config_is_an_input_error(monkeypatch):
    from engine.training.devices import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(InputError, match='distribute = "multiworker" needs the TF_CONFIG'):
        make_strategy("multiworker")


def test_precision_is_float32_on_cpu_and_explicit_choices_stand():
    from engine.training.devices import precision_policy

    cpu = [{"type": "CPU", "name": "x", "count": 1}]
    assert precision_policy("auto", cpu) == "float32"  # this machine has no GPU
    assert precision_policy("mixed_bfloat16", cpu) == "mixed_bfloat16"


def test_replica_slices_cover_the_global_batch_once():
    from engine.training.loop import replica_slices

    for n, r in ((32, 2), (7, 2), (1, 4), (0, 3), (33, 8)):
        parts = replica_slices(n, r)
        assert len(parts) == r
        assert np.concatenate([np.arange(n)[p] for p in parts]).tolist() == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


@pytest.mark.slow
def test_own_training_loop_matches_keras_fit_on_one_device(monkeypatch):
    """engine.training.loop (what multiworker trains with) against Keras' fit: same batches, same
    steps, same validation losses and probabilities on the head and cached fine-tuning stages."""
    import tiny_training
    from engine.training import loop

    fit = tiny_training.main("none")
    monkeypatch.setattr(loop, "needed", lambda strategy=None: True)
    own = tiny_training.main("none")
    assert np.allclose(fit["val_loss"], own["val_loss"], atol=1e-5)
    assert np.abs(np.array(fit["probabilities"]) - np.array(own["probabilities"])).max() < 1e-4
    assert fit["cached"] and own["cached"]


def test_mixed_precision_reaches_a_backbone_loaded_from_a_file(tmp_path):
    """A .keras backbone keeps its saved float32 policy per layer; without apply_global_precision,
    [training] precision = "mixed_*" left every backbone layer in float32."""
    import keras

    import tiny_training
    from engine.manifest import BackboneConfig
    from engine.training import backbones as bb

    path = tmp_path / "tiny.keras"
    tiny_training.backbone(seed=1).save(path)
    x = tiny_training.data(4, 0)[0].astype("float32")
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        loaded = bb.load_backbone(BackboneConfig(name="tiny", file=path, input_size=16))
        with_weights = [layer for layer in loaded.model.layers if layer.weights]
        assert with_weights and {layer.compute_dtype for layer in with_weights} == {"bfloat16"}
        assert {w.dtype for layer in with_weights for w in layer.weights} == {"float32"}  # weights unchanged
        model = bb.build_classifier(loaded.model, loaded.preprocessing, 16, 3, head_units=8, seed=1)
        assert model.get_layer("gap").input.dtype == "bfloat16"  # the backbone computes in bfloat16
        probs = np.asarray(model(x, training=False))
        assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1.0, atol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    again = bb.load_backbone(BackboneConfig(name="tiny", file=path, input_size=16))
    assert {layer.compute_dtype for layer in again.model.layers if layer.weights} == {"float32"}
