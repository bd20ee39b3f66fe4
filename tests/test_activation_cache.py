"""Fine-tuning on cached activations (issue 20): same predictions as fine-tuning the whole network.

The tiny backbone of tests/tiny_training.py has a skip connection across the cut, so the boundary
is two tensors (16 px images).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.manifest import AugmentationConfig, FineTuneConfig, TrainingConfig

pytest.importorskip("keras")

from tiny_training import classifier, data  # noqa: E402  (tests/ is on the path under pytest)


def _classifier():
    return classifier()


def _data(n: int, seed: int):
    return data(n, seed)


def _fine_tune(budget: int, flip: bool, *, logs: list[str], layers: int = 4):
    from engine.training.train import fine_tune

    aug = AugmentationConfig(enabled=flip, flip=True, rotation=0.0, shift=0.0, zoom=0.0, brightness=0.0,
                             contrast=0.0)
    cfg = TrainingConfig(batch_size=8, augmentation=aug, activation_cache_bytes=budget, early_stopping_patience=0)
    ft = FineTuneConfig(layers=layers, learning_rate=3e-2, epochs=3, schedule="constant")
    model = _classifier()
    before = model.predict(_data(12, 9)[0].astype("float32"), verbose=0)
    x_tr, y_tr = _data(40, 1)
    x_va, y_va = _data(12, 9)
    result = fine_tune(model, x_tr, y_tr, x_va, y_va, cfg=cfg, ft=ft, seed=5, label="tiny", echo=logs.append)
    return before, model.predict(x_va.astype("float32"), verbose=0), result


@pytest.mark.parametrize("flip", [False, True], ids=["no-augmentation", "flips-only"])
@pytest.mark.slow
def test_cached_and_full_network_fine_tuning_predict_alike(flip):
    full_logs, cached_logs = [], []
    before, full, full_result = _fine_tune(0, flip, logs=full_logs)
    _, cached, cached_result = _fine_tune(1 << 30, flip, logs=cached_logs)
    assert any("whole network every epoch" in line and "activation_cache_bytes = 0" in line for line in full_logs)
    assert any("cached activations below c3" in line for line in cached_logs), cached_logs
    assert np.abs(full - before).max() > 1e-3, "fine-tuning changed nothing: the comparison would be empty"
    np.testing.assert_allclose(cached, full, atol=2e-5)
    losses = lambda r: [h["loss"] for h in r.history]  # noqa: E731
    np.testing.assert_allclose(losses(cached_result), losses(full_result), rtol=1e-4)


def test_the_boundary_holds_every_tensor_the_layers_above_read():
    from engine.training.activations import split_classifier
    from engine.training.backbones import set_backbone_trainable

    model = _classifier()
    set_backbone_trainable(model, 4)
    split = split_classifier(model)
    assert split.boundary == "c3"
    assert sorted(split.shapes) == [(8, 8, 8), (8, 8, 8)]  # c1's output (the skip) and c2's
    x = _data(5, 2)[0].astype("float32")
    np.testing.assert_allclose(split.upper(split.lower(x)), model(x), atol=1e-6)
    assert {id(v) for v in split.upper.trainable_weights} == {id(v) for v in model.trainable_weights}


@pytest.mark.slow
def test_over_budget_or_random_augmentation_falls_back_and_says_why():
    logs = []
    _fine_tune(100, False, logs=logs)
    assert any("over the budget of" in line and "training.activation_cache_bytes" in line for line in logs), logs
    from engine.training.train import fine_tune

    logs = []
    aug = AugmentationConfig(enabled=True, flip=True, rotation=0.05, shift=0.0, zoom=0.1, brightness=0.0,
                             contrast=0.0)
    x, y = _data(16, 1)
    fine_tune(_classifier(), x, y, x[:8], y[:8], cfg=TrainingConfig(batch_size=8, augmentation=aug, epochs=1),
              ft=FineTuneConfig(layers=4, epochs=1, warmup_epochs=0.0), seed=1, label="t", echo=logs.append)
    assert any("random augmentation (rotation, zoom)" in line for line in logs), logs


@pytest.mark.slow
def test_large_caches_are_memory_mapped_under_the_cache_and_removed_after(tmp_path, monkeypatch):
    from engine.training import activations
    from engine.training.train import fine_tune

    monkeypatch.setattr(activations, "IN_MEMORY_BYTES", 0)
    logs = []
    x, y = _data(16, 1)
    aug = AugmentationConfig(enabled=True, flip=True, rotation=0.0, shift=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    fine_tune(_classifier(), x, y, x[:8], y[:8], cfg=TrainingConfig(batch_size=8, augmentation=aug),
              ft=FineTuneConfig(layers=4, epochs=1, warmup_epochs=0.0), seed=1, label="t", echo=logs.append,
              store=tmp_path)
    assert any("memory-mapped under the cache" in line for line in logs), logs
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_one_shared_pass_gives_the_audit_of_separate_passes(tmp_path):
    """With fine-tuning configured, a run passes the frozen layers over every split once and the
    head, fine-tuning and both evaluations use those activations (activations.Shared). The same
    audit with the cache off (every stage runs the whole network) gives the same probabilities
    for both rows, within float tolerance."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd
    from test_multiworker import _band_data, _env, _manifest

    data = _band_data(tmp_path / "data")
    shared = _manifest(tmp_path, data, "none")
    separate = tmp_path / "separate.toml"
    separate.write_text(shared.read_text().replace('distribute = "none"',
                                                   'distribute = "none"\nactivation_cache_bytes = 0'))
    runs = {}
    for name, manifest in (("shared", shared), ("separate", separate)):
        proc = subprocess.run([sys.executable, "-m", "engine.cli", str(manifest), "--output-dir",
                               str(tmp_path / name), "--run-id", "r"], env=_env(None), cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (Path(tmp_path / name / "mw" / "r"), proc.stderr)
    assert "one pass of the frozen layers for the head, fine-tuning and evaluation" in runs["shared"][1]
    assert "on the activations cached for this backbone" in runs["shared"][1]
    assert "one pass of the frozen layers" not in runs["separate"][1]
    assert "the activation cache is off" in runs["separate"][1]
    for stem in ("tiny", "tiny_ft"):
        for suffix in (".csv", ".validation.csv"):
            a = pd.read_csv(runs["shared"][0] / "predictions" / f"{stem}{suffix}")
            b = pd.read_csv(runs["separate"][0] / "predictions" / f"{stem}{suffix}")
            cols = [c for c in a.columns if c.startswith("prob_")]
            assert len(a) == len(b) > 0 and np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-3
    r = json.loads((runs["shared"][0] / "results.json").read_text())
    assert [b["status"] for b in r["backbones"]] == ["ok", "ok"]
