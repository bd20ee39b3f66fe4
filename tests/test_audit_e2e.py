"""End to end: a real (tiny) audit on synthetic phantoms through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from engine.cli import main

from conftest import LITE0, assert_reads_back_unchanged, needs_lite0, needs_poppler, write_manifest, trains


def tiny_backbone(path: Path, size: int = 64) -> Path:
    """A small CNN feature extractor saved as a .keras file: the user-supplied-backbone path."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = inp
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="last_conv")(x)
    keras.Model(inp, x, name="tiny").save(path)
    return path


#: Manifest block for the CNN that ``tiny_backbone`` saves as tiny.keras, trained end to end. Inputs are
#: centred ("tf": -1..1): with 0..1 ("unit") the CNN from scratch sat on the loss plateau at ln 4 until early
#: stopping on 2 of 4 seeds tried (test accuracy 0.25, chance); centred, seeds 2-5 and 11 reached 0.98-1.00.
TINY_BACKBONE_TOML = """
[[backbones]]
name = "tiny-cnn"
file = "tiny.keras"
preprocessing = "tf"
input_size = 64
train_backbone = true
"""


def _backbone_block(tmp: Path) -> str:
    """Lite0 (pretrained, offline file) when present; else a tiny CNN trained from scratch."""
    if LITE0.is_file():
        return f"""
[[backbones]]
name = "lite0"
file = "{LITE0}"
input_size = 96
"""
    tiny_backbone(tmp / "tiny.keras")
    return TINY_BACKBONE_TOML


@pytest.fixture(scope="module")
@trains
def smoke_run(synth_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "bad.keras").write_bytes(b"this is not a keras archive")
    manifest = write_manifest(tmp / "audit.toml", f"""
[experiment]
name = "e2e"
seed = 11
[data]
root = "{synth_root}"
[training]
epochs = 30
learning_rate = 0.003
early_stopping_patience = 6
{_backbone_block(tmp)}
[[backbones]]
name = "broken"
file = "bad.keras"
input_size = 64
[gradcam]
images_per_class = 1
[report]
formats = ["html", "pdf"]
""")
    result = CliRunner().invoke(main, [str(manifest), "--output-dir", str(tmp / "out"), "--run-id", "r1", "--quiet"])
    return tmp, result


def test_broken_backbone_fails_the_built_in_gate_and_run_dir_is_printed_last(smoke_run):
    tmp, result = smoke_run
    # The planted broken.keras must not pass as success: the run completes, then exits 1.
    assert result.exit_code == 1, result.output
    assert "FAIL all_backbones_finished" in result.stderr and "broken" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(tmp / "out" / "e2e" / "r1")


def test_results_match_predictions_and_model_learns(smoke_run):
    tmp, _ = smoke_run
    run = tmp / "out" / "e2e" / "r1"
    results = json.loads((run / "results.json").read_text())
    ok = [b for b in results["backbones"] if b["status"] == "ok"]
    assert len(ok) == 1
    for b in ok:
        df = pd.read_csv(run / b["artifacts"]["predictions"])
        assert len(df) == results["data"]["counts"]["test"]["glioma"] * 4
        assert b["test"]["accuracy"] == pytest.approx((df.true_class == df.predicted_class).mean(), abs=1e-6)  # stored to 6 places
        probs = df[[f"prob_{c}" for c in results["data"]["class_names"]]].to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-4)
        assert (run / b["artifacts"]["model"]).is_file()
        assert b["history"] and b["history"][0]["stage"] == "head"
    best = max(ok, key=lambda b: b["test"]["accuracy"])
    if best["name"] == "lite0":
        assert best["test"]["accuracy"] >= 0.9  # chance is 0.25
    else:
        # The tiny CNN trained from scratch (no Lite0 file; AUDITRUN_TEST_LITE0=/missing runs this branch).
        # Chance is 0.25 (4 balanced test classes; predicting one class for all scores 0.25 too). Measured
        # with this manifest: 1.00 (seed 11); seeds 2-5: 0.98-1.00. 0.8 is far above chance and leaves room
        # for another CPU's numerics; a model that learned nothing, or little, fails it.
        assert best["test"]["accuracy"] >= 0.8, f"tiny CNN reached only {best['test']['accuracy']:.2f} (chance 0.25)"
    assert results["best_backbone"]["name"] == best["name"]
    assert results["run"]["status"] == "partial"
    assert (run / "manifest.toml").is_file()


