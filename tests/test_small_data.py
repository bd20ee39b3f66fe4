"""Small and awkward data (issue 14, items 8 and 9): too few images per class, unreadable and
tiny images at `auditrun evaluate`, tiny classes in the statistics, and sklearn's warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from engine.cli import main

from conftest import REPO, write_manifest

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _tiny_cnn(path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    keras.Model(inp, x).save(path)
    return path


def _manifest(tmp: Path, data: Path) -> Path:
    _tiny_cnn(tmp / "tiny.keras")
    return write_manifest(tmp / "small.toml", f"""
[experiment]
name = "small"
seed = 3
[data]
root = "{data}"
[training]
epochs = 1
[[backbones]]
name = "tiny-cnn"
file = "tiny.keras"
preprocessing = "unit"
input_size = 32
train_backbone = true
[gradcam]
enabled = false
[report]
formats = []
""")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh interpreter: what a user's terminal shows, with
    Python's default warning filters (pytest's own capture would hide a raw warning)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
def test_six_images_per_class_exit_2_naming_class_count_and_minimum(tmp_path):
    from engine.data.synth import write_dataset

    write_dataset(tmp_path / "data", per_class=6, size=32, seed=1)  # 4 training images per class
    proc = _cli(str(_manifest(tmp_path, tmp_path / "data")), "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert ("auditrun: error: class 'glioma' has 4 training images, fewer than the 7 that "
            "data.validation_fraction = 0.15 needs") in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_just_enough_images_run_to_the_end_and_say_what_was_not_measured(tmp_path):
    """9 per class: 2 test, 7 training of which 1 validates. Every stage finishes; the statistics
    that lack images are left out with the reason, never a traceback or a made-up figure."""
    from engine.data.synth import write_dataset

    write_dataset(tmp_path / "data", per_class=9, size=32, seed=1)
    result = CliRunner().invoke(main, [str(_manifest(tmp_path, tmp_path / "data")), "--output-dir",
                                       str(tmp_path / "out"), "--run-id", "r1"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "out" / "small" / "r1"
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["counts"]["val"] == {c: 1 for c in CLASSES}
    assert results["data"]["counts"]["train"] == {c: 6 for c in CLASSES}
    (entry,) = results["backbones"]
    assert entry["status"] == "ok"
    cal = entry["calibration"]
    assert cal["temperature"] is None and cal["not_fitted"].startswith("4 validation images")
    shift = results["integrity"]["shift"]["per_class"]["glioma"]
    assert shift["auc"] is None and "auc not measured: 2 leakage-free test images" in shift["notes"][0]
    assert "shift: not measured for glioma, meningioma, no_tumor, pituitary" in result.output
    assert entry["uncertainty"]["test"]["n_images"] == 8


@pytest.mark.slow
def test_a_tiny_run_lets_no_sklearn_warning_through(tmp_path, monkeypatch):
    """A test split of one class that the model always predicts: sklearn warns "A single label was
    found in 'y_true' and 'y_pred'" in every metric call. None of it may reach the terminal."""
    import shutil
    import warnings

    import engine.training.train
    from engine.data.synth import write_dataset

    write_dataset(tmp_path / "data", per_class=9, size=32, seed=2)
    for folder in ("meningioma_tumor", "no_tumor", "pituitary_tumor"):
        shutil.rmtree(tmp_path / "data" / "Testing" / folder)

    def always_glioma(model, x, tta_flip=False, **_progress):
        probs = np.full((len(x), len(CLASSES)), 0.02, dtype="float32")
        probs[:, 0] = 0.94
        return probs

    monkeypatch.setattr(engine.training.train, "predict", always_glioma)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [str(_manifest(tmp_path, tmp_path / "data")), "--output-dir",
                                           str(tmp_path / "out"), "--run-id", "r1", "--quiet"])
    assert result.exit_code == 0, result.output
    leaked = [f"{w.category.__name__}: {w.message}" for w in caught
              if w.category.__module__.startswith("sklearn") or "sklearn" in w.filename]
    assert leaked == []
    results = json.loads((tmp_path / "out" / "small" / "r1" / "results.json").read_text())
    assert results["backbones"][0]["test"]["accuracy"] == 1.0  # the patched model did run


def test_bootstrap_leaves_out_the_interval_of_a_one_image_class():
    from engine.evaluation.uncertainty import bootstrap_summary

    y_true = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3])  # no_tumor: one image
    y_pred = np.array([0, 0, 1, 1, 1, 0, 2, 3, 0])
    s = bootstrap_summary(y_true, y_pred, CLASSES, n_resamples=200, seed=0)
    one = s["per_class_recall"]["no_tumor"]
    assert one["value"] == 1.0 and one["support"] == 1  # the point value stays
    assert one["ci_low"] is None and one["ci_high"] is None
    assert one["note"] == "1 image: fewer than the 2 a bootstrap interval needs"
    two = s["per_class_recall"]["pituitary"]
    assert two["ci_low"] is not None and "note" not in two
    single = bootstrap_summary(np.array([2]), np.array([2]), CLASSES, n_resamples=50, seed=0)
    assert single["accuracy"]["value"] == 1.0 and single["accuracy"]["ci_low"] is None
    assert single["accuracy"]["note"] and single["macro_f1"]["ci_high"] is None
    json.dumps(s, allow_nan=False)


