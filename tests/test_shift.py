"""Distribution-shift check (engine.integrity.shift) and its report sentence."""

import numpy as np
import pytest

from engine.report.integrity import _shift_view
from engine.integrity.shift import MIN_IMAGES, domain_auc, image_descriptors, measure_shift
from engine.results import Shift

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _scans(n, rng, brightness=1.0, size=32):
    """Grey 'scans': a noisy disc on black; brightness scales the disc."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size * 0.35) ** 2
    base = rng.uniform(80, 120, size=(n, 1, 1)) * brightness
    grey = np.clip(disc * base + rng.normal(0, 12, size=(n, size, size)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def test_descriptors_are_histogram_fractions_and_block_means():
    x = np.zeros((2, 16, 16, 3), np.uint8)
    x[1, :8] = 255  # top half white
    d = image_descriptors(x)
    assert d.shape == (2, 32 + 64)
    np.testing.assert_allclose(d[:, :32].sum(axis=1), 1.0)
    assert d[0, 0] == 1.0 and d[1, 0] == 0.5 and d[1, 31] == 0.5
    thumb = d[1, 32:].reshape(8, 8)
    np.testing.assert_allclose(thumb[:4], 1.0)
    np.testing.assert_allclose(thumb[4:], 0.0)
    with pytest.raises(ValueError, match="shape"):
        image_descriptors(np.zeros((16, 16, 3), np.uint8))


def test_domain_auc_separates_a_brightness_shift_and_not_a_resample():
    rng = np.random.default_rng(0)
    train = image_descriptors(_scans(160, rng))
    same = image_descriptors(_scans(40, rng))
    brighter = image_descriptors(_scans(40, rng, brightness=1.6))
    assert domain_auc(train, brighter, seed=1) > 0.95
    assert domain_auc(train, same, seed=1) < 0.75
    assert domain_auc(train, same, seed=1) == domain_auc(train, same, seed=1)
    assert domain_auc(train, same[: MIN_IMAGES - 1], seed=1) is None


def test_measure_shift_per_class_with_validation_control():
    rng = np.random.default_rng(3)
    k = len(CLASSES)
    train_y = np.repeat(np.arange(k), 60)
    val_y = np.repeat(np.arange(k), 20)
    test_y = np.repeat(np.arange(k), 25)
    train_x = _scans(len(train_y), rng)
    val_x = _scans(len(val_y), rng)
    # glioma test images from a brighter "scanner"; the others like training
    test_x = np.concatenate([_scans(25, rng, brightness=1.6 if c == 0 else 1.0) for c in range(k)])
    keep = np.ones(len(test_y), bool)
    keep[test_y == 2] = False  # every no_tumor test image "has a twin in training"
    keep[np.flatnonzero(test_y == 3)[: 25 - (MIN_IMAGES - 1)]] = False  # too few pituitary left
    result = measure_shift(train_x, train_y, val_x, val_y, test_x, test_y, keep, CLASSES, seed=7)
    pc = result.per_class
    assert pc["glioma"].auc > 0.9 and pc["glioma"].control_auc < 0.8
    assert pc["meningioma"].auc < 0.8
    assert pc["no_tumor"].n_test == 0 and pc["no_tumor"].auc is None and pc["no_tumor"].control_auc is not None
    assert pc["pituitary"].n_test == MIN_IMAGES - 1 and pc["pituitary"].auc is None
    assert pc["glioma"].n_training == 60 and pc["glioma"].n_validation == 20
    again = measure_shift(train_x, train_y, val_x, val_y, test_x, test_y, keep, CLASSES, seed=7)
    assert again.to_dict() == result.to_dict()
    with pytest.raises(ValueError, match="leakage_free"):
        measure_shift(train_x, train_y, val_x, val_y, test_x, test_y, keep[:-1], CLASSES)


def _block(aucs):
    return Shift.from_json({"per_class": {c: {"n_training": 100, "n_test": 20 if a is not None else 3, "auc": a,
                                              "n_validation": 20, "control_auc": 0.5} for c, a in zip(CLASSES, aucs)},
                            "seed": 0, "method": "domain classifier", "min_images": 10})


def test_report_sentence_names_shifted_classes_only():
    view = _shift_view(_block([0.97, 0.55, None, 0.81]), CLASSES)
    assert "0.97 for glioma (20 images), 0.81 for pituitary (20 images)" in view.sentence
    assert "meningioma" not in view.sentence
    assert [r.auc for r in view.rows] == ["0.97", "0.55", "n/a (fewer than 10 images)", "0.81"]
    calm = _shift_view(_block([0.62, 0.55, None, 0.58]), CLASSES)
    assert "at most 0.62 (glioma)" in calm.sentence and "No large shift" in calm.sentence
    none = _shift_view(_block([None, None, None, None]), CLASSES)
    assert "was not measured" in none.sentence
    assert _shift_view(None, CLASSES) is None and _shift_view(Shift.from_json({"per_class": "x"}), CLASSES) is None


def test_a_tiny_class_is_recorded_as_not_measured_with_the_reason():
    rng = np.random.default_rng(4)
    k = len(CLASSES)
    train_y = np.r_[np.repeat(np.arange(k - 1), 30), [3, 3]]  # pituitary: 2 training images
    val_y = np.r_[np.repeat(np.arange(k - 1), 12)]  # and no validation image at all
    test_y = np.repeat(np.arange(k), 12)
    keep = np.ones(len(test_y), bool)
    result = measure_shift(_scans(len(train_y), rng), train_y, _scans(len(val_y), rng), val_y,
                           _scans(len(test_y), rng), test_y, keep, CLASSES, seed=1)
    tiny = result.to_dict()["per_class"]["pituitary"]
    assert tiny["auc"] is None and tiny["control_auc"] is None and tiny["n_validation"] == 0
    assert tiny["notes"] == [
        f"auc not measured: 2 training images, fewer than the {MIN_IMAGES} the check needs on each side",
        f"control_auc not measured: 0 validation images, fewer than the {MIN_IMAGES} the check needs on each side"]
    assert result.per_class["glioma"].auc is not None and result.per_class["glioma"].notes == []


def test_a_fit_warning_becomes_a_note_not_a_raw_warning(monkeypatch, recwarn):
    """Starved of iterations the logistic fit warns on every fold; the note keeps that, stderr does not."""
    import sklearn.linear_model

    real = sklearn.linear_model.LogisticRegression
    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression",
                        lambda **kw: real(**{**kw, "max_iter": 1}))
    rng = np.random.default_rng(0)
    k = len(CLASSES)
    y = np.repeat(np.arange(k), 12)
    result = measure_shift(_scans(len(y), rng), y, _scans(len(y), rng), y, _scans(len(y), rng, 1.5), y,
                           np.ones(len(y), bool), CLASSES, seed=0)
    notes = result.per_class["glioma"].notes
    assert any(n.startswith("auc: ConvergenceWarning: lbfgs failed to converge") for n in notes), notes
    assert not [w for w in recwarn if "sklearn" in w.filename or w.category.__name__ == "ConvergenceWarning"]
