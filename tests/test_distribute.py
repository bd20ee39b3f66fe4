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
