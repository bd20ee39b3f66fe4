"""[training] distribute = "multiworker" end to end (issue 20): two `auditrun` worker processes on
localhost ports, configured by TF_CONFIG, against the same audit on one device.

MultiWorkerMirroredStrategy runs through engine.training.loop (Keras' fit cannot drive it). Each
worker draws the same seeded global batch and trains on its half; the gradients are all-reduced.
Tolerance, as for the mirrored test (tests/test_distribute.py): every validation and test
probability within 0.05 of the single-device run and macro-F1 within 0.03 (summation order moves
the float rounding; measured here: equal to 1e-6). Dropout is off: each replica draws its own
dropout masks for its half of the batch, so with dropout a distributed run is a different random
draw of the same recipe, not the same training. Only the chief writes artefacts; the other worker
exits 0 and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_manifest

ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _band_data(root: Path) -> Path:
    """Kaggle layout, 48 training and 12 test images per class at 32 px: noise plus a bright band at
    one edge whose width is the class, so a frozen random backbone's pooled features separate them
    (tests/tiny_training.py) and the head learns within a few epochs."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from engine.data.synth import CLASSES

    rng = np.random.default_rng(0)
    for split, n in (("Training", 48), ("Testing", 12)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 60, (32, 32, 3)).astype("uint8")
                x[:, :4 + 5 * c] += 150
                Image.fromarray(x).save(root / split / name / f"{i}.png")
    return root


def _manifest(tmp: Path, data: Path, distribute: str) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_training

    backbone = tmp / "tiny.keras"
    if not backbone.exists():
        tiny_training.backbone(seed=4).save(backbone)
    return write_manifest(tmp / f"{distribute}.toml", f"""
[experiment]
name = "mw"
seed = 7
[data]
root = "{data}"
[training]
epochs = 12
batch_size = 16
learning_rate = 0.01
early_stopping_patience = 0
dropout = 0.0
distribute = "{distribute}"
[training.augmentation]
enabled = true
flip = true
rotation = 0.0
shift = 0.0
zoom = 0.0
brightness = 0.0
contrast = 0.0
[[backbones]]
name = "tiny"
file = "tiny.keras"
preprocessing = "unit"
input_size = 32
[backbones.fine_tune]
layers = 4
epochs = 2
learning_rate = 0.005
schedule = "constant"
[gradcam]
images_per_class = 1
check_images = 4
[evaluation]
bootstrap_resamples = 50
[report]
formats = ["html"]
""")


def _cmd(manifest: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "engine.cli", str(manifest), "--output-dir", str(out), "--run-id", "r"]


def _env(tf_config: dict | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _results(run: Path) -> tuple[dict, pd.DataFrame]:
    results = json.loads((run / "results.json").read_text())
    preds = pd.concat([pd.read_csv(p) for p in sorted((run / "predictions").glob("*.csv"))], ignore_index=True)
    return results, preds


@pytest.mark.slow
def test_two_local_workers_match_one_device_and_only_the_chief_writes(tmp_path):
    data = _band_data(tmp_path / "data")
    one = subprocess.run(_cmd(_manifest(tmp_path, data, "none"), tmp_path / "one"), env=_env(None),
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]

    manifest = _manifest(tmp_path, data, "multiworker")
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = [subprocess.Popen(_cmd(manifest, tmp_path / "multi"), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env({"cluster": cluster, "task": {"type": "worker", "index": i}}))
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    chief_out, chief_err = outs[0]
    worker_out, worker_err = outs[1]
    assert "training on CPU" in chief_err and "multiworker, 2 replicas" in chief_err
    assert "this worker is done; the chief writes the run directory" in worker_err
    # Grad-CAM and the report are the chief's alone: the worker's would be thrown away.
    assert "done: Grad-CAM tiny" in chief_err and "report: " in chief_err
    assert "Grad-CAM" not in worker_err and "report: " not in worker_err
    assert chief_out.strip().splitlines()[-1] == str(tmp_path / "multi" / "mw" / "r")
    assert worker_out.strip() == ""
    # The worker's own scratch run is gone: the output root holds the chief's run and nothing else.
    assert sorted(p.name for p in (tmp_path / "multi").iterdir() if p.name != ".cache") == ["mw"]

    r1, p1 = _results(tmp_path / "one" / "mw" / "r")
    r2, p2 = _results(tmp_path / "multi" / "mw" / "r")
    env = r2["environment"]["training"]
    assert (env["distribute"], env["replicas"]) == ("multiworker", 2)
    assert r1["environment"]["training"]["distribute"] == "none"
    b1 = {b["name"]: b for b in r1["backbones"]}
    b2 = {b["name"]: b for b in r2["backbones"]}
    assert b1.keys() == b2.keys() and len(b1) == 2  # frozen head and fine-tuned rows
    for name in b1:
        assert b1[name]["status"] == b2[name]["status"] == "ok"
        for split in ("validation", "test"):
            f1, f2 = b1[name][split]["macro_f1"], b2[name][split]["macro_f1"]
            assert abs(f1 - f2) <= 0.03, (name, split, f1, f2)
    prob = [c for c in p1.columns if c.startswith("prob_")]
    assert prob and len(p1) == len(p2)
    assert np.abs(p1[prob].to_numpy() - p2[prob].to_numpy()).max() < 0.05
    # the runs must have learned something for the match to mean anything
    assert max(b["validation"]["macro_f1"] for b in b1.values()) > 0.5
