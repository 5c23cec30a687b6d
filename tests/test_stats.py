"""Tests for nlbench.benchmark.stats: against scipy and against numbers computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from nlbench.benchmark.stats import (
    auroc,
    average_ranks,
    friedman,
    holm,
    nemenyi_cd,
    nemenyi_q_alpha,
    paired_test,
    t_interval,
    tied_with_best,
)

# ---------------------------------------------------------------- t_interval


def test_t_interval_matches_hand_and_scipy():
    mean, std, n, lo, hi = t_interval([1.0, 2.0, 3.0, 4.0])
    assert n == 4
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5.0 / 3.0))  # ddof=1
    # t_{0.975, 3} = 3.182446305284263 -> half width 3.1824463 * 1.2909944 / 2 = 2.054260
    assert lo == pytest.approx(0.445740, abs=1e-6)
    assert hi == pytest.approx(4.554260, abs=1e-6)
    exp_lo, exp_hi = st.t.interval(0.95, 3, loc=2.5, scale=std / 2.0)
    assert (lo, hi) == pytest.approx((exp_lo, exp_hi), rel=1e-12)


def test_t_interval_confidence_and_nan_dropped():
    x = [0.71, 0.74, np.nan, 0.69, 0.73, 0.70]
    mean, std, n, lo, hi = t_interval(x, confidence=0.9)
    clean = np.array([0.71, 0.74, 0.69, 0.73, 0.70])
    assert n == 5
    assert mean == pytest.approx(clean.mean())
    assert std == pytest.approx(clean.std(ddof=1))
    exp = st.t.interval(0.9, 4, loc=clean.mean(), scale=st.sem(clean))
    assert (lo, hi) == pytest.approx(exp, rel=1e-12)
    assert lo < mean < hi


def test_t_interval_small_samples():
    mean, std, n, lo, hi = t_interval([0.8])
    assert (mean, n) == (0.8, 1)
    assert math.isnan(std) and math.isnan(lo) and math.isnan(hi)
    mean, std, n, lo, hi = t_interval([np.nan, 0.8, np.nan])
    assert (mean, n) == (0.8, 1)
    assert math.isnan(std)
    mean, std, n, lo, hi = t_interval([])
    assert n == 0 and all(math.isnan(v) for v in (mean, std, lo, hi))
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.0, 3, 0.5, 0.5)


def test_t_interval_rejects_bad_arguments():
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError):
        t_interval([[1.0, 2.0], [3.0, 4.0]])


# ---------------------------------------------------------------- paired_test


def test_paired_test_matches_hand_and_scipy():
    a, b = [1.0, 2.0, 3.0, 5.0], [0.0, 2.0, 1.0, 1.0]
    stat, p, n = paired_test(a, b)
    # d = [1, 0, 2, 4]: mean 1.75, sd sqrt(8.75 / 3), t = 1.75 / (sd / 2)
    assert n == 4
    assert stat == pytest.approx(1.75 / (math.sqrt(8.75 / 3.0) / 2.0))
    assert stat == pytest.approx(2.0493901531919194)
    ref = st.ttest_rel(a, b)
    assert (stat, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert p == pytest.approx(2 * st.t.sf(stat, 3))
    stat_ba, p_ba, _ = paired_test(b, a)
    assert stat_ba == pytest.approx(-stat) and p_ba == pytest.approx(p)


def test_paired_test_drops_unshared_seeds():
    a = [1.0, 2.0, np.nan, 3.0, 5.0, 7.0]
    b = [0.0, 2.0, 4.0, 1.0, 1.0, np.nan]
    assert paired_test(a, b) == pytest.approx(paired_test([1.0, 2.0, 3.0, 5.0], [0.0, 2.0, 1.0, 1.0]))
    assert paired_test(a, b)[2] == 4
    sa = pd.Series([1.0, 2.0, 3.0, 5.0], index=[10, 11, 12, 13])
    sb = pd.Series([1.0, 0.0, 2.0, 1.0, 99.0], index=[13, 10, 11, 12, 14])  # shuffled + extra seed
    assert paired_test(sa, sb) == pytest.approx(paired_test([1.0, 2.0, 3.0, 5.0], [0.0, 2.0, 1.0, 1.0]))


def test_paired_test_degenerate_cases():
    stat, p, n = paired_test([0.5], [0.4])
    assert n == 1 and math.isnan(stat) and math.isnan(p)
    stat, p, n = paired_test([0.5, np.nan], [np.nan, 0.4])
    assert n == 0 and math.isnan(p)
    assert paired_test([0.3, 0.7, 0.9], [0.3, 0.7, 0.9]) == (0.0, 1.0, 3)
    # constant non-zero difference (up to float rounding): undefined t, scipy would say p = 0
    stat, p, n = paired_test([0.3, 0.7, 0.9], [0.2, 0.6, 0.8])
    assert n == 3 and math.isnan(stat) and math.isnan(p)
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0, 3.0], [1.0, 2.0])


# ---------------------------------------------------------------- holm


def test_holm_hand_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_holm_nan_cap_ties_and_shape():
    out = holm([0.2, np.nan, 0.01])  # m = 2: 0.01*2 = 0.02, 0.2*1 = 0.2
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.2, 0.02], rtol=1e-12)
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # 0.5*2 = 1.0, then max(1.0, 0.6)
    np.testing.assert_allclose(holm([0.7, 0.9, 0.8]), [1.0, 1.0, 1.0])  # capped
    np.testing.assert_allclose(holm([0.02, 0.02, 0.02]), [0.06, 0.06, 0.06])
    np.testing.assert_allclose(holm([[0.01, 0.04], [0.03, 0.005]]), [[0.03, 0.06], [0.06, 0.02]])
    assert holm([]).shape == (0,)
    assert np.isnan(holm([np.nan, np.nan])).all()
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


def test_holm_is_monotone_and_dominates_raw():
    p = np.array([0.001, 0.2, 0.013, 0.04, 0.012, 0.5, 0.049])
    adj = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1.0)
    assert adj[0] == pytest.approx(0.007)  # smallest of 7 -> times 7


# ---------------------------------------------------------------- average_ranks / friedman


def _score_table() -> pd.DataFrame:
    return pd.DataFrame(
        {"A": [0.9, 0.5, 0.3], "B": [0.8, 0.6, np.nan], "C": [0.7, 0.6, 0.1]},
        index=["s1", "s2", "s3"],
    )


def test_average_ranks_hand_example():
    ranks = average_ranks(_score_table())
    # s1: A 1, B 2, C 3; s2: A 3, B and C tie for 1-2 -> 1.5 each; s3 has a NaN and is dropped
    assert list(ranks.index) == ["A", "B", "C"]
    np.testing.assert_allclose(ranks.to_numpy(), [2.0, 1.75, 2.25])
    assert ranks.sum() == pytest.approx(2 * 3 * 4 / 2 / 2)  # mean of 1..k per row = k(k+1)/2


def test_average_ranks_no_complete_rows():
    df = pd.DataFrame({"A": [0.9, np.nan], "B": [np.nan, 0.3]})
    assert average_ranks(df).isna().all()


def test_friedman_hand_example_and_scipy():
    df = pd.DataFrame({"A": [0.9, 0.8, 0.7, 0.95], "B": [0.8, 0.7, 0.6, 0.9], "C": [0.1, 0.2, 0.3, 0.4]})
    stat, p, n, k = friedman(df)
    # rank sums (low = 1 for scipy's ordering does not matter): 4, 8, 12 -> 12/(4*3*4) * 224 - 48 = 8
    assert (n, k) == (4, 3)
    assert stat == pytest.approx(8.0)
    assert p == pytest.approx(math.exp(-4.0))  # chi2(2) survival function = exp(-x/2)


def test_friedman_matches_scipy_with_ties_and_nan_rows():
    df = pd.DataFrame(
        {
            "A": [0.9, 0.5, 0.3, 0.4, 0.8, np.nan],
            "B": [0.8, 0.6, 0.35, 0.4, 0.7, 0.9],
            "C": [0.7, 0.6, 0.1, 0.2, 0.9, 0.1],
            "D": [0.6, 0.4, 0.2, 0.4, 0.6, 0.2],
        }
    )
    stat, p, n, k = friedman(df)
    full = df.dropna()
    ref = st.friedmanchisquare(*(full[c].to_numpy() for c in full.columns))
    assert (n, k) == (5, 4)
    assert (stat, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)


def test_friedman_degenerate():
    two = pd.DataFrame({"A": [0.9, 0.8], "B": [0.7, 0.6]})
    stat, p, n, k = friedman(two)
    assert (n, k) == (2, 2) and math.isnan(stat) and math.isnan(p)
    one_row = pd.DataFrame({"A": [0.9, np.nan], "B": [0.7, 0.1], "C": [0.5, 0.2]})
    stat, p, n, k = friedman(one_row)
    assert (n, k) == (1, 3) and math.isnan(p)
    all_tied = pd.DataFrame({"A": [0.5, 0.7], "B": [0.5, 0.7], "C": [0.5, 0.7]})
    assert friedman(all_tied) == (0.0, 1.0, 2, 3)


# ---------------------------------------------------------------- nemenyi


@pytest.mark.parametrize(
    ("k", "alpha", "expected"),
    [
        (2, 0.05, 1.960),
        (3, 0.05, 2.343),
        (4, 0.05, 2.569),
        (5, 0.05, 2.728),
        (8, 0.05, 3.031),
        (10, 0.05, 3.164),
        (3, 0.10, 2.052),
        (10, 0.10, 2.920),
    ],
)
def test_nemenyi_q_alpha_matches_demsar_table(k, alpha, expected):
    assert nemenyi_q_alpha(k, alpha) == pytest.approx(expected, abs=1e-3)  # table is to 3 decimals


def test_nemenyi_cd():
    # Demsar 2006, section 3.2.2 example: k = 4 classifiers, N = 14 data sets -> CD = 1.25
    assert nemenyi_cd(4, 14) == pytest.approx(2.569 * math.sqrt(20 / 84), abs=1e-3)
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=5e-3)
    # k = 5, N = 5: sqrt(k(k+1)/(6N)) = 1, so CD = q_alpha
    assert nemenyi_cd(5, 5) == pytest.approx(2.728, abs=6e-4)
    assert nemenyi_cd(5, 20) == pytest.approx(nemenyi_cd(5, 5) / 2)
    with pytest.raises(ValueError):
        nemenyi_cd(1, 10)
    with pytest.raises(ValueError):
        nemenyi_cd(5, 0)


# ---------------------------------------------------------------- auroc


def _u_over_n1n2(scores, positives):
    scores, positives = np.asarray(scores, float), np.asarray(positives)
    x, y = scores[positives], scores[~positives]
    return st.mannwhitneyu(x, y, alternative="two-sided").statistic / (x.size * y.size)


def test_auroc_hand_examples_and_mannwhitney():
    s, pos = [0.1, 0.4, 0.35, 0.8], [False, False, True, True]
    assert auroc(s, pos) == pytest.approx(0.75)  # the classic sklearn example
    assert auroc(s, pos) == pytest.approx(_u_over_n1n2(s, pos))
    # ties: positives {1, 2} vs negatives {1, 0}: (0.5 + 1 + 1 + 1) / 4
    s, pos = [1.0, 1.0, 2.0, 0.0], [True, False, True, False]
    assert auroc(s, pos) == pytest.approx(0.875)
    assert auroc(s, pos) == pytest.approx(_u_over_n1n2(s, pos))
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # rounding creates many ties
    pos = rng.random(60) < 0.3
    s[pos] += 0.5
    assert auroc(s, pos) == pytest.approx(_u_over_n1n2(s, pos), rel=1e-12)


def test_auroc_extremes_and_edge_cases():
    assert auroc([0.1, 0.2, 0.8, 0.9], np.array([False, False, True, True])) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], np.array([False, False, True, True])) == 0.0
    assert auroc([0.3, 0.3, 0.3], np.array([True, False, False])) == 0.5
    assert math.isnan(auroc([0.1, 0.2], np.array([True, True])))
    assert math.isnan(auroc([0.1, 0.2], np.array([False, False])))
    assert math.isnan(auroc([], np.array([], dtype=bool)))
    # NaN scores are dropped together with their label
    assert auroc([0.1, np.nan, 0.35, 0.8, 0.4], [False, True, True, True, False]) == pytest.approx(0.75)
    with pytest.raises(TypeError):
        auroc([0.1, 0.2, 0.3], np.array([0, 2]))  # an index array, not a mask
    with pytest.raises(ValueError):
        auroc([0.1, 0.2, 0.3], np.array([True, False]))


# ---------------------------------------------------------------- tied_with_best

_A = np.array([0.80, 0.82, 0.81, 0.83, 0.84])


def test_tied_with_best_uses_holm():
    scores = {
        "A": _A,
        "B": _A - np.array([0.02, 0.0, 0.01, 0.03, 0.015]),  # raw p = 0.0399, Holm: 2 * 0.0399 = 0.0799
        "C": _A - np.array([0.05, 0.06, 0.04, 0.05, 0.07]),  # raw p = 0.00045, Holm: 0.00135
        "D": _A - np.array([0.01, 0.0, 0.02, 0.03, -0.005]),  # raw p = 0.161
    }
    assert paired_test(scores["A"], scores["B"])[1] == pytest.approx(0.03994196807171883)
    assert tied_with_best(scores) == {"A", "B", "D"}
    # without the other comparisons B is significantly worse (raw p < 0.05 with m = 1)
    assert tied_with_best({"A": scores["A"], "B": scores["B"]}) == {"A"}
    assert tied_with_best(scores, alpha=0.1) == {"A", "D"}


def test_tied_with_best_lower_is_better_and_order():
    scores = {
        "A": _A,
        "B": _A - np.array([0.02, 0.0, 0.01, 0.03, 0.015]),
        "C": _A - np.array([0.05, 0.06, 0.04, 0.05, 0.07]),
        "D": _A - np.array([0.01, 0.0, 0.02, 0.03, -0.005]),
    }
    errors = {name: 1.0 - v for name, v in reversed(scores.items())}
    assert tied_with_best(errors, higher_is_better=False) == {"A", "B", "D"}
    # lower-is-better applied to accuracies picks C as best; A, B are significantly higher than C
    assert "C" in tied_with_best(scores, higher_is_better=False)
    assert "A" not in tied_with_best(scores, higher_is_better=False)


def test_tied_with_best_degenerate_comparisons():
    nan = np.nan
    scores = {
        "A": _A,
        "same": _A.copy(),  # identical on every seed: p = 1 -> tied
        "one_seed": np.array([nan, nan, 0.81, nan, nan]),  # 1 shared seed: not tied
        "shifted": _A - 0.01,  # constant difference: p = nan -> not tied
        "empty": np.full(5, nan),  # no data: never tied
        "gappy": np.array([0.79, nan, 0.82, 0.82, nan]),  # 3 shared seeds, noisy: tied
    }
    assert tied_with_best(scores) == {"A", "same", "gappy"}
    assert tied_with_best({}) == set()
    assert tied_with_best({"only": [nan, nan]}) == set()
    assert tied_with_best({"only": [0.5]}) == {"only"}
    with pytest.raises(ValueError):
        tied_with_best({"A": [0.1, 0.2], "B": [0.1, 0.2, 0.3]})


def test_tied_with_best_series_aligned_on_seed_index():
    a = pd.Series(_A, index=[0, 1, 2, 3, 4])
    c = pd.Series((_A - np.array([0.05, 0.06, 0.04, 0.05, 0.07]))[::-1], index=[4, 3, 2, 1, 0])
    assert tied_with_best({"A": a, "C": c}) == {"A"}
