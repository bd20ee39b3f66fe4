"""Seeded percentile bootstrap (engine.evaluation.uncertainty)."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from engine.evaluation.uncertainty import (
    bootstrap_ci,
    bootstrap_summary,
    metrics_from_confusion,
    resampled_confusion_matrices,
)

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _predictions(n, accuracy, seed, k=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    wrong = rng.uniform(size=n) > accuracy
    y_pred = np.where(wrong, (y + rng.integers(1, k, size=n)) % k, y)
    return y, y_pred


def _macro_f1_fixed(labels):
    """sklearn's macro-F1 over fixed labels; NaN for a resample without one of them (documented choice)."""
    def fn(a, b):
        if not set(labels) <= set(a.tolist()):
            return float("nan")
        return f1_score(a, b, labels=labels, average="macro")
    return fn


def test_fast_metrics_match_sklearn_per_resample():
    # Class 3 has 2 true images in 30, so it is absent from ~13 % of resamples; class 2 is only
    # ever predicted, never true -- exercises the fixed macro label set and NaN recall.
    y = np.array([0] * 14 + [1] * 14 + [3] * 2)
    y_pred = y.copy()
    y_pred[[0, 1, 15, 16, 29]] = [1, 2, 0, 2, 0]
    n_res, seed = 60, 7
    cms = resampled_confusion_matrices(y, y_pred, 4, n_res, seed)
    fast = metrics_from_confusion(cms, [0, 1, 3])
    macro = _macro_f1_fixed([0, 1, 3])
    idx_all = np.random.default_rng(seed).integers(0, len(y), size=(n_res, len(y)))  # same draws
    saw_absent = False
    for r, idx in enumerate(idx_all):
        yt, yp = y[idx], y_pred[idx]
        assert np.array_equal(cms[r], confusion_matrix(yt, yp, labels=range(4)))
        assert fast["accuracy"][r] == pytest.approx(accuracy_score(yt, yp))
        np.testing.assert_allclose(fast["macro_f1"][r], macro(yt, yp), equal_nan=True)
        rec = recall_score(yt, yp, labels=range(4), average=None, zero_division=np.nan)
        np.testing.assert_allclose(fast["recall"][r], rec, equal_nan=True)
        saw_absent |= bool(np.isnan(fast["recall"][r, 3]))
    assert saw_absent


def test_summary_accuracy_ci_equals_generic_bootstrap_with_same_seed():
    y, y_pred = _predictions(150, 0.8, seed=1)
    s = bootstrap_summary(y, y_pred, CLASSES, n_resamples=400, seed=3)
    lo, hi = bootstrap_ci(y, y_pred, accuracy_score, n_resamples=400, seed=3)
    assert (s["accuracy"]["ci_low"], s["accuracy"]["ci_high"]) == pytest.approx((lo, hi))
    lo_f1, hi_f1 = bootstrap_ci(y, y_pred, _macro_f1_fixed([0, 1, 2, 3]), n_resamples=100, seed=3)
    s100 = bootstrap_summary(y, y_pred, CLASSES, n_resamples=100, seed=3)
    assert (s100["macro_f1"]["ci_low"], s100["macro_f1"]["ci_high"]) == pytest.approx((lo_f1, hi_f1))


def test_absent_class_point_equals_metrics_and_lies_inside_the_ci():
    # The lite0 contradiction (issue 15): a leakage-free subset with no no_tumor image but with
    # no_tumor predictions. The bootstrap's point must be classification_metrics' macro-F1, over the
    # 3 classes present, and sit inside its own interval.
    from engine.evaluation.metrics import classification_metrics

    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 3], size=120, p=[0.5, 0.3, 0.2])
    y_pred = np.where(rng.uniform(size=120) < 0.75, y, rng.integers(0, 4, size=120))
    y_pred[:6] = 2  # wrong predictions into the absent class
    m = classification_metrics(y, np.eye(4)[y_pred], CLASSES).to_dict()
    s = bootstrap_summary(y, y_pred, CLASSES, n_resamples=1000, seed=0)
    present = [0, 1, 3]
    assert s["classes_in_macro"] == m["classes_in_macro"] == ["glioma", "meningioma", "pituitary"]
    assert s["macro_f1"]["value"] == pytest.approx(m["macro_f1"], abs=1e-6)
    assert s["macro_f1"]["value"] == pytest.approx(f1_score(y, y_pred, labels=present, average="macro"))
    assert s["macro_f1"]["value"] != pytest.approx(f1_score(y, y_pred, average="macro", zero_division=0), abs=1e-3)
    assert s["macro_f1"]["ci_low"] <= s["macro_f1"]["value"] <= s["macro_f1"]["ci_high"]
    assert s["macro_f1"]["n_resamples_defined"] == 1000  # 24 pituitary images: never all lost
    assert s["accuracy"]["value"] == pytest.approx(m["accuracy"], abs=1e-6)
    for cls in CLASSES:
        assert s["per_class_recall"][cls]["value"] == (
            None if m["per_class"][cls]["recall"] is None else pytest.approx(m["per_class"][cls]["recall"], abs=1e-6))