def test_shift_check_finds_no_shift_within_one_generator(smoke_run):
    from engine.integrity.shift import MIN_IMAGES

    tmp, _ = smoke_run
    run = tmp / "out" / "e2e" / "r1"
    results = json.loads((run / "results.json").read_text())
    shift = results["integrity"]["shift"]
    assert list(shift["per_class"]) == results["data"]["class_names"] and shift["seed"] == 11
    for entry in shift["per_class"].values():
        # train and test phantoms come from the same generator: no class may look shifted
        assert entry["n_test"] >= MIN_IMAGES and 0.0 <= entry["auc"] < 0.8
        assert entry["control_auc"] is None if entry["n_validation"] < MIN_IMAGES else entry["control_auc"] < 0.8
    assert "Are the leakage-free test images like the training images?" in (run / "report.html").read_text()


def test_failed_backbone_is_recorded_with_its_error(smoke_run):
    tmp, _ = smoke_run
    results = json.loads((tmp / "out" / "e2e" / "r1" / "results.json").read_text())
    broken = next(b for b in results["backbones"] if b["name"] == "broken")
    assert broken["status"] == "failed" and "bad.keras" in broken["error"]


@needs_lite0
@pytest.mark.slow
def test_keras_file_backbone_lite0(tmp_path):
    """The offline ImageNet Lite0 file loads as a backbone and its features separate phantoms."""
    from engine.training.backbones import build_classifier, load_backbone
    from engine.manifest import BackboneConfig

    cfg = BackboneConfig(name="lite0", file=LITE0, input_size=64)
    loaded = load_backbone(cfg)
    assert loaded.weights_used == "file" and loaded.preprocessing == "none"
    model = build_classifier(loaded.model, loaded.preprocessing, 64, 4)
    assert model.get_layer("backbone").output.shape[-1] == 1280
    assert model.output_shape == (None, 4)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    p = model.predict(x, verbose=0)
    assert np.allclose(p.sum(1), 1, atol=1e-5)


def test_report_is_accessible_and_complete(smoke_run):
    from html.parser import HTMLParser

    tmp, _ = smoke_run
    run = tmp / "out" / "e2e" / "r1"
    html = (run / "report.html").read_text()

    class Imgs(HTMLParser):
        alts: list = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.alts.append(dict(attrs).get("alt", ""))

    parser = Imgs()
    parser.feed(html)
    assert len(parser.alts) >= 4 and all(a.strip() for a in parser.alts)
    results = json.loads((run / "results.json").read_text())
    ok = next(b for b in results["backbones"] if b["status"] == "ok")
    assert ok["gradcam"]["items"] and ok["localisation"][0]["total"] > 0 and "pointing_game" not in ok["gradcam"]
    # the validation split is scored too (every tumour image of the phantoms has a box)
    val_game = ok["gradcam"]["pointing_game_validation"]
    val_counts = results["data"]["counts"]["val"]
    assert val_game["total"] == sum(n for c, n in val_counts.items() if c != "no_tumor")
    assert f"inside the outline on {val_game['hits']} of {val_game['total']}" in html
    for item in ok["gradcam"]["items"]:
        assert all((run / f).is_file() for f in item["files"].values())
    assert "Grad-CAM" in html and ok["display_name"] in html
    assert (run / "report.pdf").read_bytes().startswith(b"%PDF")


@needs_poppler
def test_report_pdf_is_tagged(smoke_run):
    # mutation seen to fail: report.render_pdf `pdf_variant="pdf/ua-1"` -> `pdf_variant=None`
    import subprocess

    tmp, _ = smoke_run
    info = subprocess.run(["pdfinfo", str(tmp / "out" / "e2e" / "r1" / "report.pdf")], capture_output=True,
                          text=True, check=True).stdout
    assert "Tagged:          yes" in info, info


