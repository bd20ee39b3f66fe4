"""Calibration: top-label expected calibration error, reliability curves, temperature scaling.

Pure numpy/scipy; no TensorFlow. The saved models output softmax probabilities, so every entry point
accepts probabilities (``from_probs=True``): ``log(p)`` equals the logits up to a per-row constant, and
softmax is invariant to that constant, so temperature scaling on ``log(p)`` is exact temperature scaling
on the logits (apart from the clipping that keeps ``log(0)`` finite).

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the logits
by one scalar T > 0 fitted on the *validation* split; it never changes the argmax, so accuracy, F1 and
the confusion matrix are untouched -- only the confidences move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

# Smallest probability kept before taking logs: float32 softmax can return exact zeros.
PROB_EPS = 1e-12
# Search range for T. Beyond these, the fitted model is degenerate (T -> 0: a validation set the
# model separates perfectly; T -> inf: uniform predictions) and the bound is reported as such.
T_BOUNDS = (1e-2, 1e2)
#: Fewer validation images than this and T is not fitted. One scalar fitted by maximum likelihood
#: on a handful of images follows whichever one or two the model got wrong (4 phantoms gave
#: T = 0.2, inside the bounds and unflagged); the test ECE before scaling is still reported.
MIN_VALIDATION_IMAGES = 10


def _check_labels_probs(y_true, probs, what: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{what} must have shape (n, k) with k >= 2, got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true must have shape ({p.shape[0]},) to match {what}, got {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("no samples: cannot compute calibration on an empty set")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true holds class indices outside 0..{p.shape[1] - 1}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return y.astype(np.int64), p


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b holds confidences in (b/n_bins, (b+1)/n_bins]; confidence 0 goes to bin 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") returns i with edges[i-1] < c <= edges[i], i.e. right-closed bins.
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of a top-label reliability diagram (equal-width bins on [0, 1]).

    Arrays have shape (n_bins,). ``confidence`` and ``accuracy`` are NaN where ``count`` is 0.
    """

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    confidence: np.ndarray  # mean top-label probability of the samples in the bin
    accuracy: np.ndarray  # fraction of those samples whose top label is correct
    count: np.ndarray  # int, samples in the bin

    @property
    def n_samples(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float:
        """sum_b (n_b / n) * |accuracy_b - confidence_b| over non-empty bins."""
        filled = self.count > 0
        weights = self.count[filled] / self.count.sum()
        return float(np.sum(weights * np.abs(self.accuracy[filled] - self.confidence[filled])))

    def to_list(self) -> list[dict]:
        """JSON-ready: one dict per bin, empty bins included with confidence/accuracy None."""
        rows = []
        for lo, hi, conf, acc, cnt in zip(
            self.bin_lower, self.bin_upper, self.confidence, self.accuracy, self.count
        ):
            rows.append(
                {
                    "bin_lower": round(float(lo), 6),
                    "bin_upper": round(float(hi), 6),
                    "confidence": None if cnt == 0 else float(conf),
                    "accuracy": None if cnt == 0 else float(acc),
                    "count": int(cnt),
                }
            )
        return rows


def reliability_curve(y_true, probs, n_bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability curve.

    Args:
        y_true: (n,) int class indices in 0..k-1.
        probs: (n, k) predicted probabilities (rows should sum to 1).
        n_bins: number of equal-width confidence bins on [0, 1]; bins are right-closed (lo, hi].

    For each bin b: confidence_b = mean(max_j probs[i, j]), accuracy_b = mean(argmax_j probs[i, j] ==
    y_true[i]) over the samples i whose top-label confidence falls in b. (Equivalent in spirit to
    ``sklearn.calibration.calibration_curve`` applied to the top label, which sklearn lacks for
    multi-class; the binning here matches Guo et al. 2017.)
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    y, p = _check_labels_probs(y_true, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = _bin_index(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    sum_conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    sum_acc = np.bincount(bins, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / count, np.nan)
        mean_acc = np.where(count > 0, sum_acc / count, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return ReliabilityCurve(edges[:-1], edges[1:], mean_conf, mean_acc, count)


def expected_calibration_error(y_true, probs, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017), equal-width bins on confidence.

    Args:
        y_true: (n,) int class indices in 0..k-1.
        probs: (n, k) predicted probabilities.
        n_bins: number of equal-width bins on [0, 1] (right-closed).

    Returns:
        ECE = sum_b (|B_b| / n) * |acc(B_b) - conf(B_b)|, where B_b are the samples whose top-label
        confidence max_j p_ij lies in bin b, acc is the fraction with argmax == y_true and conf the mean
        top-label confidence. 0 is perfectly calibrated; the value is in [0, 1].
        No sklearn equivalent (sklearn.calibration.calibration_curve is binary only); matches
        torchmetrics ``MulticlassCalibrationError(norm="l1")`` up to bin-edge conventions.
    """
    return reliability_curve(y_true, probs, n_bins).ece()


def _as_logits(logits_or_probs, from_probs: bool) -> np.ndarray:
    z = np.asarray(logits_or_probs, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected shape (n, k), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits/probabilities contain NaN or infinite values")
    if from_probs:
        if z.min() < -1e-6 or z.max() > 1 + 1e-6:
            raise ValueError(
                "from_probs=True but values lie outside [0, 1]; pass logits with from_probs=False"
            )
        z = np.log(np.clip(z, PROB_EPS, 1.0))
    return z


def negative_log_likelihood(y_true, probs) -> float:
    """Mean -log p[i, y_i] over n samples; probs (n, k), probabilities clipped at PROB_EPS.

    Equivalent to ``sklearn.metrics.log_loss(y_true, probs, labels=range(k))`` (which clips at the
    float eps instead).
    """
    y, p = _check_labels_probs(y_true, probs)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], PROB_EPS, 1.0))))


def _nll_at(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    logp = log_softmax(logits / temperature, axis=1)
    return float(-np.mean(logp[np.arange(len(y)), y]))


def fit_temperature(logits_or_log_probs, y_true, *, from_probs: bool = False) -> float:
    """Fit the softmax temperature T that minimises validation NLL.

    Args:
        logits_or_log_probs: (n, k) logits (or log-probabilities, which differ from logits by a
            per-row constant). With ``from_probs=True``: (n, k) probabilities, clipped at PROB_EPS
            and logged.
        y_true: (n,) int class indices of the VALIDATION split. Fitting on test leaks test labels.

    Returns:
        T in T_BOUNDS minimising mean_i -log softmax(z_i / T)[y_i]. T > 1 softens an overconfident
        model, T < 1 sharpens an underconfident one. Optimised over log T with bounded Brent
        (``scipy.optimize.minimize_scalar``); NLL is convex in 1/T, hence unimodal in log T.
        A result at a bound means the data do not pin T down (e.g. a perfectly separated
        validation set drives T -> 0).
    """
    z = _as_logits(logits_or_log_probs, from_probs)
    y, _ = _check_labels_probs(y_true, z, what="logits")
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(
        lambda log_t: _nll_at(z, y, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(res.x))


def apply_temperature(logits, temperature: float, *, from_probs: bool = False) -> np.ndarray:
    """softmax(logits / T) row-wise; (n, k) -> (n, k) probabilities.

    With ``from_probs=True`` the input is (n, k) probabilities and the logits are log(clip(p)).
    T = 1 returns the (renormalised) input probabilities.
    """
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    z = _as_logits(logits, from_probs)
    return softmax(z / t, axis=1)


@dataclass
class CalibrationResult:
    """Test-split calibration before and after temperature scaling fitted on validation."""

    n_bins: int
    temperature: float | None  # None: not fitted (see not_fitted)
    temperature_at_bound: bool
    ece_before: float
    ece_after: float | None
    nll_before: float
    nll_after: float | None
    n_val: int
    n_test: int
    reliability_before: list[dict] = field(default_factory=list)
    reliability_after: list[dict] = field(default_factory=list)
    not_fitted: str | None = None  # why temperature scaling was skipped

    def to_dict(self) -> dict:
        extra = {"not_fitted": self.not_fitted} if self.not_fitted else {}
        return {
            "n_bins": self.n_bins,
            "temperature": self.temperature,
            "temperature_at_bound": self.temperature_at_bound,
            "fitted_on": "validation",
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "reliability_before": self.reliability_before,
            "reliability_after": self.reliability_after,
        } | extra


def calibrate(val_y, val_probs, test_y, test_probs, n_bins: int = 15) -> CalibrationResult:
    """Fit T on validation probabilities, report test ECE / NLL / reliability before and after.

    Args:
        val_y: (n_val,) int labels of the validation split; val_probs: (n_val, k) probabilities.
        test_y: (n_test,) int labels of the test split; test_probs: (n_test, k) probabilities.
        n_bins: ECE / reliability bins (the issue asks for 15).

    With fewer than MIN_VALIDATION_IMAGES validation images T is not fitted: the result has the
    test figures before scaling, None after, and ``not_fitted`` saying why.
    """
    test_y, test_p = _check_labels_probs(test_y, test_probs, what="test_probs")
    if len(val_y):
        val_y, val_p = _check_labels_probs(val_y, val_probs, what="val_probs")
        if val_p.shape[1] != test_p.shape[1]:
            raise ValueError(f"val_probs has {val_p.shape[1]} classes but test_probs has {test_p.shape[1]}")
    if len(val_y) < MIN_VALIDATION_IMAGES:
        before = reliability_curve(test_y, test_p, n_bins)
        return CalibrationResult(
            n_bins=int(n_bins), temperature=None, temperature_at_bound=False, ece_before=before.ece(),
            ece_after=None, nll_before=negative_log_likelihood(test_y, test_p), nll_after=None,
            n_val=int(len(val_y)), n_test=int(len(test_y)), reliability_before=before.to_list(),
            not_fitted=(f"{len(val_y)} validation images, fewer than the {MIN_VALIDATION_IMAGES} a temperature "
                        "fit needs"))
    t = fit_temperature(val_p, val_y, from_probs=True)
    at_bound = bool(
        math.isclose(t, T_BOUNDS[0], rel_tol=1e-3) or math.isclose(t, T_BOUNDS[1], rel_tol=1e-3)
    )
    # "before" is the model's own output, not a clipped/renormalised copy.
    scaled = apply_temperature(test_p, t, from_probs=True)
    before = reliability_curve(test_y, test_p, n_bins)
    after = reliability_curve(test_y, scaled, n_bins)
    return CalibrationResult(
        n_bins=int(n_bins),
        temperature=t,
        temperature_at_bound=at_bound,
        ece_before=before.ece(),
        ece_after=after.ece(),
        nll_before=negative_log_likelihood(test_y, test_p),
        nll_after=negative_log_likelihood(test_y, scaled),
        n_val=int(len(val_y)),
        n_test=int(len(test_y)),
        reliability_before=before.to_list(),
        reliability_after=after.to_list(),
    )
