"""Pipeline behaviour the shipped manifests rely on (issue 15): fine-tuning, the validation tie-break,
``reuse = "if-unchanged"``, flip TTA, ``keep_last`` pruning during a run, ``render`` reproducing the
run's report byte for byte, and atomic report writes.

One experiment serves most tests: three runs of a tiny CNN (with a BatchNormalization layer) on
32-px phantoms, 1 head epoch + 1 fine-tune epoch each, with a fixed clock per run:

1. trains ``tiny`` and its fine-tuned twin ``tiny_ft``;
2. the same manifest, data and code: ``reuse = "if-unchanged"`` must reuse run 1's models (training
   is patched to raise);
3. a changed manifest: retrains; ``keep_last = 2`` then deletes run 1.

Each test below names, in a comment, the one-line mutation of the engine it was seen to catch.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import write_manifest, trains

CLOCKS = [datetime(2026, 3, day, 2, 0, tzinfo=timezone.utc) for day in (1, 2, 3)]
RUN_IDS = [c.strftime("%Y%m%dT%H%M%SZ") for c in CLOCKS]
#: Backbone layers, bottom to top. ``[backbones.fine_tune] layers = 2`` picks the top two: "bn" (kept
#: frozen by the engine) and "last_conv" (the one layer that trains).
FROZEN_LAYERS = ("conv_a", "conv_b")
UNFROZEN_LAYERS = ("last_conv",)


def bn_backbone(path: Path) -> Path:
    """A tiny CNN feature extractor with a BatchNormalization layer whose moving statistics are not the
    defaults (so a BN layer that updated them, or was reset, would show)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inp)
    x = keras.layers.MaxPooling2D(name="pool_a")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_b")(x)
    bn = keras.layers.BatchNormalization(name="bn")
    x = bn(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(x)
    model = keras.Model(inp, x, name="tiny_bn")
    rng = np.random.default_rng(0)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, rng.uniform(0.0, 0.5, mean.shape).astype("float32"),
                    rng.uniform(0.5, 2.0, var.shape).astype("float32")])
    model.save(path)
    return path


def scenario_manifest(assets: Path, *, description: str = "") -> str:
    return f"""
[experiment]
name = "behaviour"
description = "{description}"
seed = 5
reuse = "if-unchanged"
keep_last = 2
[data]
root = "{assets / 'data'}"
[training]
epochs = 1
batch_size = 8
learning_rate = 0.003
[[backbones]]
name = "tiny"
file = "{assets / 'tiny_bn.keras'}"
preprocessing = "unit"
input_size = 32
[backbones.fine_tune]
layers = 2
epochs = 1
learning_rate = 0.001
[gradcam]
enabled = false
[evaluation]
bootstrap_resamples = 50
tta_flip = true
[integrity]
shift = false
[report]
formats = ["html"]
"""


@pytest.fixture(scope="module")
@trains
def scenario(tmp_path_factory):
    from engine import manifest as manifest_mod
    from engine.pipeline import run_audit
    from engine.data.synth import write_dataset

    assets = tmp_path_factory.mktemp("behaviour")
    write_dataset(assets / "data", per_class=16, size=32, seed=1)
    bn_backbone(assets / "tiny_bn.keras")
    out = assets / "out"
    runs = []

    def run(i: int, text: str, mp: pytest.MonkeyPatch | None = None):
        path = write_manifest(assets / f"run{i}.toml", text)
        log: list[str] = []
        outcome = run_audit(manifest_mod.load(path), output_dir=out, echo=log.append, now=lambda: CLOCKS[i])
        results = json.loads((outcome.run_dir / "results.json").read_text(encoding="utf-8"))
        # the experiment folder right after the run, and a copy of the run folder (run 3 deletes run 1)
        listing = sorted(p.name for p in (out / "behaviour").iterdir())
        kept = shutil.copytree(outcome.run_dir, assets / "kept" / outcome.run_dir.name)
        runs.append({"outcome": outcome, "dir": kept, "log": log, "results": results, "listing": listing,
                     "report": (outcome.run_dir / "report.html").read_bytes()})

    run(0, scenario_manifest(assets))
    with pytest.MonkeyPatch.context() as mp:
        def no_training(*_a, **_k):
            raise AssertionError("run 2 trained although manifest, data and code were unchanged")

        mp.setattr("engine.training.train.train_head", no_training)
        mp.setattr("engine.training.train.fine_tune", no_training)
        run(1, scenario_manifest(assets))
    run(2, scenario_manifest(assets, description="changed"))  # a changed manifest
    return {"assets": assets, "exp_dir": out / "behaviour", "runs": runs}