def test_resamples_that_lose_a_macro_class_are_left_out_and_counted():
    # 1 pituitary image in 30: (29/30)^30 = 36 % of resamples lack it. Those get no macro-F1
    # rather than one over fewer classes; the count says how many intervals rest on.
    y = np.array([0] * 15 + [1] * 14 + [3])
    y_pred = y.copy()
    y_pred[[0, 15]] = [1, 2]
    s = bootstrap_summary(y, y_pred, CLASSES, n_resamples=1000, seed=0)
    defined = s["macro_f1"]["n_resamples_defined"]
    assert defined == s["per_class_recall"]["pituitary"]["n_resamples_defined"]
    assert 550 < defined < 720  # 1000 x (1 - 0.362) = 638, binomial sd 15
def test_same_seed_identical_different_seed_differs():
    y, y_pred = _predictions(400, 0.8, seed=2)
    a = bootstrap_summary(y, y_pred, CLASSES, n_resamples=1000, seed=11)
    b = bootstrap_summary(y, y_pred, CLASSES, n_resamples=1000, seed=11)
    c = bootstrap_summary(y, y_pred, CLASSES, n_resamples=1000, seed=12)
    assert a == b
    assert a["accuracy"]["value"] == c["accuracy"]["value"]  # point estimate does not depend on seed
    assert (a["accuracy"]["ci_low"], a["accuracy"]["ci_high"], a["macro_f1"]["ci_low"]) != (
        c["accuracy"]["ci_low"], c["accuracy"]["ci_high"], c["macro_f1"]["ci_low"])


def test_ci_contains_point_and_narrows_with_n():
    y, y_pred = _predictions(100, 0.75, seed=4)
    small = bootstrap_summary(y, y_pred, CLASSES, n_resamples=1000, seed=0)
    # Same empirical distribution, 16x the images: interval width should shrink about 4x.
    big = bootstrap_summary(np.tile(y, 16), np.tile(y_pred, 16), CLASSES, n_resamples=1000, seed=0)
    for s in (small, big):
        for m in ("accuracy", "macro_f1"):
            assert s[m]["ci_low"] <= s[m]["value"] <= s[m]["ci_high"]
        for cls in CLASSES:
            r = s["per_class_recall"][cls]
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert small["accuracy"]["value"] == pytest.approx(big["accuracy"]["value"])
    w_small = small["accuracy"]["ci_high"] - small["accuracy"]["ci_low"]
    w_big = big["accuracy"]["ci_high"] - big["accuracy"]["ci_low"]
    assert 2.5 < w_small / w_big < 6.0
    # A 95 % interval around 0.75 accuracy on 100 images is about +/- 0.085 (normal approx.).
    assert 0.12 < w_small < 0.22


def test_summary_shape_and_absent_class():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    y_pred = np.array([0, 1, 1, 1, 0, 0, 1, 2])
    s = bootstrap_summary(y, y_pred, CLASSES, n_resamples=1000, seed=0)
    assert s["n_resamples"] == 1000 and s["n_images"] == 8 and s["confidence"] == 0.95 and s["seed"] == 0
    assert s["accuracy"]["value"] == pytest.approx(5 / 8)
    assert set(s["per_class_recall"]) == set(CLASSES)
    assert s["per_class_recall"]["no_tumor"] == {
        "value": None, "ci_low": None, "ci_high": None, "support": 0, "n_resamples_defined": 0}
    assert s["per_class_recall"]["glioma"]["support"] == 4
    assert s["per_class_recall"]["glioma"]["n_resamples_defined"] <= 1000
    import json

    json.dumps(s, allow_nan=False)


def test_sklearn_is_not_called_per_resample(monkeypatch):
    # Vectorised resampling is what keeps 1,000+ resamples cheap (timings: docs/benchmarks.md);
    # a per-resample sklearn call would scale the count with n_resamples.
    import sklearn.metrics

    import engine.evaluation.uncertainty as unc

    calls = {"n": 0}

    def counting(fn):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name in ("accuracy_score", "f1_score", "recall_score", "precision_recall_fscore_support",
                 "confusion_matrix", "balanced_accuracy_score"):
        monkeypatch.setattr(sklearn.metrics, name, counting(getattr(sklearn.metrics, name)))
        if hasattr(unc, name):
            monkeypatch.setattr(unc, name, counting(getattr(unc, name)))
    y, y_pred = _predictions(400, 0.8, seed=5)
    counts = []
    for n_resamples in (100, 1000):
        calls["n"] = 0
        bootstrap_summary(y, y_pred, CLASSES, n_resamples=n_resamples, seed=0)
        counts.append(calls["n"])
    assert counts[0] == counts[1] < 10


def test_bad_input_raises():
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_summary(np.array([0, 1]), np.array([0]), CLASSES)
    with pytest.raises(ValueError, match="class indices"):
        bootstrap_summary(np.array([0, 4]), np.array([0, 1]), CLASSES)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(np.array([0, 1]), np.array([0, 1]), accuracy_score, n_resamples=0)
