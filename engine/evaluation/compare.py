"""Paired comparison of backbones on the same test images: McNemar's exact test.

Two classifiers scored on the same images are not independent samples, so comparing their accuracy
CIs is the wrong test. McNemar's test uses only the discordant images: n10 (A right, B wrong) and n01
(A wrong, B right). Under H0 (equal error rates) n10 ~ Binomial(n10 + n01, 1/2); the exact two-sided
p-value is min(1, 2 * P(X <= min(n10, n01))) -- ``statsmodels.stats.contingency_tables.mcnemar(table,
exact=True)``, equal to ``scipy.stats.binomtest(n10, n10 + n01, 0.5).pvalue``.

With more than two backbones, ``pairwise_mcnemar`` also reports Holm-adjusted p-values
(``statsmodels.stats.multitest.multipletests``) so that many pairs do not manufacture a "significant"
difference by chance.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def format_p(p: float | None, *, prefix: bool = True) -> str:
    """A p-value to three decimals, never '0.000': 'p < 0.001', 'p = 0.003', 'p = 0.270', 'p = 1'.

    The one rule for p-values, in this module's sentences and in the report (engine.report.comparisons).
    ``prefix=False`` gives the bare form for a table column headed "p": '< 0.001', '0.003', '1'.
    None, NaN and infinities are 'n/a' ('p = n/a' with the prefix).
    """
    if p is None or not math.isfinite(p):
        relation, text = "=", "n/a"
    elif p < 0.001:
        relation, text = "<", "0.001"
    elif p >= 0.9995:
        relation, text = "=", "1"
    else:
        relation, text = "=", f"{p:.3f}"
    if prefix:
        return f"p {relation} {text}"
    return text if relation == "=" else f"{relation} {text}"


@dataclass(frozen=True)
class McNemarResult:
    """2x2 paired table of two classifiers on the same n images, and the exact McNemar p-value.

    n11: both right; n10: A right, B wrong; n01: A wrong, B right; n00: both wrong.
    """

    name_a: str
    name_b: str
    n11: int
    n10: int
    n01: int
    n00: int
    p_value: float
    p_value_holm: float | None = None  # set by pairwise_mcnemar when there is more than one pair
    n_pairs: int = 1

    @property
    def n_images(self) -> int:
        return self.n11 + self.n10 + self.n01 + self.n00

    @property
    def discordant(self) -> int:
        return self.n10 + self.n01

    def sentence(self) -> str:
        a, b = self.name_a, self.name_b
        if self.discordant == 0:
            return (
                f"{a} and {b} agree on every one of the {self.n_images} images "
                f"(both right on {self.n11}); p = 1."
            )
        s = (
            f"{a} and {b} differ on {self.discordant} image{'s' if self.discordant != 1 else ''} "
            f"({a} right on {self.n10}, {b} on {self.n01}); {format_p(self.p_value)}"
        )
        if self.p_value_holm is not None:
            s += f" (Holm-adjusted over {self.n_pairs} pairs: {format_p(self.p_value_holm)})"
        return s + "."

    def to_dict(self) -> dict:
        return {
            "a": self.name_a,
            "b": self.name_b,
            "n_images": self.n_images,
            "n11": self.n11,
            "n10": self.n10,
            "n01": self.n01,
            "n00": self.n00,
            "discordant": self.discordant,
            "method": "McNemar exact (binomial, two-sided)",
            "p_value": self.p_value,
            "p_value_holm": self.p_value_holm,
            "n_pairs": self.n_pairs,
            "sentence": self.sentence(),
        }


def _as_bool(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-image correctness, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name}: per-image correctness must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def mcnemar_pair(correct_a, correct_b, name_a: str = "A", name_b: str = "B") -> McNemarResult:
    """Exact McNemar test for two classifiers on the same images.

    Args:
        correct_a, correct_b: (n,) bool, whether each classifier got image i right; image i must be
            the same image in both (same test set, same order).
        name_a, name_b: display names used by ``sentence()``.
    """
    a = _as_bool(correct_a, name_a)
    b = _as_bool(correct_b, name_b)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has {a.size} predictions but {name_b} has {b.size}: McNemar needs the same test images"
        )
    n11 = int(np.count_nonzero(a & b))
    n10 = int(np.count_nonzero(a & ~b))
    n01 = int(np.count_nonzero(~a & b))
    n00 = int(np.count_nonzero(~a & ~b))
    if n10 + n01 == 0:
        p = 1.0  # no discordant image: no evidence either way
    else:
        # statsmodels loads late: the report imports format_p from here and renders without it
        from statsmodels.stats.contingency_tables import mcnemar

        p = float(mcnemar([[n11, n10], [n01, n00]], exact=True).pvalue)
    return McNemarResult(name_a, name_b, n11, n10, n01, n00, p)


def pairwise_mcnemar(correct: Mapping[str, object], holm: bool = True) -> list[McNemarResult]:
    """McNemar for every pair of backbones, in the mapping's order (A before B).

    Args:
        correct: {backbone name: (n,) bool per-image correctness}, all on the same n test images.
        holm: with more than one pair, also fill ``p_value_holm`` (Holm-Bonferroni over all pairs).

    Returns:
        A list of len(correct) * (len(correct) - 1) / 2 results; empty for fewer than two backbones.
    """
    names = list(correct)
    results = [
        mcnemar_pair(correct[a], correct[b], name_a=a, name_b=b) for a, b in itertools.combinations(names, 2)
    ]
    if holm and len(results) > 1:
        from statsmodels.stats.multitest import multipletests

        adjusted = multipletests([r.p_value for r in results], method="holm")[1]
        results = [
            dataclasses.replace(r, p_value_holm=float(p_adj), n_pairs=len(results))
            for r, p_adj in zip(results, adjusted)
        ]
    return results
