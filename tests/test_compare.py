"""McNemar's exact test between backbones (engine.evaluation.compare)."""

import numpy as np
import pytest
from scipy.stats import binomtest

from engine.evaluation.compare import format_p, mcnemar_pair, pairwise_mcnemar


def _paired(n11, n10, n01, n00):
    """Correctness vectors with the given 2x2 table (a right/b right, a right/b wrong, ...)."""
    a = np.array([True] * n11 + [True] * n10 + [False] * n01 + [False] * n00)
    b = np.array([True] * n11 + [False] * n10 + [True] * n01 + [False] * n00)
    perm = np.random.default_rng(0).permutation(a.size)  # order must not matter
    return a[perm], b[perm]


def test_known_table_textbook_value():
    # Discordant pairs b = 1, c = 9: exact two-sided p = 2 * P(X <= 1 | n=10, 1/2)
    #   = 2 * (C(10,0) + C(10,1)) / 2**10 = 2 * 11 / 1024 = 0.021484375
    a, b = _paired(50, 1, 9, 5)
    r = mcnemar_pair(a, b, "A", "B")
    assert (r.n11, r.n10, r.n01, r.n00) == (50, 1, 9, 5)
    assert r.n_images == 65 and r.discordant == 10
    assert r.p_value == pytest.approx(22 / 1024, rel=1e-12)


@pytest.mark.parametrize("n10,n01", [(30, 11), (11, 30), (7, 7), (0, 5), (120, 80)])
def test_p_value_matches_scipy_binomtest(n10, n01):
    a, b = _paired(300, n10, n01, 20)
    r = mcnemar_pair(a, b)
    assert r.p_value == pytest.approx(binomtest(n10, n10 + n01, 0.5).pvalue, rel=1e-9)


def test_sentence_and_dict():
    a, b = _paired(330, 30, 11, 29)
    r = mcnemar_pair(a, b, "EfficientNetB0", "VGG16")
    p = binomtest(30, 41, 0.5).pvalue  # ~0.0043
    assert r.sentence() == (
        f"EfficientNetB0 and VGG16 differ on 41 images (EfficientNetB0 right on 30, VGG16 on 11); p = {p:.3f}."
    )
    d = r.to_dict()
    assert d["a"] == "EfficientNetB0" and d["n10"] == 30 and d["n01"] == 11 and d["discordant"] == 41
    assert d["n_images"] == 400 and d["p_value"] == pytest.approx(p) and d["sentence"] == r.sentence()


def test_full_agreement_says_so():
    a, b = _paired(90, 0, 0, 10)
    r = mcnemar_pair(a, b, "X", "Y")
    assert r.p_value == 1.0
    assert r.sentence() == "X and Y agree on every one of the 100 images (both right on 90); p = 1."


def test_format_p():
    assert format_p(2e-9) == "p < 0.001"
    assert format_p(0.0034) == "p = 0.003"
    assert format_p(0.27) == "p = 0.270"
    assert format_p(1.0) == "p = 1"
    assert format_p(None) == "p = n/a" and format_p(float("nan")) == "p = n/a"
    # the report's table cells: the same rule without the "p ="
    assert [format_p(p, prefix=False) for p in (2e-9, 0.0034, 0.27, 1.0, None)] == ["< 0.001", "0.003", "0.270", "1",
                                                                                   "n/a"]


def test_pairwise_all_pairs_in_order_with_holm():
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=200)
    correct = {"m1": truth < 0.9, "m2": truth < 0.6, "m3": truth < 0.88}
    res = pairwise_mcnemar(correct)
    assert [(r.name_a, r.name_b) for r in res] == [("m1", "m2"), ("m1", "m3"), ("m2", "m3")]
    # m1 beats m2 on every discordant image (the nested thresholds make n01 = 0).
    assert res[0].n01 == 0 and res[0].n10 == int(np.sum((truth >= 0.6) & (truth < 0.9)))
    assert res[0].sentence().endswith("(Holm-adjusted over 3 pairs: p < 0.001).")
    # Holm: adjusted p is never below the raw p and never above 1.
    for r in res:
        assert r.p_value <= r.p_value_holm <= 1.0 and r.n_pairs == 3
    assert pairwise_mcnemar({"only": truth < 0.5}) == []
    single = pairwise_mcnemar({"a": correct["m1"], "b": correct["m2"]})
    assert single[0].p_value_holm is None and "Holm" not in single[0].sentence()


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same test images"):
        mcnemar_pair(np.ones(5, bool), np.ones(6, bool), "a", "b")
    with pytest.raises(ValueError, match="boolean"):
        mcnemar_pair(np.array([0, 2]), np.array([1, 1]))
