"""ECE, reliability curve and temperature scaling (engine.evaluation.calibration)."""

import numpy as np
import pytest
from scipy.special import softmax

from engine.evaluation.calibration import (
    CalibrationResult,
    apply_temperature,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)

# Five samples, three classes. Top-label confidence / correct?:
#   1 [.90 .05 .05] y=0 -> .90 right      2 [.20 .70 .10] y=0 -> .70 wrong
#   3 [.10 .70 .20] y=1 -> .70 right      4 [.02 .03 .95] y=2 -> .95 right
#   5 [.50 .30 .20] y=2 -> .50 wrong
HAND_PROBS = np.array(
    [[0.90, 0.05, 0.05], [0.20, 0.70, 0.10], [0.10, 0.70, 0.20], [0.02, 0.03, 0.95], [0.50, 0.30, 0.20]]
)
HAND_Y = np.array([0, 0, 1, 2, 2])


def test_ece_hand_computed_5_bins():
    # Bins of width .2, right-closed:
    #   (.8, 1]: samples 1, 4: conf (.90 + .95)/2 = .925, acc 1   -> 2/5 * |1 - .925| = .03
    #   (.6,.8]: samples 2, 3: conf .70, acc 1/2                  -> 2/5 * |.5 - .70|  = .08
    #   (.4,.6]: sample 5:     conf .50, acc 0                    -> 1/5 * |0 - .50|   = .10
    # ECE = .03 + .08 + .10 = .21
    assert expected_calibration_error(HAND_Y, HAND_PROBS, n_bins=5) == pytest.approx(0.21, abs=1e-12)


def test_ece_hand_computed_15_bins():
    # Width 1/15: .90 in (13/15, 14/15], .95 in (14/15, 1], .70 in (10/15, 11/15], .50 in (7/15, 8/15].
    #   bin 14: 1/5 * |1 - .95| = .01   bin 13: 1/5 * |1 - .90| = .02
    #   bin 10: 2/5 * |.5 - .70| = .08  bin 7:  1/5 * |0 - .50| = .10      ECE = .21
    curve = reliability_curve(HAND_Y, HAND_PROBS, n_bins=15)
    assert curve.count.tolist() == [0] * 7 + [1, 0, 0, 2, 0, 0, 1, 1]
    assert curve.confidence[10] == pytest.approx(0.70)
    assert curve.accuracy[10] == pytest.approx(0.5)
    assert expected_calibration_error(HAND_Y, HAND_PROBS) == pytest.approx(0.21, abs=1e-12)


def test_reliability_bins_are_right_closed_and_serialisable():
    # Confidence exactly .6 belongs to (.4, .6], not (.6, .8].
    probs = np.array([[0.6, 0.4], [0.4, 0.6]])
    curve = reliability_curve(np.array([0, 0]), probs, n_bins=5)
    assert curve.count.tolist() == [0, 0, 2, 0, 0]
    rows = curve.to_list()
    assert len(rows) == 5 and rows[0]["confidence"] is None and rows[2]["count"] == 2
    assert rows[2]["accuracy"] == pytest.approx(0.5)
    assert rows[4]["bin_upper"] == 1.0


def test_perfectly_calibrated_is_near_zero_and_overconfident_is_not():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, size=20000)
    # The model always predicts class 0 with confidence conf; it is right with probability conf.
    y = np.where(rng.uniform(size=conf.size) < conf, 0, 1)
    probs = np.stack([conf, 1 - conf], axis=1)
    assert expected_calibration_error(y, probs) < 0.02
    y_over = np.where(rng.uniform(size=conf.size) < conf - 0.2, 0, 1)
    assert expected_calibration_error(y_over, probs) == pytest.approx(0.2, abs=0.02)