def _load(path: Path):
    from engine.training.backbones import load_saved_model

    return load_saved_model(path)


def _backbone_weights(model) -> dict[str, list[np.ndarray]]:
    backbone = model.get_layer("backbone")
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in backbone.layers if layer.weights}


# ------------------------------------------------------------------------------------------------
# 1. Fine-tuning


def test_fine_tune_adds_a_ft_row_trained_in_two_stages(scenario):
    # mutation seen to fail: pipeline.train_backbone `ft = fine_tune_cfg or cfg.fine_tune` -> `ft = fine_tune_cfg`
    # (no tiny_ft row)
    first = scenario["runs"][0]
    results = first["results"]
    assert first["outcome"].status == "ok"
    by_name = {e["name"]: e for e in results["backbones"]}
    assert list(by_name) == ["tiny", "tiny_ft"]
    ft = by_name["tiny_ft"]
    assert ft["status"] == "ok" and ft["fine_tuned_from"] == "tiny"
    assert ft["display_name"] == "tiny (fine-tuned)"
    assert [s["name"] for s in ft["stages"]] == ["head", "fine_tune"]
    assert [h["stage"] for h in ft["history"]] == ["head", "fine_tune"]  # 1 epoch each
    assert ft["test"]["accuracy"] is not None and ft["validation"]["macro_f1"] is not None
    assert ft["artifacts"]["model"] == "models/tiny_ft.keras"
    assert ft["parameters"]["trainable"] < by_name["tiny"]["parameters"]["total"]  # not everything unfrozen
    assert "tiny_ft: fine-tuning 1 backbone layers" in "\n".join(first["log"])


def test_fine_tune_changes_only_the_unfrozen_layers_and_keeps_batchnorm_frozen(scenario):
    # mutations seen to fail: backbones.set_backbone_trainable `chosen = layers[len(layers) - top_layers:]`
    # -> `chosen = layers` (conv_a, conv_b change); deleting its `continue` for BatchNormalization (bn's
    # gamma/beta and moving statistics change)
    run_dir = scenario["runs"][0]["dir"]
    frozen = _backbone_weights(_load(run_dir / "models" / "tiny.keras"))
    tuned = _backbone_weights(_load(run_dir / "models" / "tiny_ft.keras"))
    original = _backbone_weights_of_file(scenario["assets"] / "tiny_bn.keras")
    assert set(frozen) == set(tuned) == {"conv_a", "conv_b", "bn", "last_conv"}
    # BatchNormalization stays frozen: moving statistics first (what a BN layer in training mode updates),
    # then gamma and beta
    for i, what in ((2, "moving mean"), (3, "moving variance"), (0, "gamma"), (1, "beta")):
        np.testing.assert_array_equal(frozen["bn"][i], tuned["bn"][i], err_msg=f"BatchNorm {what} changed")
    for name in FROZEN_LAYERS:
        for a, b in zip(frozen[name], tuned[name]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} changed although frozen")
    for name in UNFROZEN_LAYERS:
        kernel_change = np.abs(tuned[name][0] - frozen[name][0]).max()
        assert kernel_change > 1e-6, f"{name} did not train in the fine-tune stage"
    # the head stage kept the backbone frozen, so the frozen model's backbone is the file's, BN statistics too
    for name, weights in original.items():
        for a, b in zip(weights, frozen[name]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} changed in the head stage")
    _, _, moving_mean, moving_var = tuned["bn"]
    assert not np.allclose(moving_mean, 0) and not np.allclose(moving_var, 1)  # the planted statistics