# --------------------------------------------------------------------------- auditrun evaluate


def _constant_run(run: Path, predicted: int = 0) -> Path:
    """A run directory whose one model answers class ``predicted`` for every image, fast to build
    and with predictions known in advance."""
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    bias = np.full(len(CLASSES), -5.0, dtype="float32")
    bias[predicted] = 5.0
    out = keras.layers.Dense(len(CLASSES), activation="softmax", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(bias))(x)
    (run / "models").mkdir(parents=True)
    keras.Model(inp, out).save(run / "models" / "constant.keras")
    (run / "manifest.toml").write_text("[integrity]\nmin_image_size = 32\n")
    (run / "results.json").write_text(json.dumps({
        "schema_version": 1, "experiment": {"name": "x", "seed": 0},
        "run": {"id": "run", "status": "ok", "started_at": "2026-01-01T00:00:00+00:00"},
        "environment": {}, "best_backbone": None, "timings": {},
        "data": {"class_names": CLASSES},
        "backbones": [{"name": "constant", "status": "ok", "input_size": [32, 32],
                       "test": {"n_images": 0, "accuracy": 0.0, "macro_f1": 0.0, "per_class": {},
                                "confusion_matrix": []},
                       "artifacts": {"model": "models/constant.keras",
                                     "predictions": "predictions/constant.csv"}}]}))
    return run


def _external_folder(root: Path) -> Path:
    """Three good glioma scans, two corrupt files and one 8x8 image."""
    rng = np.random.default_rng(0)
    for i in range(3):
        (root / "glioma").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / "glioma" / f"scan {i}.png")
    (root / "glioma" / "truncated.png").write_bytes((root / "glioma" / "scan 0.png").read_bytes()[:200])
    (root / "meningioma").mkdir()
    (root / "meningioma" / "notes.jpg").write_text("not an image")
    Image.new("L", (8, 8), 90).save(root / "meningioma" / "thumb.png")
    return root


@pytest.mark.slow
def test_evaluate_skips_and_lists_every_unusable_image_and_scores_the_rest(tmp_path):
    run = _constant_run(tmp_path / "run")
    folder = _external_folder(tmp_path / "ext")
    proc = _cli("evaluate", str(run), "--data", str(folder), "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    reasons = {s["path"]: s["reason"] for s in out["skipped"]}
    assert set(reasons) == {"glioma/truncated.png", "meningioma/notes.jpg", "meningioma/thumb.png"}
    assert reasons["meningioma/thumb.png"] == "image is 8x8 px, smaller than integrity.min_image_size = 32"
    for path in reasons:
        assert f"auditrun: warning: skipped image {path}: " in proc.stderr  # even with --quiet
    (b,) = out["backbones"]
    assert b["n_images"] == 3 and b["accuracy"] == 1.0
    assert out["counts"] == {"glioma": 3, "meningioma": 0, "no_tumor": 0, "pituitary": 0}
    stored = json.loads(next((run / "external").glob("ext-*.json")).read_text())
    assert stored["skipped"] == out["skipped"]
    assert json.loads((run / "results.json").read_text())["external"][-1]["skipped"] == out["skipped"]
    # Every evaluated image is glioma and predicted glioma: sklearn warns "A single label was found
    # in 'y_true' and 'y_pred'" inside the metrics. The terminal must not show it.
    assert "Warning" not in proc.stderr and "sklearn" not in proc.stderr, proc.stderr


def test_evaluate_with_no_usable_image_is_an_input_error(tmp_path):
    run = _constant_run(tmp_path / "run")
    (tmp_path / "ext" / "glioma").mkdir(parents=True)
    Image.new("L", (1, 1)).save(tmp_path / "ext" / "glioma" / "dot.png")
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(tmp_path / "ext")])
    assert result.exit_code == 2
    assert "none of its 1 images can be used; first: glioma/dot.png: image is 1x1 px" in result.output


def test_hold_back_keeps_sklearn_warnings_and_passes_the_rest_on(recwarn):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from engine.sklearn_warnings import hold_back

    with hold_back() as caught:
        warnings.warn("did not converge", ConvergenceWarning)
        warnings.warn("did not converge", ConvergenceWarning)  # kept once
        warnings.warn("not sklearn's business", RuntimeWarning)
    assert caught == ["ConvergenceWarning: did not converge"]
    assert [str(w.message) for w in recwarn] == ["not sklearn's business"]
    with pytest.raises(ValueError), hold_back() as caught:  # an error inside still fills the list
        warnings.warn("before the error", ConvergenceWarning)
        raise ValueError
    assert caught == ["ConvergenceWarning: before the error"]


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_predicts_with_the_runs_tta_setting(tmp_path, monkeypatch, tta):
    """External validation scores the models as the run did: flip TTA when its manifest says so."""
    import engine.training.train
    from engine.workflows.evaluate import evaluate_external

    run = _constant_run(tmp_path / "run")
    (run / "manifest.toml").write_text(f"[evaluation]\ntta_flip = {str(tta).lower()}\n")
    seen = []
    real = engine.training.train.predict

    def spy(model, x, **kwargs):
        seen.append(kwargs.get("tta_flip"))
        return real(model, x, **kwargs)

    monkeypatch.setattr(engine.training.train, "predict", spy)
    evaluate_external(run, _external_folder(tmp_path / "ext"))
    assert seen == [tta]
