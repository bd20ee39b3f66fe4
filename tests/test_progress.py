"""Progress a person can wait on (issue 20): images/s and ETA, in place on a terminal, throttled in logs,
silent under --quiet."""

from __future__ import annotations

import io

import numpy as np
import pytest

from engine.progress import Progress, silent
from test_hardening import assets, invoke, manifest  # noqa: F401 - assets is a fixture


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_at_most_one_line_per_interval_with_rate_and_eta():
    clock, out = _Clock(), io.StringIO()
    line = Progress("features", 1000, stream=out, clock=clock, interval=10.0)
    for done in range(100, 1000, 100):  # one update per simulated 2 s: 100 images / 2 s = 50 images/s
        clock.t += 2.0
        line.update(done)
    line.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()  # 18 s: only the 10-s mark printed
    assert lines[0] == "  features: 500/1000 images, 50.0 images/s, ETA 10s"


def test_a_terminal_gets_carriage_return_updates_cleared_at_the_end():
    clock, out = _Clock(), _Tty()
    with Progress("epoch 1/2", 60, stream=out, clock=clock, interval=10.0) as line:
        for done in (20, 40, 60):
            clock.t += 1.0
            line.update(done)
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") == 5  # three updates, and the clearing one returns twice
    assert "20/60 images, 20.0 images/s, ETA 2s" in text
    assert text.endswith("\r" + " " * len("  epoch 1/2: 60/60 images, 20.0 images/s, ETA 0s") + "\r")


def test_quiet_prints_nothing_on_either_stream():
    for out in (io.StringIO(), _Tty()):
        clock = _Clock()
        with Progress("x", 10, stream=out, clock=clock, interval=0.0, quiet=True) as line:
            clock.t += 1
            line.update(5)
        assert out.getvalue() == ""
    assert silent(None)
    quiet_echo = lambda msg: None  # noqa: E731
    quiet_echo.quiet = True
    assert silent(quiet_echo) and not silent(print)


@pytest.mark.slow
def test_run_shows_progress_on_stderr_unless_quiet(assets, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AUDITRUN_PROGRESS_INTERVAL", "0")  # every batch, so a 1-s run shows lines too
    loud = invoke(manifest(assets, tmp_path), "--output-dir", tmp_path / "a", "--run-id", "r1")
    assert loud.exit_code == 0, loud.output
    shown = [s for s in loud.stderr.splitlines() if "images/s" in s]
    assert any("[head] epoch 1/1" in s and "ETA" in s for s in shown), loud.stderr
    quiet = invoke(manifest(assets, tmp_path), "--quiet", "--output-dir", tmp_path / "b", "--run-id", "r1")
    assert quiet.exit_code == 0, quiet.output
    assert "images/s" not in quiet.stderr and "ETA" not in quiet.stderr


@pytest.mark.slow
def test_frozen_head_validation_probabilities_reuse_the_features_and_match_a_full_pass():
    from engine.manifest import AugmentationConfig, TrainingConfig
    from engine.training.train import predict, train_head
    from tiny_training import classifier, data

    aug = AugmentationConfig(enabled=False)
    cfg = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-2, dropout=0.0, augmentation=aug,
                         early_stopping_patience=0)
    (x_tr, y_tr), (x_va, y_va) = data(24, 1), data(12, 9)
    model = classifier(dropout=0.0)
    result = train_head(model, x_tr, y_tr, x_va, y_va, cfg=cfg, seed=5, train_backbone=False, label="t")
    assert result.val_features is not None and len(result.val_features) == len(x_va)
    reused, full = result.validation_probs(), predict(model, x_va, batch_size=8)
    assert reused.shape == (12, 3) and np.allclose(reused, full, atol=1e-5)
    ended = train_head(classifier(dropout=0.0), x_tr, y_tr, x_va, y_va, cfg=cfg, seed=5, train_backbone=True,
                       label="t")
    assert ended.validation_probs() is None  # end to end: no frozen features to reuse


def test_counted_drives_one_line_from_a_done_total_callback(monkeypatch):
    import io

    from engine import progress as pm

    stream = io.StringIO()
    stream.isatty = lambda: True  # a terminal: every update rewrites the line
    real = pm.Progress.for_echo.__func__
    monkeypatch.setattr(pm.Progress, "for_echo",
                        classmethod(lambda cls, e, label, total, **kw: real(cls, e, label, total, stream=stream)))
    with pm.counted(type("Echo", (), {"quiet": False})(), "fingerprints") as cb:
        cb(1, 4)
        cb(4, 4)
    assert "fingerprints: 4/4 images" in stream.getvalue() and stream.getvalue().endswith("\r")
    with pm.counted(type("Echo", (), {"quiet": True})(), "x") as cb:
        cb(1, 2)
        assert cb.line.quiet
