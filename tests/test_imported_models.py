"""Issue 19: auditing classifiers trained elsewhere ([[models]]: .keras, SavedModel, ONNX).

One tiny CNN is trained by an audit, exported to the three formats (and, by hand, to an ONNX graph
that takes NCHW input with torchvision's ImageNet normalisation and outputs log-probabilities in
its own class order, as a PyTorch export from another project would), then audited again beside
the trained backbone from one manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import assert_reads_back_unchanged, write_manifest, trains
from engine.cli import main
from test_audit_e2e import tiny_backbone

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
#: The hand-written "foreign" model's output order, with another project's class names.
FOREIGN_ORDER = ["notumor", "glioma", "pituitary", "meningioma"]
TORCH_MEAN, TORCH_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

BACKBONE = """
[[backbones]]
name = "tiny-cnn"
file = "tiny.keras"
preprocessing = "tf"
input_size = 32
train_backbone = true
"""


def _head(tmp: Path, root: Path, name: str, gradcam: bool = False, formats: str = "[]") -> str:
    return f"""
[experiment]
name = "{name}"
seed = 7
[data]
root = "{root}"
[training]
epochs = 8
batch_size = 16
learning_rate = 0.003
[integrity]
shift = false
[gradcam]
enabled = {str(gradcam).lower()}
images_per_class = 1
max_pointing_images = 8
[evaluation]
bootstrap_resamples = 50
[report]
formats = {formats}
"""


def _model(name: str, file: str, **keys) -> str:
    lines = [f'[[models]]', f'name = "{name}"', f'file = "{file}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def _audit(tmp: Path, manifest_text: str, run_id: str, name: str = "m.toml"):
    manifest = write_manifest(tmp / name, manifest_text)
    return CliRunner().invoke(main, [str(manifest), "--output-dir", str(tmp / "out"), "--run-id", run_id, "--quiet"])


def foreign_onnx(exported: Path, out: Path, extra_outputs: int = 0) -> Path:
    """The Keras export (NHWC, 0..255 in, probabilities out) wrapped as another project's model:
    NCHW input normalised as torchvision does, log-probabilities out in FOREIGN_ORDER (plus
    ``extra_outputs`` surplus columns, for the width check)."""
    from onnx import TensorProto, helper, numpy_helper

    g = onnx.load(str(exported)).graph
    old_in, old_out = g.input[0].name, g.output[0].name
    size = g.input[0].type.tensor_type.shape.dim[1].dim_value
    order = [CLASSES.index({"notumor": "no_tumor"}.get(c, c)) for c in FOREIGN_ORDER] + [0] * extra_outputs
    inits = [numpy_helper.from_array((TORCH_STD * 255).astype(np.float32).reshape(1, 3, 1, 1), "std255"),
             numpy_helper.from_array((TORCH_MEAN * 255).astype(np.float32).reshape(1, 3, 1, 1), "mean255"),
             numpy_helper.from_array(np.array(order, np.int64), "order")]
    pre = [helper.make_node("Mul", ["pixels", "std255"], ["scaled"]),
           helper.make_node("Add", ["scaled", "mean255"], ["raw"]),
           helper.make_node("Transpose", ["raw"], [old_in], perm=[0, 2, 3, 1])]
    post = [helper.make_node("Gather", [old_out, "order"], ["reordered"], axis=1),
            helper.make_node("Log", ["reordered"], ["log_probs"])]
    graph = helper.make_graph(
        pre + list(g.node) + post, "foreign", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                              ["batch", 3, size, size])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["batch", len(order)])],
        initializer=list(g.initializer) + inits)
    model = helper.make_model(graph, opset_imports=onnx.load(str(exported)).opset_import)
    model.ir_version = onnx.load(str(exported)).ir_version
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
@trains
def exported(tmp_path_factory):
    """A trained tiny CNN (audit "train") and its exports: .keras, SavedModel, ONNX, foreign ONNX."""
    import keras

    from engine.data.synth import write_dataset
    from engine.training.backbones import load_saved_model

    tmp = tmp_path_factory.mktemp("imported")
    root = tmp / "data"
    write_dataset(root, per_class=30, size=32, seed=3)
    tiny_backbone(tmp / "tiny.keras")
    result = _audit(tmp, _head(tmp, root, "train") + BACKBONE, "a", "train.toml")
    assert result.exit_code == 0, result.output
    model = load_saved_model(tmp / "out" / "train" / "a" / "models" / "tiny-cnn.keras")
    model.save(tmp / "exp.keras")
    model.export(str(tmp / "exp_savedmodel"), format="tf_saved_model", verbose=False)
    model.export(str(tmp / "exp.onnx"), format="onnx", verbose=False)
    foreign_onnx(tmp / "exp.onnx", tmp / "foreign.onnx")
    foreign_onnx(tmp / "exp.onnx", tmp / "wide.onnx", extra_outputs=1)
    keras.backend.clear_session()
    return tmp, root


@pytest.fixture(scope="module")
@trains
def audit(exported):
    """The trained backbone beside its four exports and one export with the wrong preprocessing."""
    tmp, root = exported
    text = (_head(tmp, root, "all", gradcam=True, formats='["html"]') + BACKBONE
            + _model("as-keras", "exp.keras", preprocess="none", class_order=CLASSES)
            + _model("as-savedmodel", "exp_savedmodel", preprocess="none", class_order=CLASSES, input_size=32)
            + _model("as-onnx", "exp.onnx", preprocess="none", class_order=CLASSES)
            + _model("foreign", "foreign.onnx", preprocess="imagenet_torch", layout="nchw", output="logits",
                     class_order=FOREIGN_ORDER)
            + _model("wrong-preprocess", "exp.onnx", preprocess="unit", class_order=CLASSES))
    result = _audit(tmp, text, "b", "all.toml")
    assert result.exit_code == 0, result.output
    run = tmp / "out" / "all" / "b"
    from engine.results import read_results

    return run, read_results(run), result.output


def _probs(run: Path, name: str) -> np.ndarray:
    import pandas as pd

    frame = pd.read_csv(run / "predictions" / f"{name}.csv")
    return frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()


def test_every_format_predicts_as_the_trained_backbone(audit):
    run, results, _ = audit
    entries = {e["name"]: e for e in results["backbones"]}
    assert [entries[n]["source"] for n in ("as-keras", "as-savedmodel", "as-onnx", "foreign")] == ["imported"] * 4
    trained = _probs(run, "tiny-cnn")
    assert trained.shape[1] == 4 and len(trained) > 10
    for name in ("as-keras", "as-savedmodel", "as-onnx", "foreign"):
        np.testing.assert_allclose(_probs(run, name), trained, atol=2e-4, err_msg=name)
        for key in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert entries[name]["test"][key] == entries["tiny-cnn"]["test"][key], (name, key)
        assert entries[name]["calibration"]["temperature"] == pytest.approx(
            entries["tiny-cnn"]["calibration"]["temperature"], abs=0.02)
        assert entries[name]["uncertainty"]["test"]
    pairs = {(c["a"], c["b"]) for c in results["comparisons"]} | {(c["b"], c["a"]) for c in results["comparisons"]}
    assert ("tiny-cnn", "foreign") in pairs


def test_each_model_has_a_gallery_named_by_its_method(audit):
    run, results, _ = audit
    entries = {e["name"]: e for e in results["backbones"]}
    expected = {"as-keras": "gradcam", "as-savedmodel": "occlusion", "as-onnx": "occlusion", "foreign": "occlusion"}
    for name, method in expected.items():
        block = entries[name]["gradcam"]
        assert "error" not in block, block
        assert entries[name]["explanation_method"] == method and block["method"] == method
        assert block["items"], name
        for item in block["items"]:
            assert (run / item["files"]["overlay"]).is_file()
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "Occlusion sensitivity heatmap of foreign" in html
    assert "Grad-CAM heatmap of as-keras" in html
    assert "Its training data is unknown" in html


def test_the_same_maps_from_onnx_and_keras_occlusion(exported, audit):
    """Occlusion through ONNX and through the .keras file of the same network give the same maps."""
    from engine.explain.agnostic import occlusion_maps
    from engine.manifest import ModelConfig, folder_aliases
    from engine.training.imported import load_imported

    tmp, _ = exported
    aliases = folder_aliases(CLASSES, {})
    a = load_imported(ModelConfig(name="k", file=tmp / "exp.keras", preprocess="none", class_order=CLASSES),
                      CLASSES, aliases)
    b = load_imported(ModelConfig(name="f", file=tmp / "foreign.onnx", preprocess="imagenet_torch",
                                  output="logits", class_order=FOREIGN_ORDER), CLASSES, aliases)
    assert b.layout == "nchw" and b.input_size == 32  # read from the model
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(occlusion_maps(a.class_score, x, [0, 2]), occlusion_maps(b.class_score, x, [0, 2]),
                               atol=1e-3)


def test_wrong_preprocess_is_flagged_at_the_top_of_its_section(audit):
    run, results, output = audit
    entries = {e["name"]: e for e in results["backbones"]}
    warnings = entries["wrong-preprocess"]["imported"]["warnings"]
    assert any("check `preprocess`: predictions collapse to one class" in w for w in warnings), warnings
    assert not entries["as-onnx"]["imported"]["warnings"]
    html = (run / "report.html").read_text(encoding="utf-8")
    section = html[html.index('id="bb-wrong-preprocess-metrics"'):]
    assert section.index("predictions collapse to one class") < section.index("<table")


def test_evaluate_scores_imported_models_on_another_folder(exported, audit):
    tmp, root = exported
    run, _, _ = audit
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(root / "Testing"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    acc = {b["name"]: b["accuracy"] for b in report["backbones"]}
    assert acc["foreign"] == acc["tiny-cnn"] == acc["as-savedmodel"]


def test_a_manifest_with_only_models_audits_without_training(exported):
    tmp, root = exported
    text = _head(tmp, root, "only") + _model("foreign", "foreign.onnx", preprocess="imagenet_torch",
                                            output="logits", class_order=FOREIGN_ORDER)
    result = _audit(tmp, text, "c", "only.toml")
    assert result.exit_code == 0, result.output
    run = tmp / "out" / "only" / "c"
    assert not (run / "models").exists()
    from engine.results import read_results

    (entry,) = read_results(run)["backbones"]
    assert entry["source"] == "imported" and entry["test"]["accuracy"] > 0.5
    assert entry["imported"]["training_data"] == "unknown"


@pytest.mark.parametrize("file, order, message", [
    ("foreign.onnx", ["notumor", "glioma", "pituitary", "astrocytoma"], "'astrocytoma', a class the data does not have"),
    ("wide.onnx", FOREIGN_ORDER, "outputs 5 scores per image, but class_order names 4"),
])
def test_a_model_that_does_not_fit_the_data_exits_2(exported, file, order, message):
    tmp, root = exported
    text = _head(tmp, root, "bad") + _model("theirs", file, preprocess="imagenet_torch", output="logits",
                                           class_order=order)
    result = _audit(tmp, text, f"bad-{file}", "bad.toml")
    assert result.exit_code == 2, result.output
    assert "model 'theirs'" in result.output and message in result.output


def test_a_data_root_with_only_a_test_folder_audits_imported_models(exported):
    """Another project's model on a test set alone: no training folder, no validation split."""
    import shutil

    tmp, root = exported
    test_only = tmp / "test-only"
    shutil.copytree(root / "Testing", test_only / "Testing")
    text = _head(tmp, test_only, "testonly") + _model("foreign", "foreign.onnx", preprocess="imagenet_torch",
                                                     output="logits", class_order=FOREIGN_ORDER)
    result = _audit(tmp, text, "d", "testonly.toml")
    assert result.exit_code == 0, result.output
    from engine.results import read_results

    results = read_results(tmp / "out" / "testonly" / "d")
    (entry,) = results["backbones"]
    assert results["data"]["counts"]["train"] == {} or sum(results["data"]["counts"]["train"].values()) == 0
    assert entry["test"]["n_images"] == sum(1 for p in (root / "Testing").rglob("*.png"))
    assert "calibration" not in entry  # no validation split to fit a temperature on


