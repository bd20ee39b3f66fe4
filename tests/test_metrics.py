"""Metrics against a case computed by hand."""

import numpy as np
import pytest

from engine.metrics import classification_metrics


def test_hand_computed_case():
    # true:  0 0 0 1 1 2 ; predicted: 0 0 1 1 2 2
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    m = classification_metrics(y, probs, ["a", "b", "c"]).to_dict()
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class a: P 2/2, R 2/3 ; class b: P 1/2, R 1/2 ; class c: P 1/2, R 1/1
    pc = m["per_class"]
    assert pc["a"]["precision"] == pytest.approx(1.0) and pc["a"]["recall"] == pytest.approx(2 / 3)
    assert pc["b"]["f1"] == pytest.approx(0.5)
    assert pc["c"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert [pc[c]["support"] for c in "abc"] == [3, 2, 1]
    assert m["n_images"] == 6


def test_missing_class_gives_none_auc_not_nan():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0]])
    m = classification_metrics(y, probs, ["a", "b", "c"]).to_dict()
    assert m["roc_auc"]["per_class"]["c"] is None
    assert m["roc_auc"]["per_class"]["a"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["recall"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2, ["a", "b"])


def test_macro_f1_ignores_classes_absent_from_the_subset():
    # the leakage-free Sartaj test split has no no_tumor image: its F1 is undefined, not 0
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    probs = np.eye(3)[pred]
    m = classification_metrics(y, probs, ["a", "b", "c"]).to_dict()
    f1_a, f1_b = 2 * 1 * 0.5 / 1.5, 1.0
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert m["classes_in_macro"] == ["a", "b"]
