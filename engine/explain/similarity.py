"""How alike two saliency maps are, and seeded bootstrap intervals for the explanation checks.

SSIM is implemented here rather than taken from scikit-image: scikit-image is not a dependency of
auditrun and pulls in imageio, tifffile, networkx and lazy-loader for this one function. The
implementation follows ``skimage.metrics.structural_similarity``'s defaults (Wang et al. 2004 with a
7x7 uniform window, sample covariances, K1 = 0.01, K2 = 0.03, mean over the window-valid interior),
and agrees with it to 1e-6 (checked once against scikit-image 0.26; see docs/explanations.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels (average ranks for ties).

    A constant map has no ranking: two identical constant maps count as 1.0 (nothing changed),
    a constant map against any other map as 0.0 (no rank agreement), never NaN.
    """
    from scipy.stats import rankdata

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.shape} and {b.shape}")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b and np.array_equal(a, b) else 0.0
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, window: int = SSIM_WINDOW) -> float:
    """Mean structural similarity of two (h, w) maps (see the module docstring); 1.0 = identical."""
    from scipy.ndimage import uniform_filter

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"SSIM needs two maps of one (h, w) size; got {a.shape} and {b.shape}")
    window = min(window, *(s if s % 2 else s - 1 for s in a.shape))
    if window < 1:
        raise ValueError(f"maps of shape {a.shape} are too small for SSIM")
    mean = [uniform_filter(x, window) for x in (a, b, a * a, b * b, a * b)]
    ua, ub = mean[0], mean[1]
    norm = window ** 2 / (window ** 2 - 1) if window > 1 else 1.0
    va, vb, cov = norm * (mean[2] - ua * ua), norm * (mean[3] - ub * ub), norm * (mean[4] - ua * ub)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * cov + c2)) / ((ua ** 2 + ub ** 2 + c1) * (va + vb + c2))
    pad = (window - 1) // 2
    return float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())


def bootstrap_ci(values, statistic: Callable[[np.ndarray], float] = np.median, seed: int = 0,
                 n_boot: int = 1000, confidence: float = 0.95) -> list[float] | None:
    """Percentile-bootstrap interval [lo, hi] of ``statistic`` over ``values`` (resampled with
    replacement, ``numpy.random.default_rng(seed)``); None for no values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = np.array([statistic(values[row]) for row in idx])
    alpha = (1.0 - confidence) / 2
    return [float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))]