@pytest.mark.parametrize("preset, mode", [("imagenet_caffe", "caffe"), ("imagenet_torch", "torch"),
                                          ("minus_one_one", "tf")])
def test_preprocess_presets_match_keras_applications(preset, mode):
    from keras.applications.imagenet_utils import preprocess_input

    from engine.manifest import ModelConfig
    from engine.training.imported import scaling_of

    x = np.random.default_rng(1).integers(0, 256, (2, 5, 5, 3)).astype(np.float32)
    scaling, name = scaling_of(ModelConfig(name="m", preprocess=preset))
    assert name == preset
    np.testing.assert_allclose(scaling.apply(x), preprocess_input(x.copy(), mode=mode), rtol=1e-5, atol=1e-4)


def test_an_onnx_model_without_onnxruntime_names_the_install_command(exported, monkeypatch):
    import sys

    from engine.errors import InputError
    from engine.manifest import ModelConfig, folder_aliases
    from engine.training.imported import load_imported

    tmp, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when it is not installed
    with pytest.raises(InputError, match=r"model 'x'.*pip install 'auditrun\[onnx\]'"):
        load_imported(ModelConfig(name="x", file=tmp / "exp.onnx", preprocess="none", class_order=CLASSES),
                      CLASSES, folder_aliases(CLASSES, {}))


def test_imported_entries_read_into_the_typed_tree_unchanged(audit):
    _, results, _ = audit
    typed = assert_reads_back_unchanged(results)
    imported = [b for b in typed.backbones if b.source == "imported"]
    assert imported and all(b.imported is not None and b.imported.class_order for b in imported)