def _backbone_weights_of_file(path: Path) -> dict[str, list[np.ndarray]]:
    model = _load(path)
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


# ------------------------------------------------------------------------------------------------
# 2. select_best: the validation tie-break


def _entry(name, f1, acc, loss, status="ok"):
    return {"name": name, "status": status,
            "validation": {"macro_f1": f1, "accuracy": acc, "log_loss": loss}}


def test_select_best_prefers_higher_validation_macro_f1():
    from engine.evaluation.selection import select_best

    entries = [_entry("a", 0.80, 0.99, 0.01), _entry("b", 0.90, 0.50, 2.0)]
    assert select_best(entries) == {"name": "b", "selected_by": "validation macro_f1"}


def test_select_best_equal_macro_f1_goes_to_higher_accuracy():
    # mutation seen to fail: select_best key `e["validation"]["accuracy"]` -> `-e["validation"]["accuracy"]`
    from engine.evaluation.selection import select_best

    entries = [_entry("low_acc", 0.9, 0.80, 0.1), _entry("high_acc", 0.9, 0.85, 0.9), _entry("worse", 0.7, 0.99, 0.0)]
    assert select_best(entries)["name"] == "high_acc"
    assert select_best(entries[::-1])["name"] == "high_acc"  # not the order


def test_select_best_equal_macro_f1_and_accuracy_goes_to_lower_log_loss():
    # mutation seen to fail: select_best key `-e["validation"].get("log_loss", 0.0)` -> `e["validation"]...`
    from engine.evaluation.selection import select_best

    entries = [_entry("confident_wrong", 0.9, 0.9, 0.70), _entry("calibrated", 0.9, 0.9, 0.20)]
    assert select_best(entries)["name"] == "calibrated"
    assert select_best(entries[::-1])["name"] == "calibrated"


def test_select_best_ignores_failed_entries_and_returns_none_without_an_ok_one():
    # mutation seen to fail: select_best `e.get("status") == "ok" and` removed from its filter
    from engine.evaluation.selection import select_best

    failed = _entry("failed", 1.0, 1.0, 0.0, status="failed")
    assert select_best([failed, _entry("ok", 0.5, 0.5, 1.0)])["name"] == "ok"
    assert select_best([failed]) is None
    assert select_best([]) is None
    assert select_best([{"name": "no_validation", "status": "ok", "validation": None}]) is None


# ------------------------------------------------------------------------------------------------
# 3. reuse = "if-unchanged"


def test_unchanged_second_run_reuses_the_models_without_training(scenario):
    # mutation seen to fail: pipeline._run_stages `m.experiment.reuse == "if-unchanged"` -> `== "never"`
    # (run 2 trains and the patched train_head raises)
    first, second = scenario["runs"][0], scenario["runs"][1]
    results = second["results"]
    assert second["outcome"].status == "ok", [e.get("error") for e in results["backbones"]]
    assert results["run"]["reused_from"] == RUN_IDS[0]
    log = "\n".join(second["log"])
    assert f"reuse: manifest, data and code unchanged since run {RUN_IDS[0]}; reusing its models" in log
    assert f"backbone tiny: reused from run {RUN_IDS[0]}; not retrained" in log
    assert "backbone tiny: loading" not in log
    before = {e["name"]: e for e in first["results"]["backbones"]}
    after = {e["name"]: e for e in results["backbones"]}
    assert list(after) == ["tiny", "tiny_ft"]
    for name in after:
        assert after[name]["test"] == before[name]["test"] and after[name]["history"] == before[name]["history"]
        model = second["outcome"].run_dir / after[name]["artifacts"]["model"]
        # the model is copied into the new run, byte for byte (the later run must not depend on the old folder)
        assert model.read_bytes() == (first["dir"] / before[name]["artifacts"]["model"]).read_bytes()
    # a fresh, dated report all the same
    assert results["run"]["started_at"] == CLOCKS[1].isoformat()
    assert b"2026-03-02 02:00 UTC" in second["report"]