def _synthetic_overconfident(n, k, true_t, seed):
    """Labels drawn from softmax(z); the 'model' reports softmax(z * true_t): overconfident by true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, k))
    p_true = softmax(z, axis=1)
    y = np.array([rng.choice(k, p=row) for row in p_true])
    return y, z * true_t


def test_temperature_recovers_known_value_and_reduces_ece_and_nll():
    y_val, logits_val = _synthetic_overconfident(3000, 4, 3.0, seed=1)
    y_test, logits_test = _synthetic_overconfident(3000, 4, 3.0, seed=2)
    t = fit_temperature(logits_val, y_val)
    assert t == pytest.approx(3.0, rel=0.1)

    # Same fit from probabilities (log p differs from the logits by a per-row constant).
    probs_val = softmax(logits_val, axis=1)
    assert fit_temperature(probs_val, y_val, from_probs=True) == pytest.approx(t, rel=1e-3)

    probs_test = softmax(logits_test, axis=1)
    scaled = apply_temperature(logits_test, t)
    assert expected_calibration_error(y_test, scaled) < 0.5 * expected_calibration_error(y_test, probs_test)
    assert negative_log_likelihood(y_test, scaled) < negative_log_likelihood(y_test, probs_test)
    # Temperature never changes the predicted class.
    assert np.array_equal(scaled.argmax(1), probs_test.argmax(1))


def test_underconfident_model_gets_t_below_one():
    y, logits = _synthetic_overconfident(3000, 4, 0.5, seed=3)
    assert fit_temperature(logits, y) == pytest.approx(0.5, rel=0.1)


def test_apply_temperature_from_probs_handles_zeros_and_t1_is_identity():
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    out = apply_temperature(probs, 1.0, from_probs=True)
    assert np.allclose(out, probs, atol=1e-11)
    soft = apply_temperature(probs, 2.0, from_probs=True)
    assert np.all(np.isfinite(soft)) and np.allclose(soft.sum(1), 1.0)
    assert soft[0, 1] > 0 and soft[1, 2] < 0.5
    with pytest.raises(ValueError):
        apply_temperature(probs, 0.0, from_probs=True)
    with pytest.raises(ValueError, match="outside"):
        apply_temperature(probs * 5, 2.0, from_probs=True)


def test_calibrate_end_to_end_dict():
    y_val, logits_val = _synthetic_overconfident(2000, 4, 2.5, seed=4)
    y_test, logits_test = _synthetic_overconfident(1000, 4, 2.5, seed=5)
    res = calibrate(y_val, softmax(logits_val, 1), y_test, softmax(logits_test, 1), n_bins=15)
    assert isinstance(res, CalibrationResult)
    d = res.to_dict()
    for key in ("n_bins", "temperature", "ece_before", "ece_after", "reliability_before", "reliability_after"):
        assert key in d
    assert d["n_bins"] == 15 and len(d["reliability_before"]) == 15
    assert d["temperature"] == pytest.approx(2.5, rel=0.15) and not d["temperature_at_bound"]
    assert d["ece_after"] < d["ece_before"] and d["nll_after"] < d["nll_before"]
    assert sum(r["count"] for r in d["reliability_after"]) == 1000
    import json

    json.dumps(d, allow_nan=False)  # no NaN leaks into results.json


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="y_true"):
        expected_calibration_error(np.array([0, 1]), HAND_PROBS)
    with pytest.raises(ValueError, match="outside"):
        expected_calibration_error(np.array([0, 1, 2, 3, 0]), HAND_PROBS)
    with pytest.raises(ValueError, match="classes"):
        calibrate(HAND_Y, HAND_PROBS, np.array([0, 1]), np.array([[0.5, 0.5], [0.1, 0.9]]))


def test_too_few_validation_images_skip_the_fit_and_say_why(tmp_path):
    """Tiny validation split (issue 14): no temperature from 9 images, the test ECE still reported."""
    import json

    from engine.evaluation.calibration import MIN_VALIDATION_IMAGES
    from engine.report.figures import reliability_diagram
    from engine.report.backbone import _calibration_view
    from engine.results import BackboneResult

    y_val, logits_val = _synthetic_overconfident(MIN_VALIDATION_IMAGES - 1, 4, 2.5, seed=4)
    y_test, logits_test = _synthetic_overconfident(200, 4, 2.5, seed=5)
    res = calibrate(y_val, softmax(logits_val, 1), y_test, softmax(logits_test, 1), n_bins=15)
    d = res.to_dict()
    assert d["temperature"] is None and d["ece_after"] is None and d["nll_after"] is None
    assert d["not_fitted"] == f"{MIN_VALIDATION_IMAGES - 1} validation images, fewer than the 10 a temperature fit needs"
    assert d["ece_before"] == pytest.approx(expected_calibration_error(y_test, softmax(logits_test, 1), 15))
    assert d["reliability_after"] == [] and d["n_val"] == MIN_VALIDATION_IMAGES - 1
    json.dumps(d, allow_nan=False)
    view = _calibration_view(BackboneResult.from_json({"name": "m", "calibration": d}))
    assert view.sentence.endswith(f"Temperature scaling was not fitted: {d['not_fitted']}.")
    assert "after temperature scaling" not in view.sentence
    fig = reliability_diagram({"name": "m", "calibration": d}, tmp_path)
    assert "not fitted" in fig.caption and (tmp_path / fig.path).is_file()
    # an empty validation split is the same case, not a crash
    assert calibrate([], np.empty((0, 4)), y_test, softmax(logits_test, 1)).not_fitted.startswith("0 validation")
    y_min, logits_min = _synthetic_overconfident(MIN_VALIDATION_IMAGES, 4, 2.5, seed=4)
    fitted = calibrate(y_min, softmax(logits_min, 1), y_test, softmax(logits_test, 1))
    assert fitted.not_fitted is None and fitted.temperature is not None and "not_fitted" not in fitted.to_dict()
