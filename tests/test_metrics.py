"""Metrics against cases computed by hand and against scikit-learn (the one definition, docs/metrics.md)."""

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

from engine.evaluation.metrics import classification_metrics, macro_f1_score


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


def test_missing_class_is_undefined_not_zero():
    # class c: no true image and never predicted -- nothing about it can be measured
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0]])
    m = classification_metrics(y, probs, ["a", "b", "c"]).to_dict()
    assert m["roc_auc"]["per_class"]["c"] is None
    assert m["roc_auc"]["per_class"]["a"] == pytest.approx(1.0)
    assert m["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    json.dumps(m, allow_nan=False)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2, ["a", "b"])


def test_absent_class_with_a_wrong_prediction_into_it():
    # The leakage-free Sartaj subset: no no_tumor image (class c), yet one a image is called c.
    # true a a a b b ; predicted a a c b b
    y = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 2, 1, 1])
    m = classification_metrics(y, np.eye(3)[pred], ["a", "b", "c"]).to_dict()
    f1_a, f1_b = 2 * 2 / (2 * 2 + 0 + 1), 1.0  # 2tp / (2tp + fp + fn)
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1], average="macro"))
    # the two other conventions the code used to mix, which this case tells apart
    assert m["macro_f1"] != pytest.approx(f1_score(y, pred, average="macro", zero_division=0))  # union: c as 0
    assert m["classes_in_macro"] == ["a", "b"]
    assert m["macro_avg"]["f1"] == m["macro_f1"]
    assert m["macro_avg"]["recall"] == m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    c = m["per_class"]["c"]
    assert (c["recall"], c["f1"], c["support"]) == (None, None, 0)
    assert c["precision"] == 0.0  # predicted once, wrongly: that is measured
    assert macro_f1_score(y, pred, 3) == (pytest.approx(m["macro_f1"]), [0, 1])


@pytest.mark.parametrize("seed", range(6))
def test_matches_sklearn_with_labels_of_the_classes_present(seed):
    # Random subsets of 4 classes where one or two classes have no true image but are predicted,
    # and (seed-dependent) a present class is never predicted: every value equals sklearn's.
    rng = np.random.default_rng(seed)
    k, n = 4, 40
    present = sorted(rng.choice(k, size=int(rng.integers(2, 4)), replace=False).tolist())
    y = rng.choice(present, size=n)
    y[: len(present)] = present  # every chosen class really is present
    pred = np.where(rng.uniform(size=n) < 0.6, y, rng.integers(0, k, size=n))
    if seed % 2:
        pred[pred == present[0]] = present[1]  # a present class never predicted: precision undefined
    assert set(pred.tolist()) - set(present), "the case needs a prediction into an absent class"
    m = classification_metrics(y, np.eye(k)[pred], list("abcd")).to_dict()
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=np.nan)
    for i, cls in enumerate("abcd"):
        pc = m["per_class"][cls]
        assert pc["support"] == s[i]
        for key, ref in (("precision", p[i]), ("recall", r[i]), ("f1", f[i] if s[i] else np.nan)):
            assert (pc[key] is None) == bool(np.isnan(ref)), (cls, key)
            if pc[key] is not None:
                assert pc[key] == pytest.approx(ref, abs=1e-6)
    assert m["classes_in_macro"] == [c for i, c in enumerate("abcd") if i in present]
    for average in ("macro", "weighted"):
        ref = precision_recall_fscore_support(y, pred, labels=present, average=average, zero_division=np.nan)
        block = m[f"{average}_avg"]
        assert block["precision"] == pytest.approx(ref[0], abs=1e-6)
        assert block["recall"] == pytest.approx(ref[1], abs=1e-6)
        assert block["f1"] == pytest.approx(ref[2], abs=1e-6)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="macro"), abs=1e-6)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="weighted"), abs=1e-6)
    with warnings.catch_warnings():  # sklearn warns that y_pred has classes not in y_true: the case
        warnings.simplefilter("ignore", UserWarning)
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-6)