def test_changed_manifest_retrains(scenario):
    # mutation seen to fail: history.inputs_key `return (record.get("manifest_sha256"), ...` ->
    # `return ("any", ...` (the manifest hash ignored: run 3 reuses run 2's models)
    third = scenario["runs"][2]
    results = third["results"]
    assert third["outcome"].status == "ok"
    assert results["run"]["reused_from"] is None
    log = "\n".join(third["log"])
    assert "reuse: no earlier run with unchanged manifest, data and code; training" in log
    assert "backbone tiny: loading" in log and "tiny_ft: fine-tuning" in log
    assert [e["name"] for e in results["backbones"]] == ["tiny", "tiny_ft"]


# ------------------------------------------------------------------------------------------------
# 4. Flip TTA


def test_predict_with_flip_tta_is_the_mean_over_image_and_horizontal_flip():
    # mutation seen to fail: train.predict `x[:, :, ::-1]` -> `x[:, ::-1]` (a vertical flip)
    import keras

    from engine.training.train import predict

    keras.utils.set_random_seed(1)
    inp = keras.Input((6, 5, 3))
    # Dense over every pixel: the output depends on where things are, so a flip changes it
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp)))
    model = keras.Model(inp, out)
    x = np.random.default_rng(2).integers(0, 256, (7, 6, 5, 3)).astype("uint8")
    plain = model.predict(x.astype("float32"), verbose=0)
    mirrored = model.predict(np.flip(x, axis=2).astype("float32"), verbose=0)  # axis 2 = width
    upside_down = model.predict(np.flip(x, axis=1).astype("float32"), verbose=0)
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the model is not flip-invariant
    assert not np.allclose(mirrored, upside_down, atol=1e-3)
    np.testing.assert_allclose(predict(model, x, batch_size=3, tta_flip=True), (plain + mirrored) / 2,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(model, x, batch_size=3), plain, rtol=1e-5, atol=1e-6)


def test_tta_flip_in_the_manifest_reaches_the_saved_predictions(scenario):
    # mutation seen to fail: pipeline._evaluate_and_store `tta = m.evaluation.tta_flip` -> `tta = False`
    import pandas as pd

    from engine.data import discovery as data_mod
    from engine.manifest import class_aliases, load

    run_dir = scenario["runs"][0]["dir"]
    m = load(run_dir / "manifest.toml")
    _, records = data_mod.discover(m.data.root, layout="auto", train_dir="Training", test_dir="Testing",
                                   classes=m.data.classes, aliases=class_aliases(m), test_fraction=0.2, seed=5)
    test = [r for r in records if r.split == "test"]
    x = data_mod.ImageCache(None).load(test, 32, "test")
    model = _load(run_dir / "models" / "tiny.keras")
    plain = model.predict(x.astype("float32"), verbose=0)
    mirrored = model.predict(np.flip(x, axis=2).astype("float32"), verbose=0)
    df = pd.read_csv(run_dir / "predictions" / "tiny.csv")
    root = Path(m.data.root).resolve()
    index = {str(r.path.relative_to(root)): i for i, r in enumerate(test)}
    order = [index[p] for p in df["path"]]
    stored = df[[f"prob_{c}" for c in m.data.classes]].to_numpy()
    np.testing.assert_allclose(stored, ((plain + mirrored) / 2)[order], atol=2e-6)  # CSVs keep 6 decimals
    assert np.abs(stored - plain[order]).max() > 1e-4  # and not the plain prediction


# ------------------------------------------------------------------------------------------------
# 6. keep_last pruning during a run