@needs_poppler
def test_report_pdf_has_the_confusion_matrix_and_grad_cam_sections(smoke_run):
    # mutation seen to fail: report.render_report `render_pdf(html, run_dir)` -> `render_pdf("<p>x</p>", run_dir)`
    import subprocess

    tmp, _ = smoke_run
    run = tmp / "out" / "e2e" / "r1"
    ok = next(b for b in json.loads((run / "results.json").read_text())["backbones"] if b["status"] == "ok")
    text = subprocess.run(["pdftotext", str(run / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "Confusion" in text and "Grad-CAM" in text and ok["display_name"] in text


def test_render_reproduces_report_without_models(smoke_run, tmp_path):
    import shutil
    import subprocess
    import sys

    tmp, _ = smoke_run
    copy = tmp_path / "copied-run"
    shutil.copytree(tmp / "out" / "e2e" / "r1", copy)
    shutil.rmtree(copy / "models")
    (copy / "report.html").unlink()
    (copy / "report.pdf").unlink()
    # a fresh interpreter, so we can see that rendering never imports TensorFlow
    code = ("import sys; from engine.cli import main; sys.argv=['auditrun','render',sys.argv[1]];"
            "\ntry:\n main()\nexcept SystemExit as e:\n assert not e.code, e.code\n"
            "assert 'tensorflow' not in sys.modules, 'render imported tensorflow'")
    proc = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "report.html").is_file() and (copy / "report.pdf").is_file()


def test_evaluate_external_folder_with_boxes(smoke_run, tmp_path):
    """`auditrun evaluate` scores the saved models on another labelled folder, with the pointing game."""
    from engine.data.synth import write_dataset

    tmp, _ = smoke_run
    run = tmp / "out" / "e2e" / "r1"
    write_dataset(tmp_path / "ext", per_class=8, size=80, seed=99, test_fraction=0.5, kaggle_names=False)
    folder = tmp_path / "ext" / "Testing"  # glioma/, meningioma/, no_tumor/, pituitary/ + YOLO boxes
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(folder), "--quiet"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    (b,) = out["backbones"]
    assert b["n_images"] == 16 and len(b["confusion_matrix"]) == 4
    assert sum(map(sum, b["confusion_matrix"])) == 16
    assert {"accuracy", "balanced_accuracy", "macro_f1", "per_class"} <= set(b)
    # every tumour image has a box; no_tumor has none: one localisation per method, no second pointing game
    assert [loc["total"] for loc in b["localisation"]] == [12] and "pointing_game" not in b
    assert out["annotations"]["annotated"] == 12 and out["annotations"]["problems"] == []
    stored = json.loads((run / "results.json").read_text())["external"]
    assert stored[-1]["backbones"][0]["accuracy"] == b["accuracy"]
    assert CliRunner().invoke(main, ["render", str(run), "--format", "html"]).exit_code == 0
    assert "External validation" in (run / "report.html").read_text()


def test_evaluate_explains_with_the_layer_the_run_used(smoke_run, tmp_path):
    """The pointing game of `evaluate` uses the Grad-CAM layer recorded in the run, not a default."""
    import shutil

    from engine.data.synth import write_dataset

    tmp, _ = smoke_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "out" / "e2e" / "r1", run)
    results = json.loads((run / "results.json").read_text())
    ok = next(b for b in results["backbones"] if b["status"] == "ok")
    ok["gradcam"]["layer"] = "no_such_layer"
    (run / "results.json").write_text(json.dumps(results))
    write_dataset(tmp_path / "ext", per_class=4, size=64, seed=5, test_fraction=0.5, kaggle_names=False)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(tmp_path / "ext" / "Testing"), "--quiet"])
    assert result.exit_code == 2 and "'no_such_layer' does not exist" in result.output


def test_evaluate_rejects_unknown_backbone(smoke_run, tmp_path):
    tmp, _ = smoke_run
    (tmp_path / "glioma").mkdir()
    result = CliRunner().invoke(main, ["evaluate", str(tmp / "out" / "e2e" / "r1"), "--data", str(tmp_path),
                                       "--backbone", "nope"])
    assert result.exit_code == 2 and "nope" in result.output


def test_results_json_of_a_real_run_reads_into_the_typed_tree_unchanged(smoke_run):
    tmp, _ = smoke_run
    typed = assert_reads_back_unchanged(json.loads((tmp / "out" / "e2e" / "r1" / "results.json").read_text()))
    assert [b.status for b in typed.backbones] == ["ok", "failed"] and typed.gates.summary.FAIL >= 1