def test_keep_last_two_leaves_the_two_newest_runs_and_the_whole_history(scenario):
    # mutation seen to fail: retention.prune_runs `runs[:max(0, len(runs) - keep_last)]` ->
    # `runs[:max(0, len(runs) - keep_last - 1)]`
    from engine.nightly.history import read_history, read_latest

    exp_dir, runs = scenario["exp_dir"], scenario["runs"]
    # run 2 did not prune (two runs, keep_last = 2); run 3 removed run 1
    assert [n for n in runs[1]["listing"] if n in RUN_IDS] == RUN_IDS[:2]
    assert sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == RUN_IDS[1:]
    assert f"retention: removed old run {RUN_IDS[0]} (keep_last = 2)" in runs[2]["log"]
    assert not any("retention: removed" in line for line in runs[0]["log"] + runs[1]["log"])
    records = read_history(exp_dir)
    assert [r["run_id"] for r in records] == RUN_IDS
    assert all(r["status"] == "ok" for r in records)
    assert read_latest(exp_dir) == RUN_IDS[2]
    # the run that reused run 1's models still has them: it copied them
    second = runs[1]["outcome"].run_dir
    assert (second / "models" / "tiny.keras").is_file() and (second / "models" / "tiny_ft.keras").is_file()


# ------------------------------------------------------------------------------------------------
# 8. render reproduces the run's report


@pytest.mark.parametrize("which", [1, 2])
def test_render_with_the_runs_clock_reproduces_its_report_byte_for_byte(scenario, tmp_path, which):
    # mutation seen to fail: pipeline.render_stage `now=ctx.now()` -> `now=None` (the run's report carries
    # the wall clock); and any nondeterminism in figures or templates would fail it too
    from engine.report import render_report

    run = scenario["runs"][which]
    copy = tmp_path / run["outcome"].run_dir.name
    shutil.copytree(run["dir"], copy)
    (copy / "report.html").unlink()
    # without the run's settings: the checklists come from results.json, as the run filled them
    written = render_report(copy, ("html",), now=CLOCKS[which])
    assert written == {"html": copy / "report.html", "checklist-claim-2024.md": copy / "checklist-claim-2024.md",
                       "checklist-claim-2024.csv": copy / "checklist-claim-2024.csv"}
    again = (copy / "report.html").read_bytes()
    if again != run["report"]:
        import difflib

        diff = list(difflib.unified_diff(run["report"].decode().splitlines(), again.decode().splitlines(),
                                         "run", "render", n=0, lineterm=""))
        pytest.fail("render differs from the run's report:\n" + "\n".join(line[:300] for line in diff[:40]))


# ------------------------------------------------------------------------------------------------
# 9. Atomic report writes


def test_a_failed_replace_leaves_the_old_report_intact_and_no_temp_file(scenario, tmp_path, monkeypatch):
    # mutations seen to fail: atomic.write_bytes writing `path` directly instead of the temp file (the old
    # report is half-replaced), and deleting its `Path(tmp).unlink(missing_ok=True)` (a temp file is left)
    from engine.report import render_report

    run = scenario["runs"][2]
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    old = (copy / "report.html").read_bytes()
    before = {p.relative_to(copy) for p in copy.rglob("*")}
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst, *args, **kwargs):
        calls.append(Path(dst).name)
        if Path(dst).name == "report.html":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    # another clock, so the new report would differ from the old one in its "generated" line
    # issue 26: a full disk is a StorageError naming the file it was writing (exit 2), not a bare OSError
    from engine.errors import StorageError

    with pytest.raises(StorageError, match=r"report\.html': no space left on device"):
        render_report(copy, ("html",), now=datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert "report.html" in calls
    assert (copy / "report.html").read_bytes() == old
    after = {p.relative_to(copy) for p in copy.rglob("*")}
    assert after == before, f"left behind: {sorted(map(str, after - before))}"
    monkeypatch.undo()
    # and with a working os.replace the same render goes through
    render_report(copy, ("html",), now=datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert b"2030-01-01 00:00 UTC" in (copy / "report.html").read_bytes()
